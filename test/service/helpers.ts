/**
 * Service test helpers: temporary data folders, synthetic subject photos (coloured shapes, PNG,
 * made with the engine's image module), and an event recorder that checks every event against
 * the contract.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, expect } from 'vitest';
import {
  events,
  type EventName,
  type Job,
  type Method,
  type Params,
  type Result,
} from '../../src-main/api/contract.ts';
import { encodeImage } from '../../src-main/engine/image/sharp.ts';
import { Service, type ServiceOptions } from '../../src-main/service/service.ts';
import { fakeEngine, type FakeHandlers } from './fakeEngine.ts';

export const TINY_MODEL = resolve(import.meta.dirname, '../fixtures/tiny-a/model');
export const DINO_TINY = resolve(import.meta.dirname, '../fixtures/dino-tiny/model.onnx');

export async function tempDir(prefix = 'singlora-service-'): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/**
 * Opens services on the fake engine (fakeEngine.ts) with the tiny model as the default base, each
 * in its own folder under one temporary root (`prefix`) made before the file's tests; after them
 * the services are closed and the root removed. `defaults` go to every service, `opts` to one;
 * `.root()` is the root.
 */
export function fakeServices(prefix: string, defaults: Partial<ServiceOptions> = {}) {
  let root: string;
  let cleanup: () => Promise<void>;
  const services: Service[] = [];
  let n = 0;
  beforeAll(async () => {
    ({ dir: root, cleanup } = await tempDir(prefix));
  });
  afterAll(async () => {
    for (const s of services) await s.close();
    await cleanup?.();
  });
  const open = async (handlers: FakeHandlers = {}, opts: Partial<ServiceOptions> = {}) => {
    const fake = fakeEngine(handlers);
    const dir = join(root, `s${n++}`);
    const service = await Service.open({
      dataDir: join(dir, 'data'),
      modelsDir: join(dir, 'models'),
      defaultBaseModel: TINY_MODEL,
      log: () => {},
      spawnEngine: fake.spawn,
      ...defaults,
      ...opts,
    });
    services.push(service);
    const call = <M extends Method>(m: M, p: Params<M>) => service.call(m, p) as Promise<Result<M>>;
    return { service, call, dir, requests: fake.requests };
  };
  /** The temporary root, once the file's tests have started. */
  return Object.assign(open, { root: () => root });
}

/** A `size`×`size` PNG: a disc of one colour on a background of another; `k` varies both. */
export async function shapePng(k: number, size = 96): Promise<Buffer> {
  const data = new Uint8Array(size * size * 3);
  const r = size * (0.2 + 0.05 * (k % 4));
  const cx = size / 2 + (k % 3) * 4;
  const cy = size / 2 - (k % 2) * 5;
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const i = (y * size + x) * 3;
      const inside = (x - cx) ** 2 + (y - cy) ** 2 < r * r;
      data[i] = inside ? 200 - 20 * k : 30 + 10 * k;
      data[i + 1] = inside ? 60 + 15 * k : 110;
      data[i + 2] = inside ? 90 : 170 - 10 * k;
    }
  }
  return encodeImage({ data, width: size, height: size }, 'png');
}

export interface Recorded {
  event: EventName;
  data: unknown;
}

/**
 * Records service events, checking each against the contract's schema for its name; the
 * mismatches collect in `invalid` (the service swallows listener errors, so tests assert on it).
 */
export function recordEvents(service: Service): {
  all: Recorded[];
  invalid: string[];
  of: <T>(name: EventName) => T[];
  waitFor: (pred: (e: Recorded) => boolean, timeoutMs?: number, what?: string) => Promise<Recorded>;
  stop: () => void;
} {
  const all: Recorded[] = [];
  const invalid: string[] = [];
  const waiters: Array<{ pred: (e: Recorded) => boolean; resolve: (e: Recorded) => void }> = [];
  const stop = service.on((event, data) => {
    const r = events[event].safeParse(data);
    if (!r.success) invalid.push(`${event}: ${JSON.stringify(r.error.issues)}`);
    const e = { event, data };
    all.push(e);
    for (const w of [...waiters]) {
      if (w.pred(e)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(e);
      }
    }
  });
  return {
    all,
    invalid,
    of: <T>(name: EventName) => all.filter((e) => e.event === name).map((e) => e.data as T),
    waitFor: (pred, timeoutMs = 60_000, what = 'an event') => {
      const seen = all.find(pred);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
        waiters.push({ pred, resolve: (e) => (clearTimeout(t), resolve(e)) });
      });
    },
    stop,
  };
}

/** Waits for a job to finish (via the runner) and returns its final state. */
export function finished(service: Service, jobId: string): Promise<Job> {
  return service.jobs.wait(jobId);
}

/** Calls a method expecting an ApiError; returns it. */
export async function apiError(p: Promise<unknown>): Promise<{ code: string; message: string; details?: unknown }> {
  try {
    await p;
  } catch (err) {
    const e = err as { name?: string; code: string; message: string; details?: unknown };
    expect(e.name, `expected an ApiError, got ${String(err)}`).toBe('ApiError');
    return e;
  }
  throw new Error('expected the call to fail');
}
