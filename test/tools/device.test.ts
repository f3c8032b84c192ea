/**
 * `thinpool device ...` run as child processes: create, snapshot, rm, rename, resize, info, ls
 * (--json shapes), write/read/discard at unaligned offsets, delta, and the error lines and exit
 * codes for an unknown device (3), duplicate or bad names and bad sizes or offsets (2), and an
 * out-of-space pool (4, with reads of provisioned blocks still working and extend curing it).
 */
import { test } from 'uvu';
import type { DeviceListing } from '../../src/pool/pool.js';
import * as assert from 'uvu/assert';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cli, cliJson, cliOk } from '../support/cli.js';
import { tempDir } from '../support/tmp.js';

const root = tempDir('thinpool-cli-device-');
let n = 0;
const KiB = 1024;
const MiB = 1024 * KiB;

async function made(args: string[] = ['--data-size', '256M']): Promise<string> {
  const dir = join(root, `p${n++}`);
  await cliOk(['pool', 'create', ...args], { pool: dir });
  return dir;
}

function oneLine(stderr: string, re: RegExp): void {
  assert.ok(stderr.endsWith('\n') && stderr.split('\n').length === 2, `one line on stderr, got ${JSON.stringify(stderr)}`);
  assert.match(stderr.trimEnd(), re);
}

const LS_KEYS = ['name', 'id', 'sizeBytes', 'origin', 'mappedBlocks', 'exclusiveBlocks', 'sharedBlocks', 'creationTime', 'snapshotTime', 'transactionId', 'readOnly'];

type Listing = Omit<DeviceListing, 'transactionId' | 'readOnly'>;

test('create, snapshot, rename, resize, info, ls and rm, with their --json shapes', async () => {
  const dir = await made();
  const web = await cliJson<Record<string, unknown>>(['device', 'create', 'web', '--size', '1G'], { pool: dir });
  assert.equal(web, { name: 'web', id: 1, sizeBytes: 1 << 30, origin: null });
  assert.is(await cliOk(['device', 'create', 'db', '--size', '100M'], { pool: dir }), 'created db (id 2, 100.0 MiB)\n');
  await cliOk(['device', 'write', 'web', '--offset', '100000'], { pool: dir, input: randomBytes(200_000) });
  const snapOut = await cliOk(['device', 'snapshot', 'web', 'web-snap'], { pool: dir });
  assert.match(snapOut, /^created web-snap \(id 3\), a snapshot of web, in [\d.]+ (µs|ms|s)\n$/);
  assert.equal(await cliJson(['device', 'snapshot', 'id:3', 'snap2'], { pool: dir }), { name: 'snap2', id: 4, sizeBytes: 1 << 30, origin: 'web-snap' });
  await cliOk(['device', 'write', 'web-snap', '--offset', '1'], { pool: dir, input: 'x' });

  const ls = await cliJson<Listing[]>(['device', 'ls'], { pool: dir });
  assert.equal(ls.map((d) => Object.keys(d)), ls.map(() => LS_KEYS));
  assert.equal(ls.map((d) => [d.name, d.id, d.sizeBytes, d.origin]), [
    ['web', 1, 1 << 30, null],
    ['db', 2, 100 * MiB, null],
    ['web-snap', 3, 1 << 30, 'web'],
    ['snap2', 4, 1 << 30, 'web-snap'],
  ]);
  // 200000 bytes at 100000 map blocks 1..4 of web; the 1-byte write into unmapped block 0 of web-snap allocates one.
  const byName = Object.fromEntries(ls.map((d) => [d.name, d]));
  assert.is(byName.web!.mappedBlocks, 4);
  assert.is(byName['web-snap']!.mappedBlocks, 5);
  assert.is(byName['web-snap']!.exclusiveBlocks, 1, 'one small write allocates one block');
  assert.is(byName['web-snap']!.sharedBlocks, 4);
  assert.is(byName.web!.exclusiveBlocks, 0);

  const text = await cliOk(['device', 'ls'], { pool: dir });
  const lines = text.trimEnd().split('\n');
  assert.match(lines[0]!, /^NAME +ID +SIZE +ORIGIN +MAPPED +EXCLUSIVE +SHARED +CTIME +STIME$/);
  assert.match(lines[3]!, /^web-snap +3 +1\.0 GiB +web +320\.0 KiB +64\.0 KiB +256\.0 KiB +\d+ +\d+$/);

  assert.is(await cliOk(['device', 'rename', 'web-snap', 'web2'], { pool: dir }), 'renamed web-snap to web2\n');
  assert.is(await cliOk(['device', 'resize', 'db', '--size', '200M'], { pool: dir }), 'resized db: 100.0 MiB -> 200.0 MiB\n');
  const info = await cliJson<Listing>(['device', 'info', 'web2'], { pool: dir });
  assert.equal(Object.keys(info), LS_KEYS);
  assert.is(info.id, 3);
  assert.is(info.origin, 'web');
  assert.is((await cliJson<Listing>(['device', 'info', 'snap2'], { pool: dir })).origin, 'web2', 'origin names follow renames');
  assert.is((await cliJson<Listing>(['device', 'info', 'id:2'], { pool: dir })).sizeBytes, 200 * MiB);
  assert.match(await cliOk(['device', 'info', 'web2'], { pool: dir }), /^mapped: +320\.0 KiB \(5 blocks of 64\.0 KiB\)$/m);

  assert.is(await cliOk(['device', 'rm', 'web'], { pool: dir }), 'removed web\n');
  const after = await cliJson<Listing[]>(['device', 'ls'], { pool: dir });
  assert.equal(after.map((d) => d.name), ['db', 'web2', 'snap2']);
  assert.is(after[1]!.origin, 'web', 'a deleted origin is still named');
  // shrink discards the blocks past the end
  await cliOk(['device', 'resize', 'web2', '--size', '64K'], { pool: dir });
  assert.is((await cliJson<Listing>(['device', 'info', 'web2'], { pool: dir })).mappedBlocks, 1);
});

test('write (stdin and file), read (stdout and -o), discard: unaligned, byte-exact', async () => {
  const dir = await made();
  await cliOk(['device', 'create', 'd', '--size', '8M'], { pool: dir });
  const a = randomBytes(300_001);
  assert.is(await cliOk(['device', 'write', 'd', '--offset', '12345'], { pool: dir, input: a }), 'wrote 300001 bytes to d at offset 12345\n');
  const b = randomBytes(70_000);
  const bf = join(root, 'b.bin');
  writeFileSync(bf, b);
  await cliOk(['device', 'write', 'd', '--offset', '1M', bf], { pool: dir });
  const r = await cli(['device', 'read', 'd', '--offset', '12345', '--length', '300001'], { pool: dir });
  assert.is(r.code, 0, r.stderr);
  assert.ok(r.stdoutBytes.equals(a));
  const out = join(root, 'read.bin');
  await cliOk(['device', 'read', 'd', '--offset', String(MiB - 10), '--length', '70020', '-o', out], { pool: dir });
  assert.ok(readFileSync(out).equals(Buffer.concat([Buffer.alloc(10), b, Buffer.alloc(10)])));
  // discard: the whole blocks inside the range go, the partial ends stay
  const before = await cliJson<Listing>(['device', 'info', 'd'], { pool: dir });
  assert.is(before.mappedBlocks, 5 + 2);
  const d = await cliOk(['device', 'discard', 'd', '--offset', '100000', '--length', '200000'], { pool: dir });
  assert.is(d, 'discarded 195.3 KiB at offset 100000 of d: 2 blocks unmapped\n');
  const back = (await cli(['device', 'read', 'd', '--offset', '12345', '--length', '300001'], { pool: dir })).stdoutBytes;
  const want = Buffer.from(a);
  want.fill(0, 131072 - 12345, 262144 - 12345);
  assert.ok(back.equals(want), 'blocks 2 and 3 read as zeros, the rest unchanged');
  // a big write through stdin (several 4 MiB chunks, unaligned)
  const big = randomBytes(7 * MiB + 3);
  await cliOk(['device', 'write', 'd', '--offset', '511'], { pool: dir, input: big });
  assert.ok((await cli(['device', 'read', 'd', '--offset', '511', '--length', String(big.length)], { pool: dir })).stdoutBytes.equals(big));
});

test('delta: changed ranges in bytes (--json), --all adds the shared ones', async () => {
  const dir = await made();
  await cliOk(['device', 'create', 'base', '--size', '16M'], { pool: dir });
  await cliOk(['device', 'write', 'base', '--offset', '0'], { pool: dir, input: randomBytes(4 * MiB) });
  await cliOk(['device', 'snapshot', 'base', 'c1'], { pool: dir });
  await cliOk(['device', 'write', 'c1', '--offset', String(MiB + 5)], { pool: dir, input: 'changed' });
  await cliOk(['device', 'write', 'c1', '--offset', String(10 * MiB)], { pool: dir, input: randomBytes(100_000) });
  await cliOk(['device', 'discard', 'c1', '--offset', String(3 * MiB), '--length', String(MiB)], { pool: dir });
  const j = await cliJson<{ left: unknown; right: unknown; blockSize: number; ranges: Array<{ kind: string; offset: number; length: number }> }>(['device', 'delta', 'base', 'c1'], { pool: dir });
  assert.equal(Object.keys(j), ['left', 'right', 'blockSize', 'ranges']);
  assert.equal(j.left, { dev: 'base', id: 1 });
  assert.equal(j.right, { dev: 'c1', id: 2 });
  assert.equal(j.ranges, [
    { kind: 'different', offset: MiB, length: 64 * KiB },
    { kind: 'left_only', offset: 3 * MiB, length: MiB },
    { kind: 'right_only', offset: 10 * MiB, length: 2 * 64 * KiB },
  ]);
  const all = await cliJson<{ ranges: Array<{ kind: string }> }>(['device', 'delta', 'base', 'c1', '--all'], { pool: dir });
  assert.equal(all.ranges.map((r) => r.kind), ['same', 'different', 'same', 'left_only', 'right_only']);
  const text = await cliOk(['device', 'delta', 'base', 'c1'], { pool: dir });
  assert.match(text, /^base \(id 1\) -> c1 \(id 2\): 3 changed ranges, 1\.2 MiB \(19 blocks of 64\.0 KiB\)\nKIND +OFFSET +LENGTH +END\ndifferent +1048576 +64\.0 KiB +1114112\n/);
});

test('errors: unknown device 3, duplicate or bad names 2, bad sizes, offsets and flags 2', async () => {
  const dir = await made();
  await cliOk(['device', 'create', 'a', '--size', '1M'], { pool: dir });
  const cases: Array<[string[], number, RegExp]> = [
    [['device', 'snapshot', 'web', 'x'], 3, /^thinpool: cannot snapshot web: no device named web$/],
    [['device', 'rm', 'id:99'], 3, /^thinpool: cannot remove id:99: no device with id 99$/],
    [['device', 'info', 'nope'], 3, /^thinpool: cannot show nope: no device named nope$/],
    [['device', 'rename', 'nope', 'b'], 3, /^thinpool: cannot rename nope: no device named nope$/],
    [['device', 'resize', 'nope', '--size', '1M'], 3, /^thinpool: cannot resize nope: no device named nope$/],
    [['device', 'read', 'nope', '--offset', '0', '--length', '1'], 3, /^thinpool: cannot read nope: no device named nope$/],
    [['device', 'export', 'nope', join(root, 'x.img')], 3, /^thinpool: cannot export nope: no device named nope$/],
    [['device', 'delta', 'a', 'nope'], 3, /^thinpool: cannot compare a with nope: no device named nope$/],
    [['device', 'discard', 'nope', '--offset', '0', '--length', '1'], 3, /^thinpool: cannot discard nope: no device named nope$/],
    [['device', 'create', 'a', '--size', '1M'], 2, /^thinpool: cannot create device a: a device named a exists$/],
    [['device', 'snapshot', 'a', 'a'], 2, /^thinpool: cannot snapshot a: a device named a exists$/],
    [['device', 'create', 'bad/name', '--size', '1M'], 2, /^thinpool: cannot use 'bad\/name' as a device name/],
    [['device', 'create', 'b', '--size', '1X'], 2, /^thinpool: cannot parse --size '1X': expected a number with an optional unit/],
    [['device', 'create', 'b', '--size', '1000'], 2, /^thinpool: cannot use a device size of 1000 bytes: it must be a positive multiple of 512$/],
    [['device', 'create', 'b'], 2, /^thinpool: required option '--size <size>' not specified \(see 'thinpool device create --help'\)$/],
    [['device', 'create', '--size', '1M'], 2, /^thinpool: missing required argument 'name' \(see 'thinpool device create --help'\)$/],
    [['device', 'read', 'a', '--offset', '1M', '--length', '1'], 2, /^thinpool: cannot read a: 1 bytes at offset 1048576 end past the device \(1048576 bytes\)$/],
    [['device', 'read', 'a', '--offset', 'x', '--length', '1'], 2, /^thinpool: cannot parse --offset 'x'/],
    [['device', 'discard', 'a', '--offset', '0', '--length', '2M'], 2, /^thinpool: cannot discard 2097152 bytes at offset 0 of a: outside the device \(1048576 bytes\)$/],
    [['device', 'ls', 'extra'], 2, /^thinpool: too many arguments for 'ls'/],
    [['device', 'import', 'b', join(root, 'missing.img')], 3, /^thinpool: cannot import b: .*missing\.img: no such file or directory$/],
  ];
  for (const [args, code, re] of cases) {
    const r = await cli(args, { pool: dir });
    assert.is(r.code, code, `${args.join(' ')}: ${r.stderr}`);
    oneLine(r.stderr, re);
  }
  const ls = await cliJson<Listing[]>(['device', 'ls'], { pool: dir });
  assert.equal(ls.map((d) => d.name), ['a'], 'failed commands left nothing behind');
  const w = await cli(['device', 'write', 'a', '--offset', String(MiB - 2)], { pool: dir, input: 'abc' });
  assert.is(w.code, 2);
  oneLine(w.stderr, /^thinpool: cannot write 3 bytes at offset 1048574 of a: outside the device \(1048576 bytes\)$/);
});

test('out of space: exit 4, provisioned blocks still read and write, extend cures it', async () => {
  const dir = await made(['--data-size', '1M', '--no-auto-extend']);
  await cliOk(['device', 'create', 'big', '--size', '100M'], { pool: dir });
  const first = randomBytes(512 * KiB);
  await cliOk(['device', 'write', 'big', '--offset', '0'], { pool: dir, input: first });
  let r = await cli(['device', 'write', 'big', '--offset', '1M'], { pool: dir, input: randomBytes(MiB) });
  assert.is(r.code, 4, r.stderr);
  oneLine(r.stderr, /^thinpool: cannot allocate \d+ data blocks?: the pool is out of data space \(16 blocks of 64\.0 KiB all in use\); extend it with thinpool pool extend --data-size$/);
  const img = join(root, 'two-megs.img');
  writeFileSync(img, randomBytes(2 * MiB));
  r = await cli(['device', 'import', 'more', img], { pool: dir });
  assert.is(r.code, 4, r.stderr);
  assert.match(r.stderr, /^thinpool: cannot allocate/);
  assert.equal((await cliJson<Listing[]>(['device', 'ls'], { pool: dir })).map((d) => d.name), ['big'], 'a failed import removes its device');
  r = await cli(['device', 'read', 'big', '--offset', '0', '--length', String(512 * KiB)], { pool: dir });
  assert.ok(r.stdoutBytes.equals(first), 'data written before is intact');
  await cliOk(['device', 'write', 'big', '--offset', '0'], { pool: dir, input: 'overwrite in place' });
  await cliOk(['pool', 'extend', '--data-size', '4M'], { pool: dir });
  await cliOk(['device', 'write', 'big', '--offset', '1M'], { pool: dir, input: randomBytes(MiB) });
  const s = await cliJson<{ mode: string; dataBlocks: { used: number } }>(['pool', 'status'], { pool: dir });
  assert.is(s.mode, 'rw');
});

test.run();
