/**
 * The containerd harness with containerd's own overlayfs snapshotter: a private containerd
 * imports a busybox image built with umoci, `ctr run --rm` runs a container that reads a file of
 * the image (and not the one a later layer removed) and writes a new one, `ctr snapshots ls`
 * shows one committed snapshot per layer named by its chain id; then the harness stops
 * everything with nothing left to force (no shim, mount or cgroup of the instance, no new loop
 * device, the directory gone). A second case leaves a container running and a mount in place
 * and shows stop() kills and unmounts them. Skipped without root, containerd, runc or umoci.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { buildOciImage, ociImageUnavailable, type OciImage } from '../support/oci-image.js';
import { containerdUnavailable, mountsUnder, startContainerd, type Containerd } from '../support/containerd.js';
import { run, testIf } from '../support/oracles.js';
import { tempDir } from '../support/tmp.js';

const why = containerdUnavailable() ?? ociImageUnavailable();
const t = suite('containerd harness (overlayfs)');
const it = testIf(t, why === null, why ?? '');

let image: OciImage | undefined;
async function busyboxImage(): Promise<OciImage> {
  return (image ??= await buildOciImage(tempDir('thinpool-ctd-img-'), {
    tag: 'overlay',
    layers: [
      { busybox: true },
      { files: [{ path: '/data/hello.txt', content: 'hello from the image\n' }, { path: '/data/old.txt', content: 'removed by layer 3\n' }] },
      { remove: ['/data/old.txt'] },
    ],
    config: { cmd: ['/bin/sh'], env: ['PATH=/bin:/usr/bin:/sbin:/usr/sbin'] },
  }));
}

/** Everything of `ctd` that could outlive it: processes naming its directory, mounts, cgroups. */
function traces(ctd: Containerd): string[] {
  const out: string[] = [];
  for (const pid of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
      if (cmd.includes(ctd.dir)) out.push(`process ${pid}: ${cmd}`);
    } catch {
      /* exited */
    }
  }
  for (const m of mountsUnder(ctd.dir)) out.push(`mount ${m}`);
  for (const c of readdirSync('/sys/fs/cgroup')) if (existsSync(`/sys/fs/cgroup/${c}/${ctd.namespace}`)) out.push(`cgroup ${c}/${ctd.namespace}`);
  if (existsSync(ctd.dir)) out.push(`directory ${ctd.dir}`);
  return out;
}

/** Loop devices backed by files under `dir` (other test files attach their own at the same time). */
const loops = async (dir: string) => (await run('losetup', ['-a'])).stdout.split('\n').filter((l) => l.includes(dir));

it('imports a umoci image and runs a container on overlayfs; stop leaves nothing', async () => {
  const img = await busyboxImage();
  const ctd = await startContainerd();
  let stopped = false;
  try {
    const imported = await ctd.ctrOk(['images', 'import', '--snapshotter', 'overlayfs', img.archive]);
    console.log(`ctr images import: ${imported.trim()}`);
    assert.match(imported, `unpacking ${img.name} (${img.manifest})...done`);
    assert.ok((await ctd.ctrOk(['images', 'ls', '-q'])).split('\n').includes(img.name));

    const script = 'cat /data/hello.txt; test -e /data/old.txt && echo old-still-there; echo written-by-container > /data/new.txt; cat /data/new.txt; id -u';
    const r = await ctd.ctr(['run', '--rm', '--snapshotter', 'overlayfs', img.name, 'reader', 'sh', '-c', script]);
    console.log(`ctr run output:\n${r.stdout}${r.stderr}`);
    assert.is(r.code, 0, r.stderr);
    assert.is(r.stdout, 'hello from the image\nwritten-by-container\n0\n');

    const ls = await ctd.ctrOk(['snapshots', '--snapshotter', 'overlayfs', 'ls']);
    console.log(`ctr snapshots ls:\n${ls}`);
    const rows = ls.trim().split('\n').slice(1).map((l) => l.trim().split(/\s+/));
    // One committed snapshot per layer, named by chain id, each the parent of the next; the
    // container's active snapshot went with --rm.
    assert.equal(rows.map((c) => c[0]).sort(), [...img.chainIds].sort());
    for (const row of rows) {
      assert.is(row[row.length - 1], 'Committed');
      const i = img.chainIds.indexOf(row[0]!);
      assert.is(row.length === 3 ? row[1] : '', i === 0 ? '' : img.chainIds[i - 1]);
    }
    assert.is((await ctd.ctrOk(['containers', 'ls', '-q'])).trim(), '');

    const report = await ctd.stop();
    stopped = true;
    assert.equal(report, { killed: [], unmounted: [], problems: [] }, 'nothing to force after a clean run');
    assert.equal(traces(ctd), []);
    assert.equal(await loops(ctd.dir), [], 'no loop device over a file of this containerd');
  } finally {
    if (!stopped) await ctd.stop();
  }
});

it('stop() kills a running container and its shim and unmounts what they left', async () => {
  const img = await busyboxImage();
  const ctd = await startContainerd();
  try {
    await ctd.ctrOk(['images', 'import', img.archive]);
    await ctd.ctrOk(['run', '--detach', '--snapshotter', 'overlayfs', img.name, 'sleeper', 'sleep', '600']);
    const tasks = await ctd.ctrOk(['tasks', 'ls']);
    assert.match(tasks, /sleeper\s+\d+\s+RUNNING/);
    assert.ok(traces(ctd).some((l) => l.startsWith('process') && l.includes('containerd-shim-runc-v2')), 'a shim runs');
    assert.ok(mountsUnder(ctd.dir).some((m) => m.endsWith('/sleeper/rootfs')), 'the rootfs is mounted');
    // containerd dies without warning: the orderly part of stop() cannot reach it.
    process.kill(ctd.pid, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 200));
  } finally {
    const report = await ctd.stop();
    assert.ok(report.killed.length >= 2, `shim and sleep killed: ${JSON.stringify(report)}`);
    assert.ok(report.unmounted.some((m) => m.endsWith('/sleeper/rootfs')), JSON.stringify(report));
    assert.equal(traces(ctd), []);
  }
});

t.run();
