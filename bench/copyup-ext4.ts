/**
 * The copyup suite's "thinpool through a mounted ext4 container file system" row: the S-byte file
 * lives in an ext4 file system on a thin device; each sample snapshots that device, attaches and
 * mounts the snapshot (a container's root file system, as `thinpool snapshotter` hands it to
 * containerd) and times the same first write the overlayfs rows time, on the mounted file.
 *
 * The pool is served by `thinpool serve` in a **child process** (test/support/daemon.ts, the CLI
 * with its default 1 s commit timer), and this process reaches it the way `thinpool mount` does:
 * `connectPool` (its control socket), `PoolService.attach` (nbdfuse + `losetup --direct-io=on`),
 * `mountDevice`/`umountDir` of src/serve/mounts.ts. A daemon in this process would share its
 * event loop with the timed write; worse, the blocking `fsync` of the durable mode would wait on
 * an NBD server that cannot run until the fsync returns. So the timed part here is exactly the
 * overlayfs rows' `open(O_WRONLY)` + `pwrite` + [`fsync`] + `close`, synchronous, in this process,
 * and every block it moves goes through the kernel (ext4, loop, FUSE) to the daemon's NBD socket.
 *
 * Measures (untimed, from the daemon's `status`: the pool's data blocks used, in memory): the
 * blocks the snapshot took before the write (the mount's superblock update), and those the write
 * added once it reached the device (`syncfs` after the timed part: in system mode the write is
 * only in the page cache when the timer stops, and the copy-on-write happens at writeback).
 */
import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readSync, rmSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { BusyError } from '../src/errors.js';
import { mountDevice, umountDir } from '../src/serve/mounts.js';
import type { PoolService } from '../src/serve/pool-service.js';
import { CLI, makePool, startDaemon, type DaemonHandle } from '../test/support/daemon.js';
import { preadFile, timedFileWrite, verify, type CopyupPeer, type FileUnderTest } from './copyup-peer.js';

const MiB = 1024 * 1024;
const BLOCK = 64 * 1024;

/** Programs the row needs, besides root and /dev/fuse. */
const TOOLS = ['nbdfuse', 'losetup', 'mkfs.ext4', 'mount', 'umount', 'blkid', 'fusermount3'];

/** mkfs options of `thinpool snapshotter`'s base device: nothing left for the kernel to zero in the background. */
export const MKFS_EXT4 = ['-F', '-q', '-E', 'nodiscard,lazy_itable_init=0,lazy_journal_init=0'];

/** The thin device holding an ext4 file system with an S-byte file: the file, its ext4 overhead and journal, rounded to 1 MiB. */
export function ext4DeviceBytes(fileBytes: number): number {
  return Math.ceil((fileBytes * 1.25 + 48 * MiB) / MiB) * MiB;
}

function have(tool: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${tool} || [ -x /usr/sbin/${tool} ] || [ -x /sbin/${tool} ]`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** Removes a device, waiting out a detach the kernel has not finished (a loop device released late). */
async function removeDevice(svc: PoolService, dev: string): Promise<void> {
  for (let i = 0; ; i++) {
    try {
      return await svc.remove(dev);
    } catch (e) {
      if (!(e instanceof BusyError) || i >= 100) throw e;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/** Copies `from` into `to` (1 MiB at a time) and fsyncs it. */
function copyFile(from: string, to: string, bytes: number): void {
  const src = openSync(from, 'r');
  const dst = openSync(to, 'w', 0o644);
  try {
    const buf = Buffer.allocUnsafe(MiB);
    for (let off = 0; off < bytes; off += MiB) {
      const n = readSync(src, buf, 0, Math.min(MiB, bytes - off), off);
      writeSync(dst, buf, 0, n, off);
    }
    fsyncSync(dst);
  } finally {
    closeSync(src);
    closeSync(dst);
  }
}

/** `capacity`: the data size the suite's device-level pool gets; this pool gets room for the file systems too (sparse). */
export function thinpoolExt4Peer(dir: string, capacity: number): CopyupPeer {
  const poolDir = join(dir, 'ext4-pool');
  let daemon: DaemonHandle | undefined;
  let svc: PoolService | undefined;
  let seq = 0;
  const mounted = new Set<string>();
  const used = async () => (await svc!.status()).dataBlocks.used;
  const origin = (f: FileUnderTest) => `fs-${f.bytes}`;
  const label = 'thinpool ext4 (mounted snapshot)';
  const what = 'a thin snapshot of a device holding an ext4 file system with the file, attached (nbdfuse + loop device) and mounted through `thinpool serve` in a child process (untimed); open(O_WRONLY) + pwrite 4 KiB at S/2';
  const measures = 'Bytes copied: the pool\'s data blocks newly allocated by the write once it reached the device (syncfs after the timed part, untimed) x 64 KiB; space: the data blocks the snapshot took since it was made (the mount\'s included)';
  return {
    id: 'thinpool-ext4',
    label: () => label,
    level: 'block',
    how: {
      system: `${what} + close on the mounted file: the write lands in the page cache, its copy-on-write happens at writeback. ${measures}`,
      durable: `${what} + fsync + close on the mounted file: ext4 writes the page and commits its journal, the flush reaches the daemon as an NBD FLUSH (a pool commit). ${measures}`,
    },
    async probe() {
      if (process.getuid?.() !== 0) return 'not root (loop devices and kernel mounts need root)';
      if (!existsSync('/dev/fuse')) return 'no /dev/fuse (nbdfuse needs FUSE)';
      for (const t of TOOLS) if (!have(t)) return `${t} is not installed (Debian: libnbd-bin, fuse3, e2fsprogs, util-linux)`;
      if (!existsSync(CLI)) return `the CLI is not built (${CLI})`;
      return null;
    },
    async prepare(f) {
      if (!daemon) {
        await makePool({ dataSize: 2 * capacity + 1024 * MiB, blockSize: BLOCK, autoExtend: false }, poolDir);
        daemon = await startDaemon({ dir: poolDir, via: 'cli' });
        svc = await daemon.service();
      }
      const s = svc!;
      const dev = origin(f);
      await s.createDevice(dev, ext4DeviceBytes(f.bytes));
      const mnt = join(dir, `ext4-prepare-${f.bytes}`);
      mkdirSync(mnt, { recursive: true });
      // mkfs on the attachment mountDevice then takes over (same holder).
      const rec = await s.attach(dev, { readOnly: false, holder: `mount:${mnt}` });
      execFileSync('mkfs.ext4', [...MKFS_EXT4, rec.path!], { stdio: ['ignore', 'ignore', 'pipe'] });
      await mountDevice(s, dev, mnt);
      mounted.add(mnt);
      try {
        mkdirSync(join(mnt, f.rel, '..'), { recursive: true });
        copyFile(f.path, join(mnt, f.rel), f.bytes);
      } finally {
        await umountDir(s, mnt);
        mounted.delete(mnt);
        rmSync(mnt, { recursive: true, force: true });
      }
      await s.flush();
    },
    async sample(f, mode, round) {
      const s = svc!;
      const n = seq++;
      const snap = `${origin(f)}-snap-${n}`;
      const mnt = join(dir, `ext4-${n}`);
      const u0 = await used();
      await s.snapshot(origin(f), snap);
      mkdirSync(mnt);
      try {
        await mountDevice(s, snap, mnt);
        mounted.add(mnt);
        const target = join(mnt, f.rel);
        // Untimed: the path lookup (a running container has its dentries and inodes), and the
        // mount's own writes (superblock) on their way to the device.
        statSync(target);
        execFileSync('sync', ['-f', mnt]);
        const u1 = await used();
        const micros = timedFileWrite(target, f, mode);
        execFileSync('sync', ['-f', mnt]);
        const u2 = await used();
        verify(f, preadFile(target, f.offset, f.data.length), preadFile(target, f.offset - 4096, 4096), label);
        return { round, micros, bytesCopied: (u2 - u1) * BLOCK, spaceBeforeBytes: (u1 - u0) * BLOCK, spaceAfterBytes: (u2 - u0) * BLOCK };
      } finally {
        if (mounted.has(mnt)) {
          await umountDir(s, mnt);
          mounted.delete(mnt);
        }
        rmSync(mnt, { recursive: true, force: true });
        await removeDevice(s, snap);
      }
    },
    async release(f) {
      await removeDevice(svc!, origin(f));
    },
    async close() {
      try {
        for (const m of [...mounted]) {
          await umountDir(svc!, m).catch((e: unknown) => console.error(`copyup: unmounting ${m}: ${(e as Error).message}`));
          mounted.delete(m);
        }
        await svc?.close();
      } finally {
        svc = undefined;
        // SIGTERM: the daemon releases its attachments, commits and unlocks.
        await daemon?.stop();
        daemon = undefined;
      }
    },
  };
}
