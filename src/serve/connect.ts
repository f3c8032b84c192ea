/**
 * How a command reaches a pool: through the daemon that owns it when `thinpool serve` runs
 * (its control socket answers), else by opening the pool in this process. The dump and the check
 * of a pool directory also work on pools that cannot be opened (damaged metadata, a missing data
 * file) or that someone else owns.
 */
import { join } from 'node:path';
import { withFileSink } from '../io/text-sink.js';
import { checkPoolDir } from '../pool/check-pool.js';
import type { CheckReport } from '../thin/check-issues.js';
import { type DumpOptions, dumpFileTo } from '../thin/dump.js';
import { Daemon } from './daemon.js';
import { LocalPoolService } from './local-pool-service.js';
import type { PoolService } from './pool-service.js';
import { RemotePoolService } from './remote-pool-service.js';

export async function connectPool(dir: string): Promise<PoolService> {
  try {
    return await RemotePoolService.connect(join(dir, 'control.sock'));
  } catch {
    // No daemon (or a stale socket from one that died): open the pool here.
    return LocalPoolService.open(dir);
  }
}

/** True when a daemon answers on the pool's control socket. */
export async function isServed(dir: string): Promise<boolean> {
  try {
    const r = await RemotePoolService.connect(join(dir, 'control.sock'));
    await r.close();
    return true;
  } catch {
    return false;
  }
}

/** Connects to the pool in `dir`, runs `fn`, and always closes the service (which commits what it wrote). */
export async function withPool<T>(dir: string, fn: (svc: PoolService) => Promise<T>): Promise<T> {
  const svc = await connectPool(dir);
  let result: T;
  try {
    result = await fn(svc);
  } catch (err) {
    await svc.close().catch(() => undefined);
    throw err;
  }
  await svc.close();
  return result;
}

/**
 * Runs `fn` with a service that can mount devices (the image commands: load, import, diff,
 * commit): the daemon that serves the pool, through its control socket; else a daemon started in
 * this process for the call and stopped afterwards (its mounts released, the pool committed and
 * unlocked). That daemon opens no control socket, so other commands meanwhile find the pool
 * locked, as with any command that opens it. `signal` stops it early (work in progress is undone).
 * `notice` gets what opening the pool found worth telling.
 */
export async function withMountingPool<T>(dir: string, fn: (svc: PoolService) => Promise<T>, opts: { signal?: AbortSignal; notice?: (msg: string) => void } = {}): Promise<T> {
  let remote: RemotePoolService | undefined;
  try {
    remote = await RemotePoolService.connect(join(dir, 'control.sock'));
  } catch {
    // nobody serves it
  }
  if (remote) {
    let result: T;
    try {
      result = await fn(remote);
    } catch (err) {
      await remote.close().catch(() => undefined);
      throw err;
    }
    await remote.close();
    return result;
  }
  opts.signal?.throwIfAborted();
  const daemon = await Daemon.start({ dir, control: false, ephemeral: true });
  for (const n of daemon.pool.notices) opts.notice?.(n);
  const stop = () => void daemon.stop().catch(() => undefined);
  opts.signal?.addEventListener('abort', stop, { once: true });
  try {
    return await fn(daemon.localService);
  } finally {
    opts.signal?.removeEventListener('abort', stop);
    await daemon.stop();
  }
}

/** Error codes of a pool that cannot be opened but whose metadata file may still be dumped. */
const DUMPABLE = new Set(['ECORRUPT', 'EREADONLY', 'ENOENT', 'ENOTFOUND']);

/**
 * Writes the XML dump of the pool in `dir` into `file` (an absolute path; a daemon writes it
 * itself). A pool that cannot be opened (damaged metadata, a missing data file) is dumped from
 * its metadata file read-only, as thin_dump would: `fallback` then names why the pool could not
 * be opened.
 * @throws the error of opening the pool when the read-only dump fails too.
 */
export async function dumpPool(dir: string, file: string, opts: DumpOptions): Promise<{ fallback?: unknown }> {
  let svc: PoolService;
  try {
    svc = await connectPool(dir);
  } catch (err) {
    if (!DUMPABLE.has((err as { code?: string }).code ?? '')) throw err;
    try {
      await withFileSink(file, (sink) => dumpFileTo(join(dir, 'metadata'), sink, opts));
    } catch {
      throw err;
    }
    return { fallback: err };
  }
  try {
    await svc.dumpTo(file, opts);
  } catch (err) {
    await svc.close().catch(() => undefined);
    throw err;
  }
  await svc.close();
  return {};
}

/** Checks the pool in `dir`: from its files under its lock, or through its owner (the daemon) when it is open. */
export function checkPool(dir: string): Promise<CheckReport> {
  return checkPoolDir(dir, () => withPool(dir, (svc) => svc.check()));
}
