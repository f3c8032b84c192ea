/**
 * qemu-io and qemu-img against a real daemon serving a real thin pool: what qemu writes, zeroes
 * and discards lands in the device byte for byte, and the device's block mappings (read through
 * the control socket) are exactly what those requests imply at the pool's 64 KiB block size.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { randomFillSync } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { haveTools, run, testIf } from '../support/oracles.js';
import { type DaemonHandle, makePool, mappedBlocksOf, nonzeroBlocksOf, startDaemon } from '../support/daemon.js';
import { Rng, testSeed } from '../support/rng.js';
import { tempDir } from '../support/tmp.js';

const K = 1024;
const M = 1024 * K;
const BS = 64 * K;
const qemuTest = testIf(test, haveTools('qemu-io', 'qemu-img'), 'qemu-io/qemu-img not installed');

async function qemuIo(d: DaemonHandle, name: string, cmds: string[], extra: string[] = []): Promise<string> {
  const args = ['-f', 'raw', ...extra, d.uri(name)];
  for (const c of cmds) args.push('-c', c);
  const r = await run('qemu-io', args, { timeoutMs: 60_000 });
  const out = r.stdout + r.stderr;
  assert.is(r.code, 0, `qemu-io exit ${r.code}: ${out}`);
  assert.not.ok(/fail|error/i.test(out), out);
  return out;
}

/** A byte model and mapped-block model of what qemu-io's commands do to a thin device. */
class Model {
  readonly bytes: Buffer;
  readonly mapped = new Set<number>();
  readonly cmds: string[] = [];
  constructor(readonly size: number) {
    this.bytes = Buffer.alloc(size);
  }
  private blocks(off: number, len: number): number[] {
    const out: number[] = [];
    for (let b = Math.floor(off / BS); b * BS < off + len; b++) out.push(b);
    return out;
  }
  /** Whole blocks inside the range. */
  private inner(off: number, len: number): number[] {
    const out: number[] = [];
    for (let b = Math.ceil(off / BS); (b + 1) * BS <= off + len; b++) out.push(b);
    return out;
  }
  write(pat: number, off: number, len: number, aio = false): void {
    this.cmds.push(`${aio ? 'aio_write' : 'write'} -P 0x${pat.toString(16)} ${off} ${len}`);
    this.bytes.fill(pat, off, off + len);
    if (pat !== 0) for (const b of this.blocks(off, len)) this.mapped.add(b);
  }
  read(pat: number, off: number, len: number): void {
    this.cmds.push(`read -P 0x${pat.toString(16)} ${off} ${len}`);
  }
  /** `write -z` sends WRITE_ZEROES with NO_HOLE: every touched block ends up provisioned. `-u` lets whole blocks be unmapped. */
  zero(off: number, len: number, unmap: boolean): void {
    this.cmds.push(`write -z${unmap ? ' -u' : ''} ${off} ${len}`);
    this.bytes.fill(0, off, off + len);
    if (!unmap) for (const b of this.blocks(off, len)) this.mapped.add(b);
    else for (const b of this.inner(off, len)) this.mapped.delete(b);
  }
  /** TRIM: whole blocks inside are unmapped (read as zeros); partial ends keep their bytes (dm-thin's rule). */
  discard(off: number, len: number): void {
    this.cmds.push(`discard ${off} ${len}`);
    for (const b of this.inner(off, len)) {
      this.mapped.delete(b);
      this.bytes.fill(0, b * BS, (b + 1) * BS);
    }
  }
  raw(cmd: string): void {
    this.cmds.push(cmd);
  }
}

qemuTest('qemu-io: patterns, write -z, write -z -u, discard, aio; bytes and block mappings are what the requests imply', async () => {
  const SIZE = 64 * M;
  const dir = await makePool({ devices: [{ name: 'disk', size: SIZE }] });
  const d = await startDaemon({ dir });
  try {
    const m = new Model(SIZE);
    m.write(0xab, 0, 64 * K);
    m.read(0xab, 0, 64 * K);
    m.zero(4 * K, 4 * K, false); // zeroes inside a mapped block: in place
    m.read(0, 4 * K, 4 * K);
    m.read(0xab, 8 * K, 56 * K);
    m.write(0x5a, 1 * M, 4 * K);
    m.write(0x11, 2 * M, 4 * K, true);
    m.write(0x22, 3 * M + 8 * K, 128 * K, true); // three blocks, unaligned
    m.write(0x33, 5 * M, 1 * M, true);
    m.raw('aio_flush');
    m.read(0x5a, 1 * M, 4 * K);
    m.read(0x11, 2 * M, 4 * K);
    m.read(0x22, 3 * M + 8 * K, 128 * K);
    m.read(0x33, 5 * M, 1 * M);
    m.read(0, 3 * M, 8 * K);
    m.zero(8 * M, 128 * K, false); // NO_HOLE on unprovisioned blocks: provisioned zeros
    m.zero(8 * M + 192 * K, 8 * K, false);
    m.read(0, 8 * M, 256 * K);
    m.write(0x44, 10 * M, 256 * K);
    m.zero(10 * M, 256 * K, true); // may unmap: four blocks unmapped
    m.read(0, 10 * M, 256 * K);
    m.write(0x45, 11 * M, 128 * K);
    m.zero(11 * M + 32 * K, 64 * K, true); // two partial blocks: zeros written in place
    m.read(0x45, 11 * M, 32 * K);
    m.read(0, 11 * M + 32 * K, 64 * K);
    m.read(0x45, 11 * M + 96 * K, 32 * K);
    m.zero(11 * M + 192 * K, 64 * K, true); // unprovisioned: nothing to do
    m.zero(11 * M + 320 * K, 4 * K, true); // unprovisioned partial: stays a hole
    m.write(0x66, 14 * M, 192 * K);
    m.discard(14 * M + 64 * K, 64 * K); // the middle block goes
    m.discard(14 * M, 4 * K); // partial: kept
    m.read(0x66, 14 * M, 64 * K);
    m.read(0, 14 * M + 64 * K, 64 * K);
    m.read(0x66, 14 * M + 128 * K, 64 * K);
    m.discard(20 * M, 2 * M); // unprovisioned
    m.write(0x77, SIZE - 4 * K, 4 * K);
    m.read(0x77, SIZE - 4 * K, 4 * K);
    m.write(0x01, 30 * M + 100, 5);
    m.read(0x01, 30 * M + 100, 5);
    m.read(0, 30 * M, 100);
    m.read(0, 32 * M, 1 * M);
    m.raw('flush');
    await qemuIo(d, 'disk', m.cmds);

    const svc = await d.service();
    try {
      const ext = await svc.extents('disk', 0, SIZE);
      const expected = [...m.mapped].sort((a, b) => a - b);
      assert.equal(mappedBlocksOf(ext, BS), expected, 'mapped blocks');
      assert.ok(expected.includes(128) && expected.includes(131), 'NO_HOLE write-zeroes provisioned its blocks');
      assert.not.ok(expected.includes(160) || expected.includes(225), 'unmap/discard removed blocks');
      const dev = await svc.device('disk');
      assert.is(dev.mappedBlocks, expected.length);
      assert.ok((await svc.read('disk', 0, SIZE)).equals(m.bytes), 'device bytes equal the model');
      const st = await svc.status();
      assert.is(st.dataBlocks.used, expected.length, 'no data block leaked by unmap/discard');
    } finally {
      await svc.close();
    }
    const bad = await run('qemu-io', ['-f', 'raw', d.uri('disk'), '-c', 'read -P 0x12 1M 4k']);
    assert.match(bad.stdout + bad.stderr, /Pattern verification failed/, 'a wrong pattern is detected (the oracle works)');
    assert.ok(d.alive());
  } finally {
    await d.stop();
  }
});

qemuTest('qemu-img convert -n of a 256 MiB image into an export and back out is byte-identical; compare agrees and sees one changed byte', async () => {
  const seed = testSeed();
  const rng = new Rng(seed);
  const SIZE = 256 * M;
  const dir = await makePool({ devices: [{ name: 'big', size: SIZE }] });
  const work = tempDir('thinpool-serve-qemu-');
  const d = await startDaemon({ dir });
  try {
    // Random data islands (4 KiB aligned and not, whole blocks and slivers) between zero areas.
    const img = Buffer.alloc(SIZE);
    for (let mb = 0; mb < 256; mb++) {
      const kind = rng.int(10);
      if (kind < 4) continue;
      if (kind < 6) randomFillSync(img, mb * M, M);
      else if (kind < 9) {
        const len = rng.range(1, 256) * 4 * K;
        const at = mb * M + rng.int((M - len) / (4 * K) + 1) * 4 * K;
        randomFillSync(img, at, len);
      } else {
        img[mb * M + rng.int(M)] = rng.range(1, 255);
      }
    }
    const src = join(work, 'src.raw');
    const out = join(work, 'out.raw');
    await writeFile(src, img);
    const t0 = Date.now();
    const into = await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, d.uri('big')], { timeoutMs: 120_000 });
    assert.is(into.code, 0, into.stdout + into.stderr);
    const t1 = Date.now();
    const back = await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', d.uri('big'), out], { timeoutMs: 120_000 });
    assert.is(back.code, 0, back.stdout + back.stderr);
    const t2 = Date.now();
    assert.ok((await readFile(out)).equals(img), 'round trip is byte-identical');
    const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, d.uri('big')], { timeoutMs: 120_000 });
    assert.is(cmp.code, 0, cmp.stdout + cmp.stderr);

    const svc = await d.service();
    try {
      // Zeros never provision a block here (skipped or unmapped), so exactly the blocks with data are mapped.
      const want = nonzeroBlocksOf(img, BS);
      assert.equal(mappedBlocksOf(await svc.extents('big', 0, SIZE), BS), want, 'mapped blocks = blocks holding data');
      assert.is((await svc.status()).dataBlocks.used, want.length);
      // One changed byte, written through the control socket, is seen by qemu at once.
      const at = 123 * M + 4567;
      const old = (await svc.read('big', at, 1))[0]!;
      await svc.write('big', at, Buffer.from([old ^ 0x20]));
      const diff = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, d.uri('big')], { timeoutMs: 120_000 });
      assert.is(diff.code, 1, `compare notices the changed byte: ${diff.stdout}${diff.stderr}`);
      assert.match(diff.stdout, String(at - (at % 512)), 'compare names the offset');
      await svc.write('big', at, Buffer.from([old]));
      const same = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, d.uri('big')], { timeoutMs: 120_000 });
      assert.is(same.code, 0, same.stdout + same.stderr);
    } finally {
      await svc.close();
    }
    console.log(`qemu-img convert 256 MiB: in ${((t1 - t0) / 1000).toFixed(1)} s, out ${((t2 - t1) / 1000).toFixed(1)} s`);
  } catch (err) {
    console.error(`failed with THINPOOL_SEED=${seed}`);
    throw err;
  } finally {
    await d.stop();
  }
});

test.run();
