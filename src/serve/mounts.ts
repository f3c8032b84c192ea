/**
 * `thinpool mount DEV DIR [--read-only]` and `thinpool umount DIR`: a device holding a file
 * system mounted through the daemon that owns the pool (the device is attached through the
 * daemon's NBD socket; the mount belongs to the caller). As root the attached block device is
 * mounted by the kernel (`mount -t ext4|xfs`; read-only ext4 is `ro,noload`: no journal replay,
 * xfs `ro,norecovery`, and xfs always `nouuid`, since snapshots share their file system's UUID);
 * as another user the daemon (run by that user) exposes the device as a file through nbdfuse and
 * `fuse2fs` mounts it (ext2/3/4 only; `-o fakeroot`, the user owns the device).
 *
 * A pool nobody serves is refused with the command to run: the mount would outlive this command,
 * and only a daemon can keep serving it.
 */
import { stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import { BusyError, NotFoundError, UsageError } from '../errors.js';
import type { AttachMount } from './attach/attach-records.js';
import { isMountpoint, runChecked, runQuiet } from './attach/host-devices.js';
import type { PoolService } from './pool-service.js';

export interface MountResult {
  device: string;
  dir: string;
  /** What was mounted: the block device (or the nbdfuse file, rootless). */
  source: string;
  fs: string;
  options: string[];
  via: 'kernel' | 'fuse2fs';
}

/** The file system type on `path` (blkid), or undefined. */
async function probeFs(path: string): Promise<string | undefined> {
  const r = await runQuiet('blkid', ['-p', '-o', 'value', '-s', 'TYPE', path]).catch(() => undefined);
  const t = r?.stdout.trim();
  return t || undefined;
}

/** Mount options for `fs`, read-only or not (kernel mounts). */
export function mountOptions(fs: string, readOnly: boolean): string[] {
  const o: string[] = [];
  if (fs === 'xfs') o.push('nouuid');
  if (readOnly) o.push('ro', fs === 'xfs' ? 'norecovery' : fs.startsWith('ext') ? 'noload' : '');
  return o.filter(Boolean);
}

/** Mounts device `dev` (which holds a file system) at `dir`. */
export async function mountDevice(svc: PoolService, dev: string, dirArg: string, opts: { readOnly?: boolean } = {}): Promise<MountResult> {
  const dir = resolve(dirArg);
  const st = await stat(dir).catch(() => undefined);
  if (!st?.isDirectory()) throw new NotFoundError(`Cannot mount ${dev} at ${dir}: no such directory`, { dir });
  if (await isMountpoint(dir)) throw new BusyError(`Cannot mount ${dev} at ${dir}: something is mounted there already`, { dir });
  const listing = await svc.device(dev);
  const readOnly = !!opts.readOnly || listing.readOnly;
  const holder = `mount:${dir}`;
  const rec = await svc.attach(dev, { readOnly, holder });
  const path = rec.path!;
  try {
    const fs = listing.fs ?? (await probeFs(path));
    if (!fs) throw new UsageError(`Cannot mount ${dev}: no file system found on it (blkid)`, { dev });
    let result: MountResult;
    if (rec.method === 'file') {
      if (!/^ext[234]$/.test(fs)) throw new UsageError(`Cannot mount ${dev} without root: its ${fs} file system needs the kernel (fuse2fs mounts ext2/3/4 only)`, { dev, fs });
      const o = ['fakeroot', ...(readOnly ? ['ro'] : [])];
      await runChecked('fuse2fs', [path, dir, '-o', o.join(',')], `mount ${dev} at ${dir} with fuse2fs`);
      result = { device: dev, dir, source: path, fs, options: o, via: 'fuse2fs' };
    } else {
      const o = mountOptions(fs, readOnly);
      await runChecked('mount', ['-t', fs, ...(o.length ? ['-o', o.join(',')] : []), path, dir], `mount ${dev} at ${dir}`);
      result = { device: dev, dir, source: path, fs, options: o, via: 'kernel' };
    }
    const m: AttachMount = { dir, fs, via: result.via };
    await svc.addMount(dev, m);
    return result;
  } catch (err) {
    await svc.removeMount(dev, dir).catch(() => undefined);
    throw err;
  }
}

/** Unmounts what `thinpool mount` mounted at `dir` and releases the device's attachment. */
export async function umountDir(svc: PoolService, dirArg: string): Promise<{ device: string; dir: string; detached: boolean }> {
  const dir = resolve(dirArg);
  const rec = (await svc.attachments()).find((a) => a.mounts.some((m) => m.dir === dir));
  if (!rec) throw new NotFoundError(`Cannot unmount ${dir}: no thinpool mount there`, { dir });
  const m = rec.mounts.find((x) => x.dir === dir)!;
  if (await isMountpoint(dir)) {
    if (m.via === 'fuse2fs') await runChecked('fusermount3', ['-u', dir], `unmount ${dir}`);
    else await runChecked('umount', [dir], `unmount ${dir}`);
  }
  const detached = await svc.removeMount(rec.device, dir);
  return { device: rec.device, dir, detached };
}
