/**
 * The base device every parentless snapshot starts from: one file system made once (like
 * Docker's devicemapper `dm.basesize` device and containerd's devmapper base), `ext4` by default
 * or `xfs`. The file system is made in a sparse file beside the pool, fully initialised
 * (`lazy_itable_init=0,lazy_journal_init=0`: no background zeroing left for the kernel to do in
 * every container), without `lost+found` (a new snapshot's root is an empty 0755 directory, as
 * containerd expects), then copied into the device extent by extent: regions the file system
 * leaves zero are never written, so they take no pool blocks.
 *
 * The record gets its `fs` field (and turns read-only) in the commit after the copy: a device
 * named {@link BASE_DEVICE} without `fs` is a format that a crash interrupted, and is made again.
 */
import { execFile } from 'node:child_process';
import { mkdir, open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { IoError, NotFoundError, UsageError } from '../errors.js';
import { seekData, seekHole } from '../io/native.js';
import type { DeviceRecord } from '../pool/catalog-slots.js';
import type { Pool } from '../pool/pool.js';
import { GiB, MiB } from '../units.js';
import type { BaseFs } from './types.js';

/** The base device's name in the pool. */
export const BASE_DEVICE = 'snapshots-base';
/** Default size of the base device (and so of every snapshot's file system), as Docker's dm.basesize. */
export const DEFAULT_BASE_SIZE = 10 * GiB;

export interface BaseDeviceOptions {
  /** Bytes (a multiple of 512; xfs needs at least 300 MiB). */
  sizeBytes: number;
  fs: BaseFs;
}

const PATH = `${process.env.PATH ?? '/usr/bin:/bin'}:/usr/sbin:/sbin`;

/** Runs a program; rejects with its stderr on a nonzero exit. */
export function runProgram(cmd: string, args: string[], action: string, timeoutMs = 300_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { env: { ...process.env, PATH }, timeout: timeoutMs, maxBuffer: 16 * MiB, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (!err) return resolve(stdout);
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        return reject(new NotFoundError(`Cannot ${action}: ${cmd} is not installed`, { program: cmd }));
      }
      reject(new IoError(`Cannot ${action}: ${cmd} ${args.join(' ')} failed: ${(stderr || stdout || err.message).trim()}`, { program: cmd }));
    });
  });
}

/** Makes the file system in `file` (a sparse file of the device's size). */
export async function makeFileSystem(file: string, fs: BaseFs): Promise<void> {
  if (fs === 'ext4') {
    await runProgram('mkfs.ext4', ['-F', '-q', '-E', 'nodiscard,lazy_itable_init=0,lazy_journal_init=0', file], 'make the base file system');
    await runProgram('debugfs', ['-w', '-R', 'rmdir lost+found', file], 'remove lost+found from the base file system');
  } else if (fs === 'xfs') {
    await runProgram('mkfs.xfs', ['-f', '-q', '-K', file], 'make the base file system');
  } else {
    throw new UsageError(`Cannot make a ${String(fs)} file system: use ext4 or xfs`);
  }
}

/** The base device's record when it is complete, else undefined. */
export function baseDevice(pool: Pool): DeviceRecord | undefined {
  const r = pool.catalog.devices.find((d) => d.name === BASE_DEVICE);
  return r?.fs ? r : undefined;
}

/** Base devices being made, per pool: every caller (each namespace's store) waits for the one format. */
const making = new WeakMap<Pool, Promise<DeviceRecord>>();

/**
 * Returns the base device, making it first when the pool has none (and dropping one a crash left
 * half made). A base made earlier keeps its own size and file system. Concurrent callers on one
 * pool share one format.
 */
export async function ensureBaseDevice(pool: Pool, opts: BaseDeviceOptions): Promise<DeviceRecord> {
  const done = baseDevice(pool);
  if (done) return done;
  let p = making.get(pool);
  if (!p) {
    p = makeBaseDevice(pool, opts).finally(() => making.delete(pool));
    making.set(pool, p);
  }
  return p;
}

async function makeBaseDevice(pool: Pool, opts: BaseDeviceOptions): Promise<DeviceRecord> {
  if (opts.sizeBytes % 512 !== 0 || opts.sizeBytes <= 0) throw new UsageError(`Cannot make a base device of ${opts.sizeBytes} bytes: use a positive multiple of 512`);
  if (pool.catalog.devices.some((d) => d.name === BASE_DEVICE)) await pool.change([{ op: 'remove', dev: BASE_DEVICE }]);
  const runDir = join(pool.dir, 'run');
  await mkdir(runDir, { recursive: true });
  const img = join(runDir, `base-format-${process.pid}.img`);
  try {
    const fh = await open(img, 'w', 0o600);
    await fh.truncate(opts.sizeBytes);
    await fh.close();
    await makeFileSystem(img, opts.fs);
    await pool.change([{ op: 'create', name: BASE_DEVICE, sizeBytes: opts.sizeBytes }]);
    await copySparseInto(pool, img, opts.sizeBytes);
    await pool.syncData();
    const [rec] = await pool.change([{ op: 'update', dev: BASE_DEVICE, set: { fs: opts.fs, readOnly: true } }]);
    return rec!;
  } finally {
    await rm(img, { force: true });
  }
}

/** Writes the data extents of `file` into the base device (all-zero blocks are skipped by the volume). */
async function copySparseInto(pool: Pool, file: string, size: number): Promise<void> {
  const vol = pool.volume(BASE_DEVICE);
  const fh = await open(file, 'r');
  const CHUNK = 4 * MiB;
  const buf = Buffer.alloc(CHUNK);
  try {
    let pos = 0;
    while (pos < size) {
      const start = await seekData(fh.fd, pos, size);
      if (start < 0 || start >= size) break;
      const end = Math.min(size, await seekHole(fh.fd, start, size));
      for (let off = start; off < end; ) {
        const n = Math.min(CHUNK, end - off);
        const { bytesRead } = await fh.read(buf, 0, n, off);
        if (bytesRead <= 0) break;
        await vol.write(off, buf.subarray(0, bytesRead));
        off += bytesRead;
      }
      pos = end;
    }
  } finally {
    await fh.close();
  }
}
