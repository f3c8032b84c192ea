/**
 * qemu-io and qemu-img against the NBD server: patterns, zeroes, discards and flushes land in the
 * export, read-only exports refuse writes, and qemu-img convert in and out is byte-identical.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { randomFillSync } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MemoryExport } from '../../src/nbd/memory-export.js';
import type { ReadSegment } from '../../src/nbd/export.js';
import { startNbd, type NbdHarness } from '../support/nbd-harness.js';
import { haveTools, run, testIf } from '../support/oracles.js';

const MiB = 1024 * 1024;
const qemuTest = testIf(test, haveTools('qemu-io', 'qemu-img'), 'qemu-io/qemu-img not installed');

async function contents(e: MemoryExport, offset: number, length: number): Promise<Buffer> {
  const out = Buffer.alloc(length);
  for (const s of (await e.read(offset, length)) as ReadSegment[]) if (s.data) out.set(s.data, s.offset - offset);
  return out;
}

async function qemuIo(h: NbdHarness, name: string, cmds: string[], extra: string[] = []): Promise<string> {
  const args = ['-f', 'raw', ...extra, h.uri(name)];
  for (const c of cmds) args.push('-c', c);
  const r = await run('qemu-io', args, { timeoutMs: 60_000 });
  const out = r.stdout + r.stderr;
  assert.is(r.code, 0, `qemu-io exit ${r.code}: ${out}`);
  assert.not.ok(/fail|error/i.test(out), out);
  return out;
}

qemuTest('qemu-io: patterns, write -z, aio, discard, flush; contents land in the export', async () => {
  const disk = new MemoryExport({ name: 'disk', size: 64 * MiB });
  const h = await startNbd([disk]);
  try {
    await qemuIo(h, 'disk', [
      'write -P 0xab 0 64k',
      'read -P 0xab 0 64k',
      'write -z 64k 64k',
      'read -P 0 64k 64k',
      'write -P 0x5a 1M 4k',
      'aio_write -P 0x11 2M 4k',
      'aio_write -P 0x22 3M 128k',
      'aio_write -P 0x33 5M 1M',
      'aio_flush',
      'read -P 0x5a 1M 4k',
      'read -P 0x11 2M 4k',
      'aio_read -P 0x22 3M 128k',
      'aio_read -P 0x33 5M 1M',
      'aio_flush',
      'write -P 0x77 10M 5',
      'read -P 0x77 10M 5',
      'read -P 0 10485765 4091',
      'discard 0 4k',
      'flush',
    ]);
    assert.equal(await contents(disk, 4096, 61440), Buffer.alloc(61440, 0xab));
    assert.equal(await contents(disk, 3 * MiB, 128 * 1024), Buffer.alloc(128 * 1024, 0x22));
    assert.equal(await contents(disk, 5 * MiB, MiB), Buffer.alloc(MiB, 0x33));
    const status = await disk.blockStatus(0, 8192);
    assert.equal(status[0], { length: 4096, hole: true, zero: true }, 'discard punched the first page');
    assert.ok(disk.stats.flushes >= 1 || disk.stats.fuaWrites > 0);
    assert.ok(disk.stats.writeZeroes >= 1, 'write -z used WRITE_ZEROES');
    assert.ok(disk.stats.trims >= 1, 'discard used TRIM');
    const ro = await run('qemu-io', ['-f', 'raw', '-r', h.uri('disk'), '-c', 'read -P 0x5a 1M 4k', '-c', 'read -P 0 64k 64k']);
    assert.is(ro.code, 0, ro.stdout + ro.stderr);
    const bad = await run('qemu-io', ['-f', 'raw', h.uri('disk'), '-c', 'read -P 0x12 1M 4k']);
    assert.ok(/Pattern verification failed/.test(bad.stdout + bad.stderr), 'a wrong pattern is detected (the oracle works)');
    assert.equal(h.logs, []);
  } finally {
    await h.close();
  }
});

qemuTest('qemu-io: read-only export refuses writes', async () => {
  const ro = new MemoryExport({ name: 'ro', size: 16 * MiB, readOnly: true });
  const h = await startNbd([ro]);
  try {
    const r = await run('qemu-io', ['-f', 'raw', h.uri('ro'), '-c', 'write -P 1 0 4k']);
    assert.ok(r.code !== 0 || /denied|read-only|not permitted|failed/i.test(r.stdout + r.stderr), r.stdout + r.stderr);
    assert.is(ro.stats.writes, 0);
    await qemuIo(h, 'ro', ['read -P 0 0 1M'], ['-r']);
  } finally {
    await h.close();
  }
});

qemuTest('qemu-img convert -n in and out of a 64 MiB export is byte-identical; compare and map agree', async () => {
  const disk = new MemoryExport({ name: 'disk', size: 64 * MiB });
  const h = await startNbd([disk], { defaultExport: 'disk' });
  try {
    const src = join(h.dir, 'src.raw');
    const out = join(h.dir, 'out.raw');
    const data = Buffer.alloc(64 * MiB);
    randomFillSync(data);
    data.fill(0, 8 * MiB, 12 * MiB);
    data.fill(0, 40 * MiB, 40 * MiB + 4096);
    data.fill(0, 60 * MiB);
    writeFileSync(src, data);
    const conv = await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, h.uri('disk')], { timeoutMs: 120_000 });
    assert.is(conv.code, 0, conv.stderr);
    assert.ok((await contents(disk, 0, 64 * MiB)).equals(data), 'export holds the source');
    assert.ok(disk.stats.writeZeroes > 0, 'zero ranges sent as WRITE_ZEROES');
    const back = await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', h.uri(''), out], { timeoutMs: 120_000 });
    assert.is(back.code, 0, back.stderr);
    assert.ok(readFileSync(out).equals(data), 'round trip is byte-identical');
    const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, h.uri('disk')]);
    assert.is(cmp.code, 0, cmp.stdout + cmp.stderr);
    await disk.write(30 * MiB, Buffer.from('different'), false);
    const diff = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, h.uri('disk')]);
    assert.is(diff.code, 1, 'compare notices a changed byte');
    const map = await run('qemu-img', ['map', '-f', 'raw', '--output=json', h.uri('disk')]);
    assert.is(map.code, 0, map.stderr);
    const entries = JSON.parse(map.stdout) as Array<{ start: number; length: number; data: boolean; zero: boolean }>;
    const at = (off: number) => entries.find((e) => e.start <= off && off < e.start + e.length)!;
    assert.is(at(62 * MiB).data, false);
    assert.is(at(62 * MiB).zero, true);
    assert.is(at(MiB).data, true);
    assert.is(entries.reduce((s, e) => s + e.length, 0), 64 * MiB);
    assert.equal(h.logs, []);
  } finally {
    await h.close();
  }
});

test.run();
