/**
 * `thinpool pool ...` and the program as a whole, run as child processes: create (defaults and
 * options), status --json shape, extend, metadata-snap, set-transaction-id, check (clean, damage
 * -> exit 1), and the error lines and exit codes for a missing pool (3), bad sizes and flags (2),
 * a pool locked by a live process (5, then taken over at once when it dies), needs_check (6).
 * Also --help for every command, --version, and no ANSI codes on a pipe.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FileBlockFile } from '../../src/io/block-file.js';
import { BLOCK_SIZE, newBlock } from '../../src/pdata/block-manager.js';
import { ThinMetadata } from '../../src/thin/metadata.js';
import { estimateMetadataBytes } from '../../src/thin/metadata-size.js';
import { unpackSuperblock } from '../../src/thin/superblock.js';
import { cli, cliJson, cliOk } from '../support/cli.js';
import { tempDir } from '../support/tmp.js';

const root = tempDir('thinpool-cli-pool-');
let n = 0;
const newPool = () => join(root, `p${n++}`);
const pkg = JSON.parse(readFileSync(fileURLToPath(new URL('../../../package.json', import.meta.url)), 'utf8')) as { version: string };

const STATUS_KEYS = ['pool', 'transactionId', 'blockSize', 'dataBlocks', 'metadataBlocks', 'heldRoot', 'mode', 'needsCheck', 'lowWaterMark', 'autoExtend', 'hostFreeBytes', 'hostFull', 'catalog', 'outsideChanges', 'devices'];

interface Status {
  pool: string;
  transactionId: number;
  blockSize: number;
  dataBlocks: { used: number; total: number };
  metadataBlocks: { used: number; total: number };
  heldRoot: number | null;
  mode: string;
  needsCheck: boolean;
  lowWaterMark: number;
  autoExtend: { enabled: boolean; step: number; max: number };
  hostFreeBytes: number;
  hostFull: boolean;
  catalog: string;
  outsideChanges: unknown;
  devices: number;
}

async function made(args: string[] = ['--data-size', '64M']): Promise<string> {
  const dir = newPool();
  await cliOk(['pool', 'create', ...args], { pool: dir });
  return dir;
}

function oneLine(stderr: string, re: RegExp): void {
  assert.ok(stderr.endsWith('\n') && stderr.split('\n').length === 2, `one line on stderr, got ${JSON.stringify(stderr)}`);
  assert.match(stderr.trimEnd(), re);
}

test('pool create with defaults and status --json has the stable keys', async () => {
  const dir = newPool();
  const r = await cli(['pool', 'create', '--data-size', '64M'], { pool: dir });
  assert.is(r.code, 0, r.stderr);
  assert.match(r.stdout, /^created pool .*: 64\.0 MiB of data in 1024 blocks of 64\.0 KiB, .* of metadata\n$/);
  for (const f of ['metadata', 'data', 'catalog.0']) assert.ok(existsSync(join(dir, f)), f);
  const s = await cliJson<Status>(['pool', 'status'], { pool: dir });
  assert.equal(Object.keys(s), STATUS_KEYS);
  assert.is(s.pool, dir);
  assert.is(s.blockSize, 65536);
  assert.equal(s.dataBlocks, { used: 0, total: 1024 });
  assert.is(s.metadataBlocks.total, estimateMetadataBytes(1024) / 4096, 'thin_metadata_size\'s estimate for 1000 devices');
  assert.is(s.heldRoot, null);
  assert.is(s.mode, 'rw');
  assert.is(s.needsCheck, false);
  assert.is(s.lowWaterMark, 102 * 65536);
  assert.equal(s.autoExtend, { enabled: true, step: 205 * 65536, max: 4096 * 65536 });
  assert.ok(s.hostFreeBytes > 0);
  assert.is(s.hostFull, false);
  assert.is(s.catalog, 'in-sync');
  assert.is(s.devices, 0);
  const text = await cliOk(['pool', 'status'], { pool: dir });
  assert.match(text, /^pool: +\//m);
  assert.match(text, /^data: +0 B of 64\.0 MiB \(0\.0%, 0\/1024 blocks\)$/m);
  assert.match(text, /^mode: +rw$/m);
});

test('pool create options: block size, metadata size, low-water mark, auto-extend', async () => {
  const dir = newPool();
  const s = await cliJson<Status>(['pool', 'create', '--data-size', '1G', '--block-size', '128K', '--metadata-size', '8M', '--low-water-mark', '16M', '--auto-extend-step', '256M', '--auto-extend-max', '2G'], { pool: dir });
  assert.is(s.blockSize, 131072);
  assert.is(s.dataBlocks.total, 8192);
  assert.is(s.metadataBlocks.total, 2048);
  assert.is(s.lowWaterMark, 16 << 20);
  assert.equal(s.autoExtend, { enabled: true, step: 256 * 2 ** 20, max: 2 * 2 ** 30 });
  const dir2 = newPool();
  const s2 = await cliJson<Status>(['pool', 'create', '--data-size', '10M', '--no-auto-extend'], { pool: dir2 });
  assert.is(s2.autoExtend.enabled, false);
  // -p works before and after the command
  const viaFlag = await cliJson<Status>(['-p', dir2, 'pool', 'status']);
  assert.is(viaFlag.pool, dir2);
  const after = await cliJson<Status>(['pool', 'status', '-p', dir2]);
  assert.is(after.pool, dir2);
});

test('pool create: bad sizes and flags exit 2 with one line; an existing pool is refused', async () => {
  const dir = newPool();
  let r = await cli(['pool', 'create', '--data-size', '10Q'], { pool: dir });
  assert.is(r.code, 2);
  oneLine(r.stderr, /^thinpool: cannot parse --data-size '10Q': expected a number/);
  r = await cli(['pool', 'create', '--block-size', '100K'], { pool: dir });
  assert.is(r.code, 2);
  oneLine(r.stderr, /^thinpool: cannot use a block size of 102400 bytes: it must be a multiple of 64 KiB/);
  r = await cli(['pool', 'create', '--bogus'], { pool: dir });
  assert.is(r.code, 2);
  oneLine(r.stderr, /^thinpool: unknown option '--bogus' \(see 'thinpool pool create --help'\)$/);
  r = await cli(['pool', 'stats'], { pool: dir });
  assert.is(r.code, 2);
  oneLine(r.stderr, /^thinpool: unknown command 'stats' \(Did you mean status\?\)/);
  r = await cli(['pool', 'status', 'extra'], { pool: dir });
  assert.is(r.code, 2);
  oneLine(r.stderr, /^thinpool: too many arguments/);
  await cliOk(['pool', 'create', '--data-size', '16M'], { pool: dir });
  r = await cli(['pool', 'create', '--data-size', '16M'], { pool: dir });
  assert.is(r.code, 2);
  oneLine(r.stderr, /^thinpool: cannot create a pool in .*: it already holds one \((metadata|data|catalog\.[01]|catalog\.log)(, (metadata|data|catalog\.[01]|catalog\.log)){4}\)$/);
});

test('a missing pool exits 3 for every command that opens one', async () => {
  const dir = join(root, 'nothing-here');
  for (const args of [['pool', 'status'], ['pool', 'check'], ['pool', 'dump'], ['pool', 'extend', '--data-size', '1G'], ['device', 'ls'], ['device', 'create', 'x', '--size', '1M'], ['device', 'info', 'x']]) {
    const r = await cli(args, { pool: dir });
    assert.is(r.code, 3, `${args.join(' ')}: ${r.stderr}`);
    oneLine(r.stderr, /^thinpool: cannot (open pool|check) .*nothing-here: no pool there \(no metadata file\)$/);
  }
});

test('pool extend: new totals, +SIZE, refusals', async () => {
  const dir = await made(['--data-size', '64M', '--metadata-size', '2M']);
  let out = await cliOk(['pool', 'extend', '--data-size', '128M'], { pool: dir });
  assert.match(out, /^data: 64\.0 MiB -> 128\.0 MiB \(2048 blocks\); metadata: 2\.0 MiB -> 2\.0 MiB \(512 blocks\)\n$/);
  out = await cliOk(['pool', 'extend', '--data-size', '+64M', '--metadata-size', '+2M'], { pool: dir });
  assert.match(out, /-> 192\.0 MiB \(3072 blocks\); metadata: 2\.0 MiB -> 4\.0 MiB \(1024 blocks\)/);
  const s = await cliJson<Status>(['pool', 'status'], { pool: dir });
  assert.is(s.dataBlocks.total, 3072);
  assert.is(s.metadataBlocks.total, 1024);
  let r = await cli(['pool', 'extend', '--data-size', '1M'], { pool: dir });
  assert.is(r.code, 2);
  oneLine(r.stderr, /^thinpool: cannot shrink the pool's data from 3072 to 16 blocks$/);
  r = await cli(['pool', 'extend'], { pool: dir });
  assert.is(r.code, 2);
  oneLine(r.stderr, /^thinpool: cannot extend the pool: give --data-size and\/or --metadata-size$/);
});

test('pool metadata-snap reserve/release and set-transaction-id', async () => {
  const dir = await made();
  await cliOk(['device', 'create', 'a', '--size', '1M'], { pool: dir });
  const held = await cliJson<{ heldRoot: number }>(['pool', 'metadata-snap', 'reserve'], { pool: dir });
  assert.ok(held.heldRoot > 0);
  assert.is((await cliJson<Status>(['pool', 'status'], { pool: dir })).heldRoot, held.heldRoot);
  const xml = await cliOk(['pool', 'dump', '--metadata-snap'], { pool: dir });
  assert.match(xml, /^<superblock [^>]*nr_data_blocks="0">\n  <device dev_id="1"/);
  let r = await cli(['pool', 'metadata-snap', 'reserve'], { pool: dir });
  assert.is(r.code, 2, r.stderr);
  assert.match(r.stderr, /^thinpool: cannot reserve/);
  assert.is(await cliOk(['pool', 'metadata-snap', 'release'], { pool: dir }), 'released the metadata snapshot\n');
  assert.is((await cliJson<Status>(['pool', 'status'], { pool: dir })).heldRoot, null);
  r = await cli(['pool', 'metadata-snap', 'hold'], { pool: dir });
  assert.is(r.code, 2);

  assert.is(await cliOk(['pool', 'set-transaction-id', '0', '7'], { pool: dir }), 'transaction id 0 -> 7\n');
  assert.is((await cliJson<Status>(['pool', 'status'], { pool: dir })).transactionId, 7);
  r = await cli(['pool', 'set-transaction-id', '0', '8'], { pool: dir });
  assert.is(r.code, 2);
  oneLine(r.stderr, /^thinpool: cannot set the transaction id: it is 7, not 0$/);
  r = await cli(['pool', 'set-transaction-id', '7', 'x'], { pool: dir });
  assert.is(r.code, 2);
  oneLine(r.stderr, /^thinpool: cannot parse NEW 'x': expected a non-negative integer$/);
  r = await cli(['pool', 'set-transaction-id', '7'], { pool: dir });
  assert.is(r.code, 2);
  oneLine(r.stderr, /^thinpool: missing required argument 'new'/);
});

interface Report {
  ok: boolean;
  needsCheck: boolean;
  issues: Array<{ severity: string; code: string; block?: number; message: string }>;
  summary: { devices: number; mappings: number; damage: number };
}

test('pool check: clean exits 0 (text and --json); a flipped byte in a live block exits 1', async () => {
  const dir = await made();
  await cliOk(['device', 'create', 'a', '--size', '64M'], { pool: dir });
  await cliOk(['device', 'write', 'a', '--offset', '0'], { pool: dir, input: Buffer.alloc(300_000, 7) });
  await cliOk(['device', 'snapshot', 'a', 'b'], { pool: dir });
  let r = await cli(['pool', 'check'], { pool: dir });
  assert.is(r.code, 0, r.stderr);
  assert.match(r.stdout, /^transaction 0, time 1, data block size 128 sectors\n2 devices, 10 mappings; .*\nok: 0 damage, 0 leak\(s\), 0 warning\(s\)\n$/);
  const clean = await cliJson<Report>(['pool', 'check'], { pool: dir });
  assert.is(clean.ok, true);
  assert.equal(clean.issues, []);
  assert.is(clean.summary.devices, 2);

  // Flip one byte inside the data mapping root (a live block) of the closed pool.
  const path = join(dir, 'metadata');
  const img = readFileSync(path);
  const sb = unpackSuperblock(newBlock(0, img.subarray(0, BLOCK_SIZE)));
  const at = sb.dataMappingRoot * BLOCK_SIZE + 100;
  img[at] = img[at]! ^ 0xff;
  writeFileSync(path, img);
  r = await cli(['pool', 'check'], { pool: dir });
  assert.is(r.code, 1, r.stderr);
  assert.is(r.stderr, '');
  assert.match(r.stdout, new RegExp(`^damage \\[[a-z-]+\\] \\(block ${sb.dataMappingRoot}`, 'm'));
  assert.match(r.stdout, /^damaged: [1-9]\d* damage/m);
  r = await cli(['pool', 'check', '--json'], { pool: dir });
  assert.is(r.code, 1);
  const bad = JSON.parse(r.stdout) as Report;
  assert.is(bad.ok, false);
  assert.ok(bad.issues.some((i) => i.severity === 'damage' && i.block === sb.dataMappingRoot), JSON.stringify(bad.issues));
});

test('needs_check: writes exit 6, status and check still work', async () => {
  const dir = await made();
  await cliOk(['device', 'create', 'a', '--size', '1M'], { pool: dir });
  const f = await FileBlockFile.open(join(dir, 'metadata'));
  const md = await ThinMetadata.open(f);
  await md.setNeedsCheck();
  await md.close();
  await f.close();
  let r = await cli(['device', 'create', 'b', '--size', '1M'], { pool: dir });
  assert.is(r.code, 6, r.stderr);
  oneLine(r.stderr, /^thinpool: cannot create device b: needs_check is set \(run thinpool pool check\)$/);
  r = await cli(['device', 'write', 'a', '--offset', '0'], { pool: dir, input: 'x' });
  assert.is(r.code, 6, r.stderr);
  oneLine(r.stderr, /^thinpool: cannot write to a: the pool is in ro mode \(needs_check is set\)$/);
  r = await cli(['pool', 'extend', '--data-size', '1G'], { pool: dir });
  assert.is(r.code, 6);
  const s = await cliJson<Status>(['pool', 'status'], { pool: dir });
  assert.is(s.needsCheck, true);
  assert.is(s.mode, 'ro');
  assert.match(await cliOk(['pool', 'status'], { pool: dir }), /^mode: +ro \(needs_check is set\)$/m);
  r = await cli(['pool', 'check'], { pool: dir });
  assert.is(r.code, 0, 'the flag alone is not damage');
  assert.match(r.stdout, /^needs_check: the superblock flag is set$/m);
  assert.is((await cliOk(['device', 'read', 'a', '--offset', '0', '--length', '4'], { pool: dir })).length, 4, 'reads still work');
});

/** A child process that opens the pool and holds it until killed. */
async function holdPool(dir: string): Promise<ChildProcess> {
  const poolJs = new URL('../../src/pool/pool.js', import.meta.url).href;
  const code = `const { Pool } = await import(${JSON.stringify(poolJs)}); await Pool.open(${JSON.stringify(dir)}); process.stdout.write('ready\\n'); setInterval(() => {}, 1e6);`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => d.toString().includes('ready') && resolve());
    child.on('exit', (c) => reject(new Error(`holder exited ${c}`)));
  });
  return child;
}

test('a pool held by a live process: exit 5 with the holder; taken over at once when it dies', async () => {
  const dir = await made();
  const child = await holdPool(dir);
  try {
    for (const args of [['pool', 'status'], ['device', 'ls'], ['device', 'create', 'x', '--size', '1M'], ['pool', 'check'], ['pool', 'dump']]) {
      const r = await cli(args, { pool: dir });
      assert.is(r.code, 5, `${args.join(' ')}: ${r.stderr}`);
      oneLine(r.stderr, new RegExp(`^thinpool: cannot open ${dir}: locked by pid ${child.pid} on \\S+ since \\d{4}-\\d\\d-\\d\\dT\\S+$`));
    }
    const r = await cli(['pool', 'restore', '--force', '-i', '/dev/null'], { pool: dir });
    assert.is(r.code, 5, r.stderr);
  } finally {
    child.kill('SIGKILL');
    await new Promise((resolve) => child.once('exit', resolve));
  }
  const t0 = performance.now();
  const s = await cliJson<Status>(['pool', 'status'], { pool: dir });
  assert.is(s.mode, 'rw');
  assert.ok(performance.now() - t0 < 5000, 'no stale-lock wait');
});

const COMMANDS = [
  [], ['pool'], ['pool', 'create'], ['pool', 'status'], ['pool', 'extend'], ['pool', 'dump'], ['pool', 'restore'], ['pool', 'check'],
  ['pool', 'metadata-snap'], ['pool', 'metadata-snap', 'reserve'], ['pool', 'metadata-snap', 'release'], ['pool', 'set-transaction-id'],
  ['device'], ['device', 'create'], ['device', 'snapshot'], ['device', 'rm'], ['device', 'rename'], ['device', 'resize'], ['device', 'info'],
  ['device', 'ls'], ['device', 'write'], ['device', 'read'], ['device', 'discard'], ['device', 'import'], ['device', 'export'], ['device', 'delta'],
  ['demo'],
];

test('--help works for every command; --version everywhere', async () => {
  const results = await Promise.all(COMMANDS.map((c) => cli([...c, '--help'])));
  results.forEach((r, i) => {
    const c = COMMANDS[i]!;
    assert.is(r.code, 0, `${c.join(' ')} --help: ${r.stderr}`);
    assert.ok(r.stdout.startsWith(`Usage: ${['thinpool', ...c].join(' ')}`), `${c.join(' ')}: ${r.stdout.slice(0, 80)}`);
    assert.not.match(r.stdout, /\x1b\[/);
    assert.is(r.stderr, '');
  });
  for (const c of [[], ['pool', 'status'], ['device', 'import']]) {
    const r = await cli([...c, '--version']);
    assert.is(r.code, 0);
    assert.is(r.stdout, `${pkg.version}\n`);
  }
  const r = await cli(['help', 'device']);
  assert.is(r.code, 0);
  assert.match(r.stdout, /^Usage: thinpool device \[options\] \[command\]/);
  const bare = await cli([]);
  assert.is(bare.code, 2, 'no command is a usage error');
  assert.match(bare.stderr, /^Usage: thinpool /);
});

test('output on a pipe: no progress bar, no ANSI codes, nothing on stderr', async () => {
  const dir = await made();
  const img = join(root, 'small.img');
  writeFileSync(img, Buffer.alloc(5 << 20, 1));
  for (const args of [['device', 'import', 'a', img], ['device', 'ls'], ['pool', 'status'], ['pool', 'check'], ['device', 'export', 'a', join(root, 'small.out')], ['pool', 'dump']]) {
    const r = await cli(args, { pool: dir });
    assert.is(r.code, 0, r.stderr);
    assert.is(r.stderr, '', `${args.join(' ')} wrote to stderr`);
    assert.not.match(r.stdout, /\x1b|\r/, `${args.join(' ')} wrote control codes`);
  }
});

test.run();
