/**
 * nbdinfo against the NBD server: size and JSON over unix and TCP, --list of several exports,
 * --map showing exactly the written ranges as data, --can for writable and read-only exports.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { MemoryExport } from '../../src/nbd/memory-export.js';
import { startNbd } from '../support/nbd-harness.js';
import { haveTools, run, testIf } from '../support/oracles.js';

const MiB = 1024 * 1024;
const infoTest = testIf(test, haveTools('nbdinfo'), 'nbdinfo not installed');

interface MapEntry {
  offset: number;
  length: number;
  type: number;
  description: string;
}

infoTest('nbdinfo: plain, --size, --json, over unix and TCP', async () => {
  const disk = new MemoryExport({ name: 'disk', size: 16 * MiB, description: 'first disk' });
  const h = await startNbd([disk], { defaultExport: 'disk' });
  try {
    const plain = await run('nbdinfo', [h.uri('disk')]);
    assert.is(plain.code, 0, plain.stderr);
    assert.match(plain.stdout, 'using structured packets');
    assert.match(plain.stdout, 'block_size_maximum: 33554432');
    const size = await run('nbdinfo', ['--size', h.uri('')]);
    assert.is(size.stdout.trim(), String(16 * MiB));
    const json = JSON.parse((await run('nbdinfo', ['--json', h.uri('disk')])).stdout) as { exports: Array<Record<string, unknown>> };
    const e = json.exports[0]!;
    assert.is(e['export-name'], 'disk');
    assert.is(e['description'], 'first disk');
    assert.is(e['export-size'], 16 * MiB);
    assert.equal(e['contexts'], ['base:allocation']);
    assert.is(e['block_size_minimum'], 1);
    assert.is(e['block_size_preferred'], 4096);
    const port = await h.server.listenTcp('127.0.0.1', 0);
    const tcp = await run('nbdinfo', ['--json', `nbd://127.0.0.1:${port}/disk`]);
    assert.is(tcp.code, 0, tcp.stderr);
    assert.is((JSON.parse(tcp.stdout) as { exports: Array<Record<string, unknown>> }).exports[0]!['export-size'], 16 * MiB);
    assert.equal(h.logs, []);
  } finally {
    await h.close();
  }
});

infoTest('nbdinfo --list: several exports, and the ABORT that is not waited for is no failure', async () => {
  const exps = [
    new MemoryExport({ name: 'alpha', size: 16 * MiB, description: 'the first' }),
    new MemoryExport({ name: 'beta', size: 32 * MiB }),
    new MemoryExport({ name: 'gamma', size: MiB, readOnly: true, description: 'read only' }),
  ];
  const h = await startNbd(exps);
  try {
    for (let i = 0; i < 3; i++) {
      const r = await run('nbdinfo', ['--list', '--json', h.uri()]);
      assert.is(r.code, 0, r.stderr);
      const list = (JSON.parse(r.stdout) as { exports: Array<Record<string, unknown>> }).exports;
      assert.equal(list.map((x) => x['export-name']), ['alpha', 'beta', 'gamma']);
      assert.equal(list.map((x) => x['export-size']), [16 * MiB, 32 * MiB, MiB]);
      assert.is(list[0]!['description'], 'the first');
      assert.is(list[2]!['is_read_only'], true);
    }
    const text = await run('nbdinfo', ['--list', h.uri('beta')]);
    assert.is(text.code, 0);
    assert.match(text.stdout, 'export="gamma"');
    await new Promise((r) => setTimeout(r, 50));
    assert.is(h.server.connectionCount(), 0);
    assert.equal(h.logs, [], 'EPIPE on the ABORT ack is not logged');
  } finally {
    await h.close();
  }
});

infoTest('nbdinfo --map and --map --json: exactly the written ranges are data, the rest hole,zero', async () => {
  const disk = new MemoryExport({ name: 'disk', size: 64 * MiB });
  const h = await startNbd([disk]);
  try {
    const written: Array<[number, number]> = [
      [MiB, 4096],
      [4 * MiB, 256 * 1024],
      [10 * MiB + 8192, 3 * 4096],
      [64 * MiB - 4096, 4096],
    ];
    for (const [o, l] of written) await disk.write(o, Buffer.alloc(l, 0x42), false);
    await disk.writeZeroes(20 * MiB, MiB, { noHole: true, fastZero: false, fua: false });
    const expect: MapEntry[] = [];
    let pos = 0;
    const add = (end: number, type: number, description: string) => {
      if (end > pos) expect.push({ offset: pos, length: end - pos, type, description });
      pos = end;
    };
    const data = [...written.map(([o, l]) => [o, l, 0, 'data'] as const), [20 * MiB, MiB, 2, 'zero'] as const].sort((a, b) => a[0] - b[0]);
    for (const [o, l, t, d] of data) {
      add(o, 3, 'hole,zero');
      add(o + l, t, d);
    }
    add(64 * MiB, 3, 'hole,zero');
    const json = await run('nbdinfo', ['--map', '--json', h.uri('disk')]);
    assert.is(json.code, 0, json.stderr);
    assert.equal(JSON.parse(json.stdout), expect);
    const text = await run('nbdinfo', ['--map', h.uri('disk')]);
    assert.is(text.code, 0, text.stderr);
    const rows = text.stdout.trim().split('\n').map((l) => l.trim().split(/\s+/));
    assert.equal(rows.map((r) => [Number(r[0]), Number(r[1]), Number(r[2]), r[3]]), expect.map((e) => [e.offset, e.length, e.type, e.description]));
    const totals = await run('nbdinfo', ['--map', '--totals', h.uri('disk')]);
    assert.is(totals.code, 0);
    assert.match(totals.stdout, String(4096 + 256 * 1024 + 3 * 4096 + 4096));
  } finally {
    await h.close();
  }
});

infoTest('nbdinfo --can: flags for writable and read-only exports', async () => {
  const h = await startNbd([new MemoryExport({ name: 'rw', size: 16 * MiB }), new MemoryExport({ name: 'ro', size: 16 * MiB, readOnly: true })]);
  try {
    const can = async (what: string, name: string) => (await run('nbdinfo', ['--can', what, h.uri(name)])).code;
    const features = ['flush', 'fua', 'trim', 'zero', 'fast-zero', 'df', 'multi-conn', 'cache', 'structured-reply', 'read', 'write'];
    for (const f of features) assert.is(await can(f, 'rw'), 0, `rw can ${f}`);
    assert.is(await can('read-only', 'rw'), 2);
    const ro = { 'read-only': 0, flush: 0, df: 0, 'multi-conn': 0, cache: 0, read: 0, fua: 2, trim: 2, zero: 2, 'fast-zero': 2, write: 2 } as Record<string, number>;
    for (const [f, code] of Object.entries(ro)) assert.is(await can(f, 'ro'), code, `ro --can ${f}`);
  } finally {
    await h.close();
  }
});

test.run();
