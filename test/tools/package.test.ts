/**
 * The npm package: `npm pack` ships the CLI (dist/src, dist/tools), the native addon's sources
 * and the README, and nothing of the tests, fixtures, benchmarks or source maps; installed
 * globally from the tarball into an empty prefix (dependencies from npm's cache where it has them, else the registry), `thinpool`
 * runs: a pool is created, a device written and read back, the check is clean, the demo runs
 * (naming the benchmark comparison it cannot run without bench/), and the native addon is either
 * built by the install script or its fallback is named once.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { haveTools, run, testIf } from '../support/oracles.js';
import { tempDir } from '../support/tmp.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const npmTest = testIf(test, haveTools('npm'), 'npm not installed');
const WARNING = 'thinpool: WARNING: native addon build failed';

/** The package's files as `npm pack` lists them (without running prepack: dist is the build of this run). */
async function packedFiles(): Promise<string[]> {
  const r = await run('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: ROOT, env: { ...process.env, npm_config_loglevel: 'error' } });
  assert.is(r.code, 0, r.stderr);
  const [info] = JSON.parse(r.stdout.slice(r.stdout.indexOf('['))) as Array<{ files: Array<{ path: string }> }>;
  return info!.files.map((f) => f.path);
}

npmTest('npm pack: the CLI, the library, the addon sources and the README; no tests, fixtures, benchmarks or maps', async () => {
  const files = await packedFiles();
  for (const want of ['package.json', 'README.md', 'dist/tools/thinpool.js', 'dist/src/pool/pool.js', 'dist/src/thin/metadata.js', 'native/binding.gyp', 'native/src/thinpool_native.c']) {
    assert.ok(files.includes(want), `${want} is packed`);
  }
  const unwanted = files.filter((f) => /^(dist\/)?(test|bench|images|docs|scripts)\//.test(f) || /fixtures|\.map$|\.ts$/.test(f) || f.startsWith('native/build'));
  assert.equal(unwanted, []);
});

npmTest('npm install -g of the tarball into an empty prefix gives a working thinpool', async () => {
  const dir = tempDir();
  const env = { ...process.env, npm_config_loglevel: 'error', npm_config_update_notifier: 'false' };
  const pack = await run('npm', ['pack', '--ignore-scripts', '--pack-destination', dir], { cwd: ROOT, env });
  assert.is(pack.code, 0, pack.stderr);
  const tgz = readdirSync(dir).find((f) => f.endsWith('.tgz'));
  assert.ok(tgz, 'a tarball');
  const prefix = join(dir, 'prefix');
  const inst = await run('npm', ['install', '-g', '--prefix', prefix, '--prefer-offline', '--no-audit', '--no-fund', join(dir, tgz!)], { env, timeoutMs: 300_000 });
  assert.is(inst.code, 0, inst.stdout + inst.stderr);
  const pkg = join(prefix, 'lib', 'node_modules', 'thinpool');
  assert.not.ok(existsSync(join(pkg, 'dist', 'test')), 'no tests installed');
  const built = existsSync(join(pkg, 'native', 'build', 'Release', 'thinpool_native.node'));
  const warnings = inst.stderr.split(WARNING).length - 1;
  assert.is(warnings, built ? 0 : 1, `addon built: ${built}; install output: ${inst.stderr}`);

  const bin = join(prefix, 'bin', 'thinpool');
  const pool = join(dir, 'pool');
  const thinpool = (args: string[], input?: string) => run(bin, ['-p', pool, ...args], input === undefined ? { env } : { env, input });
  const version = await thinpool(['--version']);
  assert.is(version.code, 0, version.stderr);
  assert.match(version.stdout, /^\d+\.\d+\.\d+/);
  for (const args of [['pool', 'create', '--data-size', '256M'], ['device', 'create', 'web', '--size', '16M']]) {
    const r = await thinpool(args);
    assert.is(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
  }
  assert.is((await thinpool(['device', 'write', 'web', '--offset', '4096', '-'], 'hello from the package')).code, 0);
  const read = await thinpool(['device', 'read', 'web', '--offset', '4096', '--length', '22']);
  assert.is(read.stdout, 'hello from the package');
  const check = await thinpool(['pool', 'check']);
  assert.is(check.code, 0, check.stdout + check.stderr);
  assert.match(check.stdout, /^ok: 0 damage/m);
  // The demo runs from the package too; the comparison, whose code (bench/) is not shipped, is named as skipped.
  const demo = await run(bin, ['demo', '--no-images'], { env: { ...env, TMPDIR: dir } });
  assert.is(demo.code, 0, demo.stdout + demo.stderr);
  assert.match(demo.stdout, /^Skipped here: images and containers: --no-images; first-write comparison: the benchmark code \(bench\/\) is not part of the installed package; run npm start in a checkout\.$/m);
});

test.run();
