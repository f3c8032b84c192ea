/**
 * A crash at every commit point of every snapshot operation: a child process opens the pool with
 * a commit hook that SIGKILLs it at the n-th hook call (every point of every commit the operation
 * makes, the base device's format included), then the pool is reopened. Whatever the point, the
 * catalog is in sync with the metadata (no device without a record, no record without a device),
 * the snapshots are exactly those before the operation or exactly those after it, every snapshot
 * reads the data it had, and thin_check 0.9 and 1.x find the metadata clean.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { BASE_DEVICE } from '../../src/snapshots/base-device.js';
import { SnapshotStore } from '../../src/snapshots/snapshot-store.js';
import { Pool } from '../../src/pool/pool.js';
import { MiB } from '../../src/units.js';
import { run, testIf, which } from '../support/oracles.js';
import { assertThinCheckClean, haveThinTools } from '../support/thin-oracle.js';
import { tempDir } from '../support/tmp.js';

const DIST = new URL('../../', import.meta.url).pathname;
const BASE = 64 * MiB;
const MARK = 32 * MiB;

/** Copies a pool directory, holes kept (GNU cp finds them with SEEK_HOLE). */
async function cp(from: string, to: string): Promise<void> {
  const r = await run('cp', ['-a', '--sparse=always', `${from}/.`, to]);
  assert.is(r.code, 0, r.stderr);
}

/** The operations, as code run in the child with `store` (a SnapshotStore) in scope. */
const OPS: Record<string, string> = {
  'first prepare (formats the base device)': `await store.create('active', 'first', '')`,
  'prepare on a parent': `await store.create('active', 'default/9/new sha256:x', 'c1', { 'containerd.io/gc.root': 'now' })`,
  view: `await store.create('view', 'new-view', 'c1')`,
  commit: `await store.commit('c3', 'a2', { l: 'c3' })`,
  'commit of a device in use': `await store.commit('c3', 'a2', {}, { inUse: true })`,
  'remove a leaf': `await store.remove('a1')`,
  'remove a committed layer': `await store.remove('c2')`,
  'deferred remove': `await store.remove('a1', { defer: true })`,
  'finish deferred removals': `await store.finishRemovals(() => false)`,
  update: `await store.update({ name: 'c1', labels: { x: 'y' } }, ['labels.x'])`,
};

interface State {
  snapshots: Array<[string, string, string, Record<string, string>]>;
  marks: Record<string, string>;
  /** Devices whose removal waits for their release. */
  pending: number[];
}

async function stateOf(dir: string): Promise<State> {
  const pool = await Pool.open(dir);
  try {
    const st = await pool.status();
    assert.is(st.catalog, 'in-sync', 'the catalog matches the metadata');
    const ids = pool.md.deviceIds();
    assert.equal(pool.catalog.devices.map((d) => d.id).sort((a, b) => a - b), ids, 'one record per device');
    for (const d of pool.catalog.devices) assert.ok(d.snapshot || d.name === BASE_DEVICE || d.pendingRemoval, `device ${d.name} has a snapshot record`);
    const store = new SnapshotStore(pool, { baseSize: BASE });
    const marks: Record<string, string> = {};
    for (const i of store.list()) {
      marks[i.name] = (await pool.volume(store.record(i.name).name!).read(MARK, 16)).toString().replace(/\0+$/, '');
    }
    return { snapshots: store.list().map((i) => [i.name, i.kind, i.parent, i.labels]), marks, pending: pool.pendingRemovals().map((d) => d.id) };
  } finally {
    await pool.close();
  }
}

/** Runs `op` in a child; kills it at hook call `killAt` (0: never). Returns the number of hook calls. */
function runChild(dir: string, op: string, killAt: number): Promise<{ calls: number; out: string }> {
  const code = `
    const { Pool } = await import(${JSON.stringify(join(DIST, 'src/pool/pool.js'))});
    const { SnapshotStore } = await import(${JSON.stringify(join(DIST, 'src/snapshots/snapshot-store.js'))});
    let calls = 0;
    const pool = await Pool.open(${JSON.stringify(dir)}, { commitHook: () => { calls++; if (calls === ${killAt}) process.kill(process.pid, 'SIGKILL'); } });
    const store = new SnapshotStore(pool, { baseSize: ${BASE} });
    ${op};
    await pool.close();
    console.log('calls ' + calls);
  `;
  const c = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  c.stdout!.on('data', (d) => (out += d));
  c.stderr!.on('data', (d) => (out += d));
  return new Promise((resolve) => c.on('exit', () => resolve({ calls: Number(/calls (\d+)/.exec(out)?.[1] ?? -1), out })));
}

/** A pool with c1 (committed, marked) <- a1 (active), v1 (view); c2 (committed leaf); a2 (active, marked). */
async function setup(withBase: boolean): Promise<string> {
  const dir = tempDir('thinpool-snapcrash-');
  const pool = await Pool.create({ dir, dataSize: 256 * MiB });
  if (withBase) {
    const store = new SnapshotStore(pool, { baseSize: BASE });
    const mark = async (key: string, text: string) => pool.volume(store.record(key).name!).write(MARK, Buffer.from(text));
    await store.create('active', 'c1-tmp', '');
    await mark('c1-tmp', 'c1 data');
    await store.commit('c1', 'c1-tmp', { l: 'c1' });
    await store.create('active', 'a1', 'c1');
    await mark('a1', 'a1 data');
    await store.create('view', 'v1', 'c1');
    await store.create('active', 'c2-tmp', 'c1');
    await store.commit('c2', 'c2-tmp');
    await store.create('active', 'a2', '');
    await mark('a2', 'a2 data');
    await store.create('active', 'gone', 'c1');
    await store.remove('gone', { defer: true });
  }
  await pool.close();
  return dir;
}

const it = testIf(test, which('mkfs.ext4') !== null && which('debugfs') !== null, 'mkfs.ext4/debugfs missing (e2fsprogs)');

for (const [name, op] of Object.entries(OPS)) {
  it(`a crash at each commit point of: ${name}`, async () => {
    const first = name.startsWith('first');
    const template = await setup(!first);
    const before = await stateOf(template);
    // The operation without a crash: how many hook calls it makes, and the state after it.
    const clean = tempDir('thinpool-snapcrash-');
    await cp(template, clean);
    const dry = await runChild(clean, op, 0);
    assert.ok(dry.calls > 0, `the operation commits: ${dry.out}`);
    const after = await stateOf(clean);
    assert.not.equal(after, before, 'the operation changes something');
    let sawBefore = 0;
    let sawAfter = 0;
    for (let k = 1; k <= dry.calls; k++) {
      const dir = tempDir('thinpool-snapcrash-');
      await cp(template, dir);
      const r = await runChild(dir, op, k);
      assert.is(r.calls, -1, `killed at hook call ${k}: ${r.out}`);
      const got = await stateOf(dir);
      const isBefore = JSON.stringify(got) === JSON.stringify(before);
      const isAfter = JSON.stringify(got) === JSON.stringify(after);
      assert.ok(isBefore || isAfter, `killed at hook call ${k} of ${dry.calls}: neither before nor after:\n${JSON.stringify(got)}`);
      if (isBefore) sawBefore++;
      else sawAfter++;
      if (haveThinTools()) await assertThinCheckClean(join(dir, 'metadata'));
    }
    console.log(`${name}: ${dry.calls} crash points, ${sawBefore} came back as before, ${sawAfter} as after`);
  });
}

test.run();
