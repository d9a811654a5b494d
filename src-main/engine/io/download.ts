/**
 * Resumable HTTP(S) download to a file, with Node's built-in fetch.
 *
 * 1. Bytes go to `<dest>.part`. If a `.part` exists, ask for the rest with `Range: bytes=<have>-`.
 * 2. The server answers 206 with a matching `Content-Range`: append. It answers 200 (it ignored
 *    Range) or a 206 for another offset: truncate the `.part` and take the whole body. 416 with the
 *    `.part` already at the full size: nothing left to fetch.
 * 3. A dropped connection or a stall longer than `idleTimeoutMs` keeps the `.part` and retries from
 *    where it stopped, up to `retries` times; 5xx answers are retried too, other HTTP errors are not.
 * 4. At the end: the length must match, the sha256 must match when one is known (a mismatch deletes
 *    the `.part`), then fsync and rename `.part` over `dest` (atomic on one file system).
 *
 * Every error is a DownloadError that names the URL, and the HTTP status when there was one.
 */
import { createHash, type Hash } from 'node:crypto';
import { constants, createReadStream } from 'node:fs';
import { open, rename, stat, truncate, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';
import { ensureDir } from './atomic.ts';

export interface DownloadProgress {
  /** Bytes in the file so far (including a resumed `.part`). */
  readonly bytes: number;
  /** Full size when the server said, else null. */
  readonly total: number | null;
  /** Average over this connection's transfer. */
  readonly bytesPerSecond: number;
  /** Seconds left at that speed, or null when the total or the speed is unknown. */
  readonly etaSeconds: number | null;
  /** Offset this connection started from (> 0 when resumed). */
  readonly resumedFrom: number;
}

export interface DownloadOptions {
  /** Expected lowercase hex sha256; null/undefined = unknown (not checked). */
  readonly sha256?: string | null;
  /** Expected size in bytes, when known; checked against the server's total. */
  readonly size?: number | null;
  readonly onProgress?: (p: DownloadProgress) => void;
  /** Milliseconds without a byte (connecting or transferring) before giving up on a connection. Default 30 s. */
  readonly idleTimeoutMs?: number;
  /** Extra attempts after a dropped connection, stall or 5xx. Default 3. */
  readonly retries?: number;
  /** Pause before a retry, ms (doubles each time). Default 500. */
  readonly retryDelayMs?: number;
  readonly signal?: AbortSignal;
  readonly headers?: Readonly<Record<string, string>>;
}

export interface DownloadResult {
  readonly path: string;
  readonly bytes: number;
  readonly sha256: string;
  /** Whether the sha256 was checked against a known value. */
  readonly verified: boolean;
  /** Connections made, and how many of them continued a partial file. */
  readonly attempts: number;
  readonly resumes: number;
  /** Times the partial file was discarded because the server ignored Range. */
  readonly restarts: number;
}

export class DownloadError extends Error {
  constructor(
    readonly url: string,
    /** What went wrong, without the URL prefix. */
    readonly reason: string,
    readonly status?: number,
    /** Worth retrying (connection lost, stall, 5xx). */
    readonly transient = false,
  ) {
    super(`download ${url}: ${reason}`);
    this.name = 'DownloadError';
  }
}

const NOFOLLOW = constants.O_NOFOLLOW ?? 0;
const PART_NEW = constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | NOFOLLOW;
const PART_APPEND = constants.O_WRONLY | constants.O_CREAT | constants.O_APPEND | NOFOLLOW;

export async function download(url: string, dest: string, options: DownloadOptions = {}): Promise<DownloadResult> {
  const part = `${dest}.part`;
  const retries = options.retries ?? 3;
  const expectedSha = options.sha256?.toLowerCase() ?? null;
  await ensureDir(dirname(dest));
  let attempts = 0;
  let resumes = 0;
  let restarts = 0;
  for (;;) {
    attempts++;
    try {
      const r = await transfer(url, part, options);
      if (r.resumed) resumes++;
      if (r.restarted) restarts++;
      if (options.size != null && r.bytes !== options.size) {
        throw new DownloadError(
          url,
          `got ${r.bytes} bytes, expected ${options.size}; the file on the server differs from the one this app knows`,
        );
      }
      const sha256 = r.hash ?? (await hashFile(part));
      if (expectedSha && sha256 !== expectedSha) {
        await unlink(part).catch(() => {});
        throw new DownloadError(
          url,
          `sha256 mismatch: expected ${expectedSha}, got ${sha256} (${r.bytes} bytes); the partial file was deleted, run again to retry`,
        );
      }
      await rename(part, dest);
      return { path: dest, bytes: r.bytes, sha256, verified: expectedSha !== null, attempts, resumes, restarts };
    } catch (err) {
      const e = err instanceof DownloadError ? err : new DownloadError(url, (err as Error).message ?? String(err));
      if (!e.transient || attempts > retries || options.signal?.aborted) {
        if (!e.transient) throw e;
        const have = await sizeOf(part);
        if (have === 0) await unlink(part).catch(() => {});
        const kept = have > 0 ? `${have} bytes kept in ${part}: run again to resume` : 'nothing was downloaded';
        throw new DownloadError(url, `${e.reason}; gave up after ${attempts} attempt(s), ${kept}`, e.status, true);
      }
      await sleep((options.retryDelayMs ?? 500) * 2 ** (attempts - 1), options.signal);
    }
  }
}

interface TransferResult {
  bytes: number;
  /** sha256 of the whole file when it could be computed while streaming, else null. */
  hash: string | null;
  resumed: boolean;
  restarted: boolean;
}

/** One connection: fetch from the `.part`'s current size to the end (or fail, keeping the `.part`). */
async function transfer(url: string, part: string, options: DownloadOptions): Promise<TransferResult> {
  const idleMs = options.idleTimeoutMs ?? 30_000;
  const have = await sizeOf(part);
  const controller = new AbortController();
  let idleTimer: NodeJS.Timeout | undefined;
  const stall = () => {
    clearTimeout(idleTimer);
    idleTimer = setTimeout(
      () => controller.abort(new DownloadError(url, `no data for ${idleMs / 1000} s (timed out)`, undefined, true)),
      idleMs,
    );
  };
  const signal = options.signal ? AbortSignal.any([controller.signal, options.signal]) : controller.signal;
  const abortReason = (err: unknown) => (signal.aborted ? (signal.reason ?? err) : err);
  stall();
  try {
    let res: Response;
    try {
      res = await fetch(url, {
        headers: { ...options.headers, ...(have > 0 ? { Range: `bytes=${have}-` } : {}) },
        signal,
        redirect: 'follow',
      });
    } catch (err) {
      throw asError(url, abortReason(err), 'cannot connect');
    }

    const checked = await checkResponse(url, part, res, have, options);
    if ('complete' in checked) return checked.complete;
    return await streamToPart(url, part, res, { ...checked, have }, options, { stall, abortReason });
  } finally {
    clearTimeout(idleTimer);
  }
}

/**
 * What the response says about the `.part` (`have` bytes): where its body starts and the file's
 * size, or that the `.part` is already complete (416 at exactly the full size). Refuses (and
 * discards what cannot be resumed) a failed status, a 206 for another range, a size not the expected one.
 */
async function checkResponse(
  url: string,
  part: string,
  res: Response,
  have: number,
  options: DownloadOptions,
): Promise<{ total: number | null; resumed: boolean; restarted: boolean } | { complete: TransferResult }> {
  // 416: our `.part` is at (or past) the end. Complete only if it has exactly the full size.
  if (res.status === 416 && have > 0) {
    await res.body?.cancel();
    const total = parseTotal(res.headers.get('content-range'));
    if (total === have) return { complete: { bytes: have, hash: null, resumed: true, restarted: false } };
    await unlink(part);
    throw new DownloadError(
      url,
      `server refused the range from ${have} (HTTP 416, size ${total ?? 'unknown'}); discarded the partial file`,
      416,
      true,
    );
  }
  if (!res.ok) {
    await res.body?.cancel();
    throw new DownloadError(url, `HTTP ${res.status} ${res.statusText}`.trim(), res.status, res.status >= 500);
  }

  let offset = 0;
  let total: number | null = null;
  const length = Number(res.headers.get('content-length') ?? NaN);
  if (res.status === 206) {
    const range = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(res.headers.get('content-range') ?? '');
    offset = range ? Number(range[1]) : -1;
    total = range && range[3] !== '*' ? Number(range[3]) : null;
  } else {
    total = Number.isFinite(length) ? length : null;
  }
  const resumed = res.status === 206 && offset === have && have > 0;
  const restarted = have > 0 && !resumed;
  if (res.status === 206 && offset !== have) {
    // A 206 for another range than asked: do not splice it; start over with a plain request.
    await res.body?.cancel();
    await truncate(part, 0);
    throw new DownloadError(
      url,
      `server sent range from ${offset} when asked for ${have}; restarting from 0`,
      206,
      true,
    );
  }
  if (options.size != null && total !== null && total !== options.size) {
    await res.body?.cancel();
    throw new DownloadError(url, `server reports ${total} bytes, expected ${options.size}`);
  }

  return { total, resumed, restarted };
}

/** Streams the body into the `.part` (appending when resumed), hashing and reporting progress as it goes. */
async function streamToPart(
  url: string,
  part: string,
  res: Response,
  { have, total, resumed, restarted }: { have: number; total: number | null; resumed: boolean; restarted: boolean },
  options: DownloadOptions,
  { stall, abortReason }: { stall: () => void; abortReason: (err: unknown) => unknown },
): Promise<TransferResult> {
  // Hash the bytes already on disk first, so the final hash covers the whole file.
  const hash = createHash('sha256');
  if (resumed) await hashInto(hash, part);
  // Never through a link planted at the .part name (io/atomic.ts does the same for every other write).
  const fh = await open(part, resumed ? PART_APPEND : PART_NEW, 0o666);
  let bytes = resumed ? have : 0;
  const start = bytes;
  const t0 = performance.now();
  const report = () => {
    const secs = (performance.now() - t0) / 1000;
    const speed = secs > 0 ? (bytes - start) / secs : 0;
    options.onProgress?.({
      bytes,
      total,
      bytesPerSecond: speed,
      etaSeconds: total !== null && speed > 0 ? (total - bytes) / speed : null,
      resumedFrom: resumed ? have : 0,
    });
  };
  try {
    if (!res.body) throw new DownloadError(url, 'response has no body', res.status);
    const reader = res.body.getReader();
    let lastReport = 0;
    for (;;) {
      let chunk: ReadableStreamReadResult<Uint8Array>;
      try {
        chunk = await reader.read();
      } catch (err) {
        throw asError(
          url,
          abortReason(err),
          `connection lost after ${bytes}${total !== null ? ` of ${total}` : ''} bytes`,
        );
      }
      if (chunk.done) break;
      stall();
      await fh.write(chunk.value);
      hash.update(chunk.value);
      bytes += chunk.value.length;
      const now = performance.now();
      if (now - lastReport > 100) {
        lastReport = now;
        report();
      }
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
  report();
  if (total !== null && bytes !== total) {
    throw new DownloadError(url, `connection closed after ${bytes} of ${total} bytes`, res.status, true);
  }
  return { bytes, hash: hash.digest('hex'), resumed, restarted };
}

function asError(url: string, err: unknown, what: string): DownloadError {
  if (err instanceof DownloadError) return err;
  const e = err as Error & { cause?: Error & { code?: string } };
  if (e?.name === 'AbortError' || e?.name === 'TimeoutError')
    return new DownloadError(url, `${what}: aborted`, undefined, false);
  const cause = e?.cause ? ` (${e.cause.code ?? ''}${e.cause.code ? ' ' : ''}${e.cause.message})` : '';
  return new DownloadError(url, `${what}: ${e?.message ?? String(err)}${cause}`, undefined, true);
}

function parseTotal(contentRange: string | null): number | null {
  const m = /\/(\d+)$/.exec(contentRange ?? '');
  return m ? Number(m[1]) : null;
}

async function sizeOf(path: string): Promise<number> {
  try {
    return (await stat(path)).size;
  } catch {
    return 0;
  }
}

async function hashInto(hash: Hash, path: string): Promise<void> {
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
}

/** sha256 (lowercase hex) of a file, streamed. */
export async function hashFile(path: string): Promise<string> {
  const hash = createHash('sha256');
  await hashInto(hash, path);
  return hash.digest('hex');
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(resolve, ms);
    signal?.addEventListener(
      'abort',
      () => {
        clearTimeout(t);
        reject(signal.reason);
      },
      { once: true },
    );
  });
}
