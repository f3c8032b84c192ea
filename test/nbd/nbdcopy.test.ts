/**
 * nbdcopy through the NBD server: a file copied into an export and back out is byte-identical,
 * over one connection and several, and between two servers.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { randomFillSync } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { NbdExport } from '../../src/nbd/export.js';
import { MemoryExport } from '../../src/nbd/memory-export.js';
import { startNbd, waitFor } from '../support/nbd-harness.js';
import { haveTools, run, testIf } from '../support/oracles.js';

const MiB = 1024 * 1024;
const copyTest = testIf(test, haveTools('nbdcopy'), 'nbdcopy not installed');

copyTest('nbdcopy file -> export -> file is byte-identical, over several connections', async () => {
  const disk = new MemoryExport({ name: 'disk', size: 64 * MiB });
  const h = await startNbd([disk]);
  let live = 0;
  let peak = 0;
  let total = 0;
  const attach = h.provider.attach.bind(h.provider);
  h.provider.attach = (exp: NbdExport) => {
    const release = attach(exp);
    live++;
    total++;
    peak = Math.max(peak, live);
    return () => {
      live--;
      release();
    };
  };
  try {
    const src = join(h.dir, 'src.img');
    const out = join(h.dir, 'out.img');
    const data = Buffer.alloc(48 * MiB);
    randomFillSync(data);
    data.fill(0, 4 * MiB, 9 * MiB);
    data.fill(0, 30 * MiB, 30 * MiB + 65536);
    writeFileSync(src, data);
    const put = await run('nbdcopy', ['--connections=4', '--flush', src, h.uri('disk')], { timeoutMs: 120_000 });
    assert.is(put.code, 0, put.stderr);
    assert.ok(peak >= 2, `nbdcopy used ${peak} connections at once (CAN_MULTI_CONN)`);
    assert.ok(disk.stats.flushes >= 1);
    const get = await run('nbdcopy', [h.uri('disk'), out], { timeoutMs: 120_000 });
    assert.is(get.code, 0, get.stderr);
    const back = readFileSync(out);
    assert.is(back.length, 64 * MiB);
    assert.ok(back.subarray(0, data.length).equals(data), 'copied data is identical');
    assert.ok(back.subarray(data.length).every((b) => b === 0), 'the tail of the export reads as zeros');
    const st = await disk.blockStatus(50 * MiB, 14 * MiB);
    assert.equal(st, [{ length: 14 * MiB, hole: true, zero: true }], 'nothing was written past the source');
    const nul = await run('nbdcopy', [h.uri('disk'), 'null:']);
    assert.is(nul.code, 0, nul.stderr);
    assert.ok(total >= 4);
    await waitFor(() => h.server.connectionCount() === 0, 2000, 'connections closed after the copies');
    assert.equal(h.logs, []);
  } finally {
    await h.close();
  }
});

copyTest('nbdcopy export -> export between two servers', async () => {
  const a = new MemoryExport({ name: 'a', size: 16 * MiB });
  const b = new MemoryExport({ name: 'b', size: 16 * MiB });
  const data = Buffer.alloc(5 * MiB);
  randomFillSync(data);
  await a.write(3 * MiB, data, false);
  const ha = await startNbd([a]);
  const hb = await startNbd([b]);
  try {
    const r = await run('nbdcopy', [ha.uri('a'), hb.uri('b')], { timeoutMs: 60_000 });
    assert.is(r.code, 0, r.stderr);
    const segs = await b.read(0, 16 * MiB);
    const flat = Buffer.alloc(16 * MiB);
    for (const s of segs) if (s.data) flat.set(s.data, s.offset);
    assert.ok(flat.subarray(3 * MiB, 8 * MiB).equals(data));
    assert.ok(b.allocatedBytes() <= 5 * MiB + 8192, 'holes stay holes in the target');
  } finally {
    await ha.close();
    await hb.close();
  }
});

test.run();
