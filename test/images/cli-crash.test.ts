/**
 * A crash at the commit points of `image load` (root): a child process serves the pool (the
 * daemon's own code, no control socket) with a commit hook that SIGKILLs it at the n-th hook
 * call while it loads an image whose first layer the pool already has, so the load makes an
 * extraction snapshot, applies and commits two layers through mounts, and tags the image. After
 * each kill, before any cleanup, the pool opens with its catalog in sync with the metadata and
 * holds either exactly the old image or the old and the new one, complete; `pool cleanup` then
 * releases what the dead daemon left attached or mounted and removes the unreferenced layers,
 * extraction snapshots and blobs, leaving exactly the old or the new state (snapshots and
 * blobs), nothing attached, and metadata thin_check 0.9 and 1.x find clean. A load after a
 * crash that left the old state succeeds. `THINPOOL_IMAGE_CRASH_POINTS` (default 8, spread over
 * the load's hook calls, its last commit always included) sets how many points run; `all` runs
 * every one.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn } from 'node:child_process';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { ImageStore } from '../../src/images/image-store.js';
import { Pool } from '../../src/pool/pool.js';
import { cli } from '../support/cli.js';
import { imagesCliUnavailable, leftovers, MiB, testPool, writeLayout } from '../support/images-cli.js';
import { run, testIf } from '../support/oracles.js';
import { type TarSpec, buildTar } from '../support/tar-build.js';
import { assertThinCheckClean, haveThinTools } from '../support/thin-oracle.js';
import { tempDir } from '../support/tmp.js';

const why = imagesCliUnavailable();
const it = testIf(test, why === null, why ?? '');
const DIST = new URL('../../', import.meta.url).pathname;

const BASE_LAYER: TarSpec[] = [{ name: 'etc/', type: 'directory' }, { name: 'etc/os-release', content: 'ID=thinpool\n' }, { name: 'bin/', type: 'directory' }, { name: 'bin/tool', content: 'x'.repeat(300_000), mode: 0o755 }];
const LAYER2: TarSpec[] = [{ name: 'srv/', type: 'directory' }, { name: 'srv/app', content: 'y'.repeat(500_000) }, { name: 'etc/app.conf', content: 'port=80\n' }];
const LAYER3: TarSpec[] = [{ name: 'etc/.wh.os-release' }, { name: 'srv/log/', type: 'directory' }, { name: 'srv/log/start', content: 'started\n' }];

interface State {
  images: string[];
  snapshots: string[];
  blobs: string[];
}

/** The pool's image state, opened directly (no cleanup of any kind). */
async function stateOf(dir: string): Promise<State & { inSync: boolean; recordsMatch: boolean }> {
  const pool = await Pool.open(dir);
  try {
    const st = await pool.status();
    const ids = pool.md.deviceIds();
    const store = new ImageStore(pool);
    return {
      inSync: st.catalog === 'in-sync',
      recordsMatch: JSON.stringify(pool.catalog.devices.map((d) => d.id).sort((a, b) => a - b)) === JSON.stringify(ids),
      images: store.images().map((i) => `${i.name}=${i.manifest}`),
      snapshots: store.snapshots.list().map((s) => `${s.kind} ${s.name}`).sort(),
      blobs: (await readdir(join(dir, 'blobs', 'sha256')).catch(() => [] as string[])).sort(),
    };
  } finally {
    await pool.close();
  }
}

/** Loads `layout` as `b` in a child daemon that SIGKILLs itself at hook call `killAt` (0: never). */
function loadInChild(dir: string, layout: string, killAt: number): Promise<{ calls: number; out: string; killed: boolean }> {
  const code = `
    const { Daemon } = await import(${JSON.stringify(join(DIST, 'src/serve/daemon.js'))});
    const { imagesOf } = await import(${JSON.stringify(join(DIST, 'src/serve/images-registry.js'))});
    let calls = 0;
    const d = await Daemon.start({ dir: ${JSON.stringify(dir)}, control: false, ephemeral: true, commitIntervalMs: 0,
      openOptions: { commitHook: () => { calls++; if (calls === ${killAt}) process.kill(process.pid, 'SIGKILL'); } } });
    const base = calls;
    await imagesOf(d.pool).load(${JSON.stringify(layout)}, { names: ['b'] });
    await d.stop();
    console.log('calls ' + (calls - base) + ' base ' + base);
  `;
  const c = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  c.stdout!.on('data', (d) => (out += d));
  c.stderr!.on('data', (d) => (out += d));
  return new Promise((resolve) => c.on('exit', (_code, sig) => resolve({ calls: Number(/calls (\d+)/.exec(out)?.[1] ?? -1), out, killed: sig === 'SIGKILL' })));
}

/** Which of `n` hook calls to kill at: spread over the load, the last three (the tag's commit) always in. */
function points(n: number): number[] {
  const want = process.env.THINPOOL_IMAGE_CRASH_POINTS ?? '8';
  if (want === 'all') return Array.from({ length: n }, (_, i) => i + 1);
  const k = Math.max(3, Number(want));
  const out = new Set<number>([n - 2, n - 1, n]);
  for (let i = 0; out.size < Math.min(k, n); i++) out.add(1 + Math.round((i * (n - 1)) / Math.max(1, k - 3)));
  return [...out].filter((x) => x >= 1 && x <= n).sort((a, b) => a - b);
}

it('a SIGKILL at the commit points of image load: the old image or the new one, and pool cleanup leaves exactly that state', async () => {
  const work = tempDir('thinpool-imgcrash-');
  const layouts = join(work, 'layouts');
  const base = await buildTar(BASE_LAYER);
  await writeLayout(join(layouts, 'a'), [{ tag: 'a', layers: [base] }]);
  const [imgB] = await writeLayout(join(layouts, 'b'), [{ tag: 'b', layers: [base, await buildTar(LAYER2), await buildTar(LAYER3)] }]);
  // The template: a pool holding image a (its base device made, small).
  const t = await testPool({ baseSize: 64 * MiB, serve: false });
  await t.ok(['image', 'load', join(layouts, 'a'), '--name', 'a']);
  const old = await stateOf(t.dir);
  assert.equal(old.images.length, 1);

  const copy = async (name: string) => {
    const to = join(work, name);
    const r = await run('cp', ['-a', '--sparse=always', t.dir, to]);
    assert.is(r.code, 0, r.stderr);
    return to;
  };
  // A full run gives the new state and the number of hook calls.
  const full = await copy('full');
  const clean = await loadInChild(full, join(layouts, 'b'), 0);
  assert.ok(clean.calls > 3, clean.out);
  const neu = await stateOf(full);
  assert.equal(neu.images.length, 2, 'the load completed');
  assert.ok(neu.images.includes(`b=${imgB!.manifest}`));
  assert.equal(await leftovers(full), []);

  const tried = points(clean.calls);
  const outcomes: string[] = [];
  for (const k of tried) {
    const dir = await copy(`kill-${k}`);
    const r = await loadInChild(dir, join(layouts, 'b'), k);
    const s = await stateOf(dir);
    assert.ok(s.inSync && s.recordsMatch, `kill at ${k}: the catalog matches the metadata`);
    const isOld = JSON.stringify(s.images) === JSON.stringify(old.images);
    const isNew = JSON.stringify(s.images) === JSON.stringify(neu.images);
    assert.ok(isOld || isNew, `kill at ${k}: images ${s.images.join(', ')}`);
    if (isNew) for (const key of imgB!.chainIds) assert.ok(s.snapshots.includes(`committed ${key}`), `kill at ${k}: layer ${key} of the new image is there`);
    const leftSnapshots = s.snapshots.filter((x) => !(isOld ? old : neu).snapshots.includes(x));
    // Nobody serves the pool: cleanup releases the dead daemon's attachments and prunes.
    const c = await cli(['-p', dir, 'pool', 'cleanup', '--json']);
    assert.is(c.code, 0, c.stderr);
    const after = await stateOf(dir);
    const want = isOld ? old : neu;
    assert.equal(after.images, want.images, `kill at ${k}`);
    assert.equal(after.snapshots, want.snapshots, `kill at ${k}: cleanup left exactly the ${isOld ? 'old' : 'new'} snapshots`);
    assert.equal(after.blobs, want.blobs, `kill at ${k}: and exactly its blobs`);
    assert.equal(await leftovers(dir), [], `kill at ${k}: nothing left attached or mounted`);
    if (haveThinTools()) await assertThinCheckClean(join(dir, 'metadata'));
    outcomes.push(`${k}${r.killed ? '' : ' (not reached)'}: ${isOld ? 'old' : 'new'}${leftSnapshots.length ? `, ${leftSnapshots.length} snapshot(s) left for cleanup` : ''}`);
    if (isOld && k === tried[tried.length - 3]) {
      const again = await cli(['-p', dir, 'image', 'load', join(layouts, 'b'), '--name', 'b']);
      assert.is(again.code, 0, `a load after the crash succeeds: ${again.stderr}`);
    }
  }
  console.log(`image load: ${clean.calls} commit hook calls; killed at ${outcomes.join('; ')}`);
});

test.run();
