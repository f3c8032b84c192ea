/**
 * nbdinfo against a real daemon: `--list` names every device of the pool (unnamed ones as
 * `id:N`, devices created while serving at once), and `--map` reports exactly the provisioned
 * blocks as data and everything else as hole,zero, at the pool's block granularity.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { CmdFlag } from '../../src/nbd/protocol.js';
import { haveTools, run, testIf } from '../support/oracles.js';
import { addOutsideDevice, makePool, startDaemon } from '../support/daemon.js';

const K = 1024;
const M = 1024 * K;
const BS = 64 * K;
const infoTest = testIf(test, haveTools('nbdinfo'), 'nbdinfo not installed');

interface MapEntry {
  offset: number;
  length: number;
  type: number;
  description: string;
}

/** The map nbdinfo should print for a device of `size` bytes whose mapped blocks are `blocks`. */
function expectedMap(size: number, blocks: Iterable<number>): MapEntry[] {
  const mapped = new Set(blocks);
  const out: MapEntry[] = [];
  for (let b = 0; b * BS < size; b++) {
    const isData = mapped.has(b);
    const len = Math.min(BS, size - b * BS);
    const last = out[out.length - 1];
    if (last && (last.type === 0) === isData) last.length += len;
    else out.push({ offset: b * BS, length: len, type: isData ? 0 : 3, description: isData ? 'data' : 'hole,zero' });
  }
  return out;
}

function blocksOf(off: number, len: number): number[] {
  const out: number[] = [];
  for (let b = Math.floor(off / BS); b * BS < off + len; b++) out.push(b);
  return out;
}

infoTest('nbdinfo --list: every device, unnamed ones as id:N, sizes, descriptions, read-only; new devices at once', async () => {
  const dir = await makePool({ devices: [{ name: 'alpha', size: 16 * M }, { name: 'beta', size: 64 * M }, { name: 'gamma', size: M }] });
  await addOutsideDevice(dir, 9, [[3, 1000]]);
  const d = await startDaemon({ dir, readOnly: ['gamma'] });
  try {
    const list = async () => {
      const r = await run('nbdinfo', ['--list', '--json', d.uri()]);
      assert.is(r.code, 0, r.stderr);
      return (JSON.parse(r.stdout) as { exports: Array<Record<string, unknown>> }).exports;
    };
    const l1 = await list();
    assert.equal(l1.map((x) => x['export-name']), ['alpha', 'beta', 'gamma', 'id:9']);
    assert.equal(l1.map((x) => x['export-size']), [16 * M, 64 * M, M, 4 * BS]);
    assert.is(l1[0]!['description'], 'thinpool device alpha (id 1)');
    assert.is(l1[2]!['is_read_only'], true);
    assert.is(l1[0]!['is_read_only'], false);
    assert.is(l1[3]!['is_read_only'], false);
    const text = await run('nbdinfo', ['--list', d.uri('alpha')]);
    assert.is(text.code, 0, text.stderr);
    for (const n of ['alpha', 'beta', 'gamma', 'id:9']) assert.match(text.stdout, `export="${n}"`);
    // The unnamed device is served under its id name, and also named devices by id.
    const byId = await run('nbdinfo', ['--json', d.uri('id:9')]);
    assert.is(byId.code, 0, byId.stderr);
    assert.is((JSON.parse(byId.stdout) as { exports: Array<Record<string, unknown>> }).exports[0]!['export-size'], 4 * BS);
    const alphaById = await run('nbdinfo', ['--size', d.uri('id:1')]);
    assert.is(alphaById.stdout.trim(), String(16 * M));
    // A device created through the control socket while serving is listed and served at once.
    const svc = await d.service();
    try {
      await svc.createDevice('delta', 8 * M);
      await svc.snapshot('alpha', 'alpha-snap');
    } finally {
      await svc.close();
    }
    const l2 = await list();
    assert.equal(l2.map((x) => x['export-name']), ['alpha', 'beta', 'gamma', 'id:9', 'delta', 'alpha-snap']);
    const size = await run('nbdinfo', ['--size', d.uri('delta')]);
    assert.is(size.stdout.trim(), String(8 * M));
    const plain = await run('nbdinfo', ['--json', d.uri('alpha')]);
    const e = (JSON.parse(plain.stdout) as { exports: Array<Record<string, unknown>> }).exports[0]!;
    assert.equal(e['contexts'], ['base:allocation']);
    assert.is(e['block_size_minimum'], 1);
    assert.is(e['block_size_preferred'], 4096);
    assert.is(e['block_size_maximum'], 32 * M);
    assert.is(e['can_multi_conn'], true);
    assert.is(e['can_fua'], true);
    assert.is(e['can_trim'], true);
    assert.is(e['can_zero'], true);
    const missing = await run('nbdinfo', ['--size', d.uri('nope')]);
    assert.ok(missing.code !== 0, 'an unknown export is refused');
    assert.ok(d.alive());
  } finally {
    await d.stop();
  }
});

infoTest('nbdinfo --map and --map --json: the mapped blocks are data, the rest hole,zero (64 KiB granularity)', async () => {
  const SIZE = 64 * M;
  const dir = await makePool({ devices: [{ name: 'beta', size: SIZE }] });
  await addOutsideDevice(dir, 5, [[3, 2000], [4, 2001], [9, 2002]]);
  const d = await startDaemon({ dir });
  try {
    const c = await d.client({ exportName: 'beta' });
    const writes: Array<[number, number]> = [
      [M + 100, 5],
      [4 * M, 256 * K],
      [10 * M + 8 * K, 12 * K],
      [20 * M + 60 * K, 8 * K], // straddles two blocks
      [SIZE - 4 * K, 4 * K],
    ];
    const mapped = new Set<number>();
    for (const [o, l] of writes) {
      await c.write(o, Buffer.alloc(l, 0x42));
      for (const b of blocksOf(o, l)) mapped.add(b);
    }
    await c.write(30 * M, Buffer.alloc(128 * K)); // zeros onto holes provision nothing
    await c.writeZeroes(40 * M, 64 * K, CmdFlag.NO_HOLE); // NO_HOLE does
    mapped.add(640);
    await c.writeZeroes(50 * M, 64 * K); // unmapping zeroes: still a hole
    await c.flush();
    await c.disconnect();
    const expect = expectedMap(SIZE, mapped);
    assert.is(expect.filter((e) => e.type === 0).length, 6, 'the expectation has the merged runs');

    const json = await run('nbdinfo', ['--map', '--json', d.uri('beta')]);
    assert.is(json.code, 0, json.stderr);
    assert.equal(JSON.parse(json.stdout), expect);
    const text = await run('nbdinfo', ['--map', d.uri('beta')]);
    assert.is(text.code, 0, text.stderr);
    const rows = text.stdout.trim().split('\n').map((l) => l.trim().split(/\s+/));
    assert.equal(rows.map((r) => [Number(r[0]), Number(r[1]), Number(r[2]), r[3]]), expect.map((e) => [e.offset, e.length, e.type, e.description]));
    const totals = await run('nbdinfo', ['--map', '--totals', d.uri('beta')]);
    assert.is(totals.code, 0, totals.stderr);
    assert.match(totals.stdout, String(mapped.size * BS));

    // The control socket agrees.
    const svc = await d.service();
    try {
      const ext = await svc.extents('beta', 0, SIZE);
      assert.equal(ext.map((e) => [e.offset, e.length, e.mapped ? 0 : 3]), expect.map((e) => [e.offset, e.length, e.type]));
    } finally {
      await svc.close();
    }
    // A device made outside thinpool: mapped where its metadata says.
    const outside = await run('nbdinfo', ['--map', '--json', d.uri('id:5')]);
    assert.is(outside.code, 0, outside.stderr);
    assert.equal(JSON.parse(outside.stdout), expectedMap(10 * BS, [3, 4, 9]));
    assert.ok(d.alive());
  } finally {
    await d.stop();
  }
});

test.run();
