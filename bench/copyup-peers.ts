/**
 * The systems of the copyup suite ("first write after a snapshot"). Each is a {@link CopyupPeer}:
 * it says whether it can run here, prepares once per file size (untimed), and takes one sample:
 * untimed setup of a fresh "after the snapshot" state, the timed first write of 4 KiB into the
 * middle of the file, the measurements (bytes copied, space used) and untimed cleanup.
 *
 * A row still to come would be listed in {@link PENDING} until it plugs in as one more peer in
 * {@link makePeers}.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, closeSync, mkdirSync, openSync, readSync, rmSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { Pool } from '../src/pool/pool.js';
import { CopyUpFs } from './copyup-baseline.js';
import { now } from './harness.js';
import { allocatedBytes, qcow2OwnDataBytes, qemuIo, qemuMissing, runTool } from './qemu-io.js';

import { duBytes, preadFile, timedFileWrite, verify, type CopyupPeer, type Mode } from './copyup-peer.js';
import { thinpoolExt4Peer } from './copyup-ext4.js';

export { duBytes, MODES, preadFile, verify, type CopyupPeer, type FileUnderTest, type FirstWriteSample, type Mode } from './copyup-peer.js';

/**
 * Rows the suite will have once the layers they need exist; listed in the output and the JSON
 * (none left: the ext4 row is {@link thinpoolExt4Peer}, and the real-container rows are the
 * `containers` suite's).
 */
export const PENDING: ReadonlyArray<{ id: string; label: string; needs: string }> = [];

// ---- kernel overlayfs -----------------------------------------------------------------------

function overlayPeer(dir: string, metacopy: boolean): CopyupPeer {
  let seq = 0;
  const mounted = new Set<string>();
  const mount = (lower: string, upper: string, work: string, merged: string) => {
    const o = `lowerdir=${lower},upperdir=${upper},workdir=${work}${metacopy ? ',metacopy=on' : ',metacopy=off'}`;
    execFileSync('mount', ['-t', 'overlay', 'overlay', '-o', o, merged], { stdio: ['ignore', 'ignore', 'pipe'] });
    mounted.add(merged);
  };
  const umount = (merged: string) => {
    execFileSync('umount', [merged], { stdio: ['ignore', 'ignore', 'pipe'] });
    mounted.delete(merged);
  };
  const fresh = (lower: string) => {
    const base = join(dir, `${metacopy ? 'ovl-meta' : 'ovl'}-${seq++}`);
    const [upper, work, merged] = ['upper', 'work', 'merged'].map((n) => join(base, n)) as [string, string, string];
    for (const d of [upper, work, merged]) mkdirSync(d, { recursive: true });
    mount(lower, upper, work, merged);
    return { base, upper, merged };
  };
  const name = metacopy ? 'overlayfs metacopy=on' : 'overlayfs';
  const open = `open(O_WRONLY) + pwrite 4 KiB at S/2 + close on the merged dir (the kernel copies the file up at the open${metacopy ? '; chmod before it, untimed, copies only the inode' : ''} and fsyncs the copy)`;
  return {
    id: metacopy ? 'overlayfs-metacopy' : 'overlayfs',
    label: () => name,
    level: 'file',
    how: {
      system: `${open}; the 4 KiB write is buffered. Bytes copied: the upper file's allocated bytes; space: du of the upper dir`,
      durable: `${open.replace('+ close', '+ fsync + close')}. Bytes copied: the upper file's allocated bytes; space: du of the upper dir`,
    },
    async probe() {
      if (process.getuid?.() !== 0) return 'not root (overlayfs mounts need CAP_SYS_ADMIN)';
      const lower = join(dir, 'probe-lower');
      mkdirSync(lower, { recursive: true });
      const fd = openSync(join(lower, 'f'), 'w');
      writeSync(fd, Buffer.alloc(1 << 20, 1));
      closeSync(fd);
      let m: { base: string; upper: string; merged: string } | undefined;
      try {
        m = fresh(lower);
        if (metacopy) {
          chmodSync(join(m.merged, 'f'), 0o600);
          const st = statSync(join(m.upper, 'f'));
          // Only the inode (and its xattrs, which ext4 may keep in one block) is copied up.
          if (st.size !== 1 << 20 || st.blocks * 512 >= st.size / 2) return `metacopy=on was accepted but chmod copied the data (upper file ${st.blocks * 512} bytes allocated)`;
        }
        return null;
      } catch (e) {
        return `cannot mount overlayfs: ${((e as { stderr?: Buffer }).stderr?.toString() || (e as Error).message).trim()}`;
      } finally {
        if (m) {
          if (mounted.has(m.merged)) umount(m.merged);
          rmSync(m.base, { recursive: true, force: true });
        }
        rmSync(lower, { recursive: true, force: true });
      }
    },
    async prepare() {},
    async sample(f, mode, round) {
      const m = fresh(f.lowerDir);
      try {
        const target = join(m.merged, f.rel);
        const extraMicros: Record<string, number> = {};
        if (metacopy) {
          const t = now();
          chmodSync(target, 0o640);
          extraMicros.chmod = (now() - t) * 1e6;
        }
        const spaceBeforeBytes = duBytes(m.upper);
        const micros = timedFileWrite(target, f, mode);
        const bytesCopied = statSync(join(m.upper, f.rel)).blocks * 512;
        const spaceAfterBytes = duBytes(m.upper);
        verify(f, preadFile(join(m.upper, f.rel), f.offset, f.data.length), preadFile(join(m.upper, f.rel), f.offset - 4096, 4096), name);
        return { round, micros, bytesCopied, spaceBeforeBytes, spaceAfterBytes, ...(metacopy ? { extraMicros } : {}) };
      } finally {
        umount(m.merged);
        rmSync(m.base, { recursive: true, force: true });
      }
    },
    async release() {},
    async close() {
      for (const p of [...mounted]) umount(p);
    },
  };
}

// ---- userspace copy-up baseline -------------------------------------------------------------

function baselinePeer(dir: string): CopyupPeer {
  let seq = 0;
  const how = 'CopyUpFs.write (bench/copyup-baseline.ts): top-down lookup, the whole file copied into the top layer by a 1 MiB read/write loop, fsync of the copy, rename, then open + pwrite 4 KiB + close';
  return {
    id: 'userspace-copyup',
    label: () => 'userspace copy-up',
    level: 'file',
    how: {
      system: `${how}. Bytes copied: counted by the copy loop; space: du of the top layer`,
      durable: `${how.replace('+ close', '+ fsync + close')}. Bytes copied: counted by the copy loop; space: du of the top layer`,
    },
    async probe() {
      return null;
    },
    async prepare() {},
    async sample(f, mode, round) {
      const top = join(dir, `top-${seq++}`);
      mkdirSync(top);
      try {
        const fs = new CopyUpFs([top, f.lowerDir]);
        const spaceBeforeBytes = duBytes(top);
        const t0 = now();
        const w = await fs.write(f.rel, f.offset, f.data, { durable: mode === 'durable' });
        const micros = (now() - t0) * 1e6;
        if (w.copiedFiles !== 1 || w.copiedBytes !== f.bytes) throw new Error(`userspace copy-up copied ${w.copiedFiles} files, ${w.copiedBytes} bytes; expected 1 file of ${f.bytes}`);
        const copy = join(top, f.rel);
        verify(f, preadFile(copy, f.offset, f.data.length), preadFile(copy, f.offset - 4096, 4096), 'userspace copy-up');
        return { round, micros, bytesCopied: w.copiedBytes, spaceBeforeBytes, spaceAfterBytes: duBytes(top) };
      } finally {
        rmSync(top, { recursive: true, force: true });
      }
    },
    async release() {},
    async close() {},
  };
}

// ---- qcow2 with a backing file --------------------------------------------------------------

function qcow2Peer(dir: string): CopyupPeer {
  let seq = 0;
  const cache = (mode: Mode) => (mode === 'system' ? 'writeback' : 'writethrough');
  const how = (mode: Mode) =>
    `a fresh qcow2 (64 KiB clusters) with the file as its raw backing file; qemu-io -t ${cache(mode)} -c 'write -P 0x5a S/2 4k', timed by qemu-io's own per-command clock (not its process start)${mode === 'durable' ? '; writethrough flushes after the write' : ''}. Bytes copied: guest bytes allocated in the qcow2 (qemu-img map, depth 0); space: the qcow2 file's allocated bytes`;
  return {
    id: 'qcow2',
    label: (mode) => `qcow2 cache=${cache(mode)}`,
    level: 'block',
    how: { system: how('system'), durable: how('durable') },
    async probe() {
      return qemuMissing();
    },
    async prepare() {},
    async sample(f, mode, round) {
      const img = join(dir, `overlay-${seq++}.qcow2`);
      try {
        await runTool('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=65536', '-b', f.path, '-F', 'raw', img, String(f.bytes)]);
        const spaceBeforeBytes = await allocatedBytes(img);
        const pattern = f.data[0]!;
        const [secs] = await qemuIo(img, [`write -P ${pattern} ${f.offset} ${f.data.length}`], { cache: cache(mode) });
        // Untimed check: the write reads back through the chain.
        await qemuIo(img, [`read -P ${pattern} ${f.offset} ${f.data.length}`], { cache: 'writeback', readOnly: true });
        return { round, micros: secs! * 1e6, bytesCopied: await qcow2OwnDataBytes(img), spaceBeforeBytes, spaceAfterBytes: await allocatedBytes(img) };
      } finally {
        rmSync(img, { force: true });
      }
    },
    async release() {},
    async close() {},
  };
}

// ---- thinpool at the device level -----------------------------------------------------------

function thinpoolDevicePeer(dir: string, capacity: number): CopyupPeer {
  let pool: Pool | undefined;
  let seq = 0;
  const what = 'a thin device whose first S bytes hold the file; snapshot (untimed, commits); ThinVolume.write of 4 KiB at S/2 into the snapshot';
  return {
    id: 'thinpool-device',
    label: () => 'thinpool device',
    level: 'block',
    how: {
      system: `${what}, not committed (the mapping change rides the next commit). Bytes copied and space: newly allocated data blocks x block size`,
      durable: `${what}, then flush() (a commit: data fdatasync, metadata, catalog, superblock). Bytes copied and space: newly allocated data blocks x block size`,
    },
    async probe() {
      return null;
    },
    async prepare(f) {
      pool ??= await Pool.create({ dir: join(dir, 'pool'), dataSize: capacity, blockSize: 64 * 1024, autoExtend: false }, { commitIntervalMs: 0 });
      const name = `file-${f.bytes}`;
      await pool.createDevice(name, f.bytes);
      const vol = pool.volume(name);
      const fd = openSync(f.path, 'r');
      try {
        const buf = Buffer.allocUnsafe(1 << 20);
        for (let off = 0; off < f.bytes; off += buf.length) {
          const n = readSync(fd, buf, 0, Math.min(buf.length, f.bytes - off), off);
          await vol.write(off, buf.subarray(0, n));
        }
      } finally {
        closeSync(fd);
      }
      await pool.commit();
    },
    async sample(f, mode, round) {
      const p = pool!;
      const name = `snap-${f.bytes}-${seq++}`;
      await p.snapshot(`file-${f.bytes}`, name);
      try {
        const vol = p.volume(name);
        const before = p.md.usage.dataBlocks.used;
        const t0 = now();
        await vol.write(f.offset, f.data);
        if (mode === 'durable') await vol.flush();
        const micros = (now() - t0) * 1e6;
        const grown = (p.md.usage.dataBlocks.used - before) * p.blockSize;
        verify(f, await vol.read(f.offset, f.data.length), await vol.read(f.offset - 4096, 4096), 'thinpool device');
        await p.commit();
        return { round, micros, bytesCopied: grown, spaceBeforeBytes: 0, spaceAfterBytes: grown };
      } finally {
        await p.remove(name);
      }
    },
    async release(f) {
      await pool!.remove(`file-${f.bytes}`);
    },
    async close() {
      await pool?.close();
      pool = undefined;
    },
  };
}

/**
 * Every peer of the suite, in table order. `capacity` is the thin pool's data size (enough for
 * the largest file plus the snapshots' copies).
 */
export function makePeers(dir: string, capacity: number): CopyupPeer[] {
  return [overlayPeer(dir, false), overlayPeer(dir, true), baselinePeer(dir), qcow2Peer(dir), thinpoolDevicePeer(dir, capacity), thinpoolExt4Peer(dir, capacity)];
}

