/**
 * io/download.ts against a local HTTP server started here, serving test/fixtures/dino-tiny/model.onnx
 * (no network). Covers: a plain download with progress, a connection dropped mid-way then resumed
 * with Range (within one call, and across two calls), a server that ignores Range, a 404, a sha256
 * mismatch, a stalled server (idle timeout) and a 416 for an already complete `.part`.
 */
import { createHash } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { download, DownloadError, type DownloadProgress } from '../../src-main/engine/io/download.ts';
import { FIXTURES } from '../helpers/fixtures.ts';

const BODY = readFileSync(join(FIXTURES, 'dino-tiny/model.onnx'));
const SHA = createHash('sha256').update(BODY).digest('hex');
const scratch = mkdtempSync(join(tmpdir(), 'singlora-download-'));

/** Per-path behaviour; every request is logged with its Range header. */
type Mode = 'ok' | 'drop-once' | 'drop-always' | 'ignore-range' | 'stall' | 'full-416';
const log: { path: string; range: string | undefined; status: number }[] = [];
let dropped = new Set<string>();
let server: Server;
let base: string;

function serve(req: IncomingMessage, res: ServerResponse): void {
  const path = req.url ?? '/';
  const mode = path.split('/')[1] as Mode | 'missing';
  const range = req.headers.range;
  const send = (status: number, headers: Record<string, string | number>, body?: Buffer, dropAfter?: number): void => {
    log.push({ path, range, status });
    res.writeHead(status, headers);
    if (!body) return void res.end();
    if (dropAfter === undefined) return void res.end(body);
    res.write(body.subarray(0, dropAfter), () => setTimeout(() => res.socket?.destroy(), 20));
  };
  if (mode === 'missing') {
    send(404, { 'content-type': 'text/plain' }, Buffer.from('not here'));
    return;
  }
  if (mode === 'stall') {
    log.push({ path, range, status: 200 });
    res.writeHead(200, { 'content-length': BODY.length });
    res.write(BODY.subarray(0, 1000)); // then nothing: the client's idle timer must fire
    return;
  }
  const m = /^bytes=(\d+)-$/.exec(range ?? '');
  if (m && mode !== 'ignore-range') {
    const from = Number(m[1]);
    if (from >= BODY.length) {
      send(416, { 'content-range': `bytes */${BODY.length}` });
      return;
    }
    const rest = BODY.subarray(from);
    send(
      206,
      {
        'content-length': rest.length,
        'content-range': `bytes ${from}-${BODY.length - 1}/${BODY.length}`,
        'accept-ranges': 'bytes',
      },
      rest,
    );
    return;
  }
  // Full body; some modes cut the connection after ~40% of it.
  const cut = Math.floor(BODY.length * 0.4);
  const drop = mode === 'drop-always' || (mode === 'drop-once' && !dropped.has(path));
  if (drop) dropped.add(path);
  send(
    200,
    { 'content-length': BODY.length, ...(mode === 'ignore-range' ? {} : { 'accept-ranges': 'bytes' }) },
    BODY,
    drop ? cut : undefined,
  );
}

beforeAll(async () => {
  server = createServer(serve);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
  rmSync(scratch, { recursive: true, force: true });
});
beforeEach(() => {
  log.length = 0;
  dropped = new Set();
});

const sha = (file: string) => createHash('sha256').update(readFileSync(file)).digest('hex');

describe('download', () => {
  it('downloads the whole file, reports progress, verifies the sha256 and leaves no .part', async () => {
    const dest = join(scratch, 'plain/model.onnx');
    const events: DownloadProgress[] = [];
    const r = await download(`${base}/ok/model.onnx`, dest, { sha256: SHA, onProgress: (p) => events.push(p) });
    expect(r).toMatchObject({
      path: dest,
      bytes: BODY.length,
      sha256: SHA,
      verified: true,
      attempts: 1,
      resumes: 0,
      restarts: 0,
    });
    expect(sha(dest)).toBe(SHA);
    expect(existsSync(`${dest}.part`)).toBe(false);
    expect(events.length).toBeGreaterThan(0);
    const last = events[events.length - 1];
    expect(last.bytes).toBe(BODY.length);
    expect(last.total).toBe(BODY.length);
    for (let i = 1; i < events.length; i++) expect(events[i].bytes).toBeGreaterThanOrEqual(events[i - 1].bytes);
    expect(events.every((e) => e.bytesPerSecond >= 0)).toBe(true);
  });

  it('a link planted at the .part name is not written through (issue 27 item 1)', async () => {
    const dest = join(scratch, 'planted/model.onnx');
    mkdirSync(join(scratch, 'planted'));
    const victim = join(scratch, 'victim.bin');
    writeFileSync(victim, 'precious');
    symlinkSync(victim, `${dest}.part`);
    await expect(download(`${base}/ok/model.onnx`, dest, { retries: 0 })).rejects.toThrow(/ELOOP|symbolic link/);
    expect(readFileSync(victim, 'utf8')).toBe('precious');
    expect(existsSync(dest)).toBe(false);
  });

  it('a connection dropped mid-way is resumed with Range in the same call, ending with the right sha256', async () => {
    const dest = join(scratch, 'resume/model.onnx');
    const r = await download(`${base}/drop-once/model.onnx`, dest, { sha256: SHA, retryDelayMs: 10 });
    expect(r).toMatchObject({ bytes: BODY.length, sha256: SHA, attempts: 2, resumes: 1, restarts: 0 });
    expect(sha(dest)).toBe(SHA);
    const cut = Math.floor(BODY.length * 0.4);
    expect(log.map((l) => [l.range, l.status])).toEqual([
      [undefined, 200],
      [`bytes=${cut}-`, 206],
    ]);
  });

  it('with no retries, the first call fails keeping the .part, and a second call resumes it', async () => {
    const dest = join(scratch, 'resume2/model.onnx');
    const url = `${base}/drop-once/model.onnx`;
    const err = await download(url, dest, { retries: 0 }).catch((e: Error) => e);
    expect(err).toBeInstanceOf(DownloadError);
    expect((err as Error).message).toMatch(
      new RegExp(
        `^download ${url}: .*gave up after 1 attempt\\(s\\), \\d+ bytes kept in .*model\\.onnx\\.part: run again to resume`,
      ),
    );
    const kept = statSync(`${dest}.part`).size;
    expect(kept).toBeGreaterThan(0);
    expect(kept).toBeLessThan(BODY.length);
    const r = await download(url, dest, { sha256: SHA, retries: 0 });
    expect(r).toMatchObject({ bytes: BODY.length, sha256: SHA, resumes: 1 });
    expect(log[log.length - 1]).toMatchObject({ range: `bytes=${kept}-`, status: 206 });
    expect(sha(dest)).toBe(SHA);
  });

  it('a server that ignores Range (200 instead of 206): the partial file is discarded and the download restarts', async () => {
    const dest = join(scratch, 'ignore/model.onnx');
    // A stale .part whose bytes are wrong: appending the full body to it would give a bad hash.
    mkdirSync(join(scratch, 'ignore'), { recursive: true });
    writeFileSync(`${dest}.part`, Buffer.alloc(5000, 0xab));
    const r = await download(`${base}/ignore-range/model.onnx`, dest, { sha256: SHA });
    expect(log[0]).toMatchObject({ range: 'bytes=5000-', status: 200 });
    expect(r).toMatchObject({ bytes: BODY.length, sha256: SHA, restarts: 1, resumes: 0 });
    expect(statSync(dest).size).toBe(BODY.length);
    expect(sha(dest)).toBe(SHA);
  });

  it('a 404 fails at once with the status and the URL, and writes nothing', async () => {
    const dest = join(scratch, 'missing/model.onnx');
    const url = `${base}/missing/model.onnx`;
    const err = await download(url, dest).catch((e: Error) => e);
    expect(err).toBeInstanceOf(DownloadError);
    expect((err as DownloadError).status).toBe(404);
    expect((err as Error).message).toBe(`download ${url}: HTTP 404 Not Found`);
    expect(log).toHaveLength(1); // not retried
    expect(existsSync(dest)).toBe(false);
  });

  it('a sha256 mismatch is an error that says both hashes and deletes the .part', async () => {
    const dest = join(scratch, 'badsha/model.onnx');
    const wrong = '0'.repeat(64);
    await expect(download(`${base}/ok/model.onnx`, dest, { sha256: wrong })).rejects.toThrow(
      `sha256 mismatch: expected ${wrong}, got ${SHA}`,
    );
    expect(existsSync(dest)).toBe(false);
    expect(existsSync(`${dest}.part`)).toBe(false);
  });

  it('a stalled server hits the idle timeout; the error says so', async () => {
    const dest = join(scratch, 'stall/model.onnx');
    const t0 = performance.now();
    const err = await download(`${base}/stall/model.onnx`, dest, {
      idleTimeoutMs: 300,
      retries: 1,
      retryDelayMs: 10,
    }).catch((e: Error) => e);
    expect((err as Error).message).toMatch(/no data for 0\.3 s \(timed out\); gave up after 2 attempt\(s\)/);
    expect(performance.now() - t0).toBeLessThan(5000);
    expect(log.map((l) => l.range)).toEqual([undefined, 'bytes=1000-']);
  });

  it('a connection that always drops gives up after the retries, naming the byte counts', async () => {
    const dest = join(scratch, 'always/model.onnx');
    const err = await download(`${base}/drop-always/model.onnx`, dest, { retries: 0 }).catch((e: Error) => e);
    expect((err as Error).message).toMatch(/(connection lost|connection closed) after \d+ of \d+ bytes/);
  });

  it('a .part that is already complete (416 from the server) is verified and renamed', async () => {
    const dest = join(scratch, 'complete/model.onnx');
    mkdirSync(join(scratch, 'complete'), { recursive: true });
    writeFileSync(`${dest}.part`, BODY);
    const r = await download(`${base}/ok/model.onnx`, dest, { sha256: SHA });
    expect(log).toEqual([{ path: '/ok/model.onnx', range: `bytes=${BODY.length}-`, status: 416 }]);
    expect(r).toMatchObject({ bytes: BODY.length, sha256: SHA, verified: true });
    expect(sha(dest)).toBe(SHA);
  });
});
