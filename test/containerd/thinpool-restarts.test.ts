/**
 * Restarts of containerd and of `thinpool snapshotter` under it (a private containerd with the
 * snapshotter as its proxy plugin `thinpool`):
 *
 * - containerd restarted lists the same snapshots; the snapshotter stopped with SIGTERM while
 *   containers' devices are attached releases every attachment (no loop device, nbdfuse process,
 *   FUSE mount or record left) and, started again, the container created before runs;
 * - `kill -9` of the snapshotter in the middle of an image import, then `thinpool pool cleanup`:
 *   nothing leaked, every device has its record and every record its device, thin_check 0.9 and
 *   1.x clean, and the import succeeds when repeated.
 *
 * Skipped without root, containerd, runc, umoci or nbdfuse.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { ociImageUnavailable } from '../support/oci-image.js';
import { containerdUnavailable, startContainerd } from '../support/containerd.js';
import { cliJson, cliOk } from '../support/cli.js';
import { testIf, which } from '../support/oracles.js';
import { startSnapshotter } from '../support/snapshotter.js';
import { assertThinCheckClean, haveThinTools } from '../support/thin-oracle.js';
import { tempDir } from '../support/tmp.js';
import { type DeviceJson, devices, helloImage, image, leftovers, MiB, PLUGIN, reachable, snapshotDevices, status, until } from '../support/thinpool-containerd.js';

const why = containerdUnavailable() ?? ociImageUnavailable() ?? (which('nbdfuse') ? null : 'nbdfuse missing (libnbd-bin)');
const t = suite('containerd and thinpool snapshotter restarts');
const run1 = testIf(t, why === null, why ?? '');
/** THINPOOL_ONLY=substring runs only the cases whose name has it (the others count as skipped). */
const it = (name: string, fn: () => Promise<void>) =>
  process.env.THINPOOL_ONLY && !name.includes(process.env.THINPOOL_ONLY) ? t.skip(`${name} [skipped: THINPOOL_ONLY]`, fn) : run1(name, fn);

it('restarts: containerd restarted sees every snapshot; SIGTERM releases every attachment; containers run after a restart', async () => {
  const img = await helloImage();
  const dir = tempDir('thinpool-ctd-');
  const pool = join(dir, 'pool');
  const address = join(dir, 'snapshotter.sock');
  let snap = await startSnapshotter({ dir: pool, address });
  const ctd = await startContainerd({ proxyPlugins: { [PLUGIN]: address } });
  try {
    await ctd.ctrOk(['images', 'import', '--snapshotter', PLUGIN, img.archive]);
    await ctd.ctrOk(['container', 'create', '--snapshotter', PLUGIN, img.name, 'later', 'cat', '/data/hello.txt']);
    await ctd.ctrOk(['snapshots', '--snapshotter', PLUGIN, 'prepare', 'kept-active', img.chainIds[1]!]);
    const ls = await ctd.ctrOk(['snapshots', '--snapshotter', PLUGIN, 'ls']);
    await ctd.restart();
    assert.is(await ctd.ctrOk(['snapshots', '--snapshotter', PLUGIN, 'ls']), ls, 'containerd restarted lists the same snapshots');

    const attached = (await cliJson<Array<{ device: string; path: string }>>(['-p', pool, 'attachments', '--json'])).length;
    assert.ok(attached >= 2, `the container's and the prepared snapshot's devices are attached: ${attached}`);
    const exit = await snap.stop('SIGTERM');
    assert.equal(exit, { code: 0, signal: null }, snap.log());
    assert.equal(await leftovers(pool), [], 'every attachment released');
    console.log(`snapshotter SIGTERM with ${attached} devices attached: released all, exit 0`);

    snap = await startSnapshotter({ dir: pool, address });
    await reachable(ctd);
    const r = await ctd.ctr(['tasks', 'start', 'later']);
    assert.is(r.code, 0, r.stderr);
    assert.is(r.stdout, 'hello from the image\n', 'the container created before the restart runs');
    const again = await ctd.ctr(['run', '--rm', '--snapshotter', PLUGIN, img.name, 'after', 'cat', '/data/hello.txt']);
    assert.is(again.stdout, 'hello from the image\n', again.stderr);
    assert.is(await ctd.ctrOk(['snapshots', '--snapshotter', PLUGIN, 'ls']).then((s) => s.includes('kept-active')), true);
  } finally {
    await ctd.stop();
    await snap.stop().catch(() => snap.kill());
  }
  assert.equal(await leftovers(pool), []);
});

it('kill -9 of the snapshotter during an image import: pool cleanup leaves nothing, records match devices, thin_check clean, the import succeeds again', async () => {
  const layers = Array.from({ length: 6 }, (_, i) => ({ files: [{ path: `/data/layer-${i}`, content: `layer ${i} `, size: 24 * MiB }] }));
  const img = await image('layers', [{ busybox: true }, ...layers]);
  const dir = tempDir('thinpool-ctd-');
  const pool = join(dir, 'pool');
  const address = join(dir, 'snapshotter.sock');
  let snap = await startSnapshotter({ dir: pool, address });
  const ctd = await startContainerd({ proxyPlugins: { [PLUGIN]: address } });
  try {
    const importing = ctd.ctr(['images', 'import', '--snapshotter', PLUGIN, img.archive], { timeoutMs: 120_000 });
    // Kill it once a few layers are in and one is being unpacked (attached).
    await until('the import under way', async () => {
      const att = join(pool, 'run', 'attach');
      const committed = [...(await snapshotDevices(pool).catch(() => new Map<string, DeviceJson>())).values()].filter((d) => d.snapshot?.kind === 'committed').length;
      return committed >= 2 && existsSync(att) && readdirSync(att).some((f) => f.endsWith('.json'));
    }, 60_000);
    await snap.kill();
    const imp = await importing;
    console.log(`import after kill -9 of the snapshotter: exit ${imp.code}: ${imp.stderr.trim().split('\n').pop()}`);
    assert.is.not(imp.code, 0, 'the import failed with its snapshotter');
    const stale = await leftovers(pool);
    console.log(`left by the killed snapshotter: ${stale.length} (${stale.map((s) => s.split(' ')[0]).join(', ')})`);
    assert.ok(stale.length > 0, 'the kill left attachments behind');
    const cleanup = await cliOk(['-p', pool, 'pool', 'cleanup']);
    console.log(`thinpool pool cleanup:\n${cleanup}`);
    assert.equal(await leftovers(pool), [], 'no loop device, nbdfuse process, FUSE mount or record left');
    const st = await status(pool);
    assert.is(st.catalog, 'in-sync', 'every device has its record and every record its device');
    for (const d of await devices(pool)) assert.ok(d.snapshot || d.name === 'snapshots-base' || d.pendingRemoval, `device ${d.name} has a snapshot record`);
    if (haveThinTools()) await assertThinCheckClean(join(pool, 'metadata'));

    snap = await startSnapshotter({ dir: pool, address });
    await reachable(ctd);
    const again = await ctd.ctr(['images', 'import', '--snapshotter', PLUGIN, img.archive], { timeoutMs: 180_000 });
    assert.is(again.code, 0, `${again.stderr}\nsnapshotter log:\n${snap.log()}\ncontainerd log:\n${ctd.log().split("\n").slice(-40).join("\n")}`);
    const r = await ctd.ctr(['run', '--rm', '--snapshotter', PLUGIN, img.name, 'after-crash', 'sh', '-c', 'cat /data/layer-5 | head -c 8']);
    assert.is(r.stdout, 'layer 5 ', r.stderr);
    const names = (await ctd.ctrOk(['snapshots', '--snapshotter', PLUGIN, 'ls'])).trim().split('\n').slice(1).map((l) => l.split(/\s+/)[0]);
    for (const c of img.chainIds) assert.ok(names.includes(c), `layer ${c} committed`);
  } finally {
    await ctd.stop();
    await snap.stop().catch(() => snap.kill());
  }
  assert.equal(await leftovers(pool), []);
});


t.run();
