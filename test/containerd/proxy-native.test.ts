/**
 * A private containerd with a proxy snapshotter (`[proxy_plugins.NAME] type = "snapshot"`): the
 * Go native-snapshotter server, logging every gRPC call. `ctr images import --snapshotter NAME`
 * and `ctr run --rm --snapshotter NAME` work through it, and the log shows what containerd 1.6
 * asks of a proxy snapshotter, which thinpool's snapshotter must answer the same way:
 *
 * - keys and names arrive prefixed by containerd's metadata store, `NAMESPACE/ID/KEY`: an
 *   unpack is Prepare(`NS/N/extract-NNN-XXXX sha256:CHAIN`, parent `NS/M/sha256:PARENTCHAIN`) then
 *   Commit(`NS/N+1/sha256:CHAIN`), one per layer, no Mounts call (containerd mounts Prepare's
 *   answer itself, in its own mount namespace, to apply the layer);
 * - a run is Stat(image's top chain), Prepare(`NS/N/CONTAINER`, parent it), Mounts of that key
 *   twice (the shim mounts the answer as the container's rootfs);
 * - removal is garbage collection, asynchronous: after `--rm` or `images rm` containerd Lists
 *   every snapshot of the snapshotter, Removes each one its metadata does not know (children
 *   first; any error but FAILED_PRECONDITION stops the collection), then calls Cleanup. So a
 *   snapshotter must list only snapshots containerd made through it, or they get removed;
 * - `ctr snapshots ls|usage` are List/Stat/Usage; `ctr snapshots label` is Update with the mask
 *   `labels.KEY` but containerd keeps labels not prefixed `containerd.io/snapshot/` to itself;
 * - Cleanup answering UNIMPLEMENTED (as here) is tolerated.
 *
 * Skipped without root, containerd, runc, umoci, go or containerd's Go sources.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { join } from 'node:path';
import { buildOciImage, ociImageUnavailable } from '../support/oci-image.js';
import { containerdUnavailable, startContainerd } from '../support/containerd.js';
import { goPrograms, goProgramsUnavailable, startNativeSnapshotter, type NativeSnapshotter } from '../support/go-programs.js';
import { testIf } from '../support/oracles.js';
import { tempDir } from '../support/tmp.js';

const why = containerdUnavailable() ?? ociImageUnavailable() ?? goProgramsUnavailable();
const t = suite('containerd with a proxy snapshotter (native over gRPC)');
const it = testIf(t, why === null, why ?? '');
const PLUGIN = 'nativeproxy';
const SVC = '/containerd.services.snapshots.v1.Snapshots/';

type Call = ReturnType<NativeSnapshotter['calls']>[number];
const method = (c: Call) => c.method.slice(SVC.length);
const req = (c: Call) => c.request as { key?: string; name?: string; parent?: string; labels?: Record<string, string>; info?: { name: string; labels?: Record<string, string> }; update_mask?: { paths: string[] } };

it('import, run, list, label and image removal through the proxy plugin', async () => {
  const dir = tempDir('thinpool-proxy-');
  const img = await buildOciImage(join(dir, 'image'), {
    tag: 'proxy',
    layers: [{ busybox: true }, { files: [{ path: '/data/hello.txt', content: 'through the proxy\n' }] }],
    config: { env: ['PATH=/bin:/usr/bin:/sbin:/usr/sbin'] },
  });
  const go = await goPrograms();
  const snap = await startNativeSnapshotter(go.nativeSnapshotter, join(dir, 'root'), join(dir, 'snap.sock'), { log: join(dir, 'calls.jsonl') });
  const ctd = await startContainerd({ proxyPlugins: { [PLUGIN]: snap.socket } });
  let seen = 0;
  const next = (what: string) => {
    const all = snap.calls();
    const batch = all.slice(seen);
    seen = all.length;
    console.log(`${what}: ${batch.map((c) => `${method(c)}(${[req(c).key, req(c).name ?? req(c).info?.name].filter(Boolean).join(' => ')})${c.code === 'OK' ? '' : ' -> ' + c.code}`).join(', ')}`);
    return batch;
  };
  try {
    await ctd.ctrOk(['plugins', 'ls']).then((p) => assert.match(p, new RegExp(`io\\.containerd\\.snapshotter\\.v1\\s+${PLUGIN}\\s+-\\s+ok`)));
    await ctd.ctrOk(['images', 'import', '--snapshotter', PLUGIN, img.archive]);
    const ns = ctd.namespace;
    const imported = next('ctr images import');
    assert.equal(imported.map(method), ['Prepare', 'Commit', 'Prepare', 'Commit']);
    for (const [i, chain] of img.chainIds.entries()) {
      const prep = req(imported[2 * i]!);
      const commit = req(imported[2 * i + 1]!);
      assert.match(prep.key!, new RegExp(`^${ns}/\\d+/extract-\\d+-\\S+ ${chain}$`));
      assert.is(commit.key, prep.key);
      assert.match(commit.name!, new RegExp(`^${ns}/\\d+/${chain}$`));
      assert.is(prep.parent ?? '', i === 0 ? '' : req(imported[2 * i - 1]!).name);
    }
    const top = req(imported[3]!).name!;

    const r = await ctd.ctr(['run', '--rm', '--snapshotter', PLUGIN, img.name, 'viaproxy', 'sh', '-c', 'cat /data/hello.txt; echo new > /data/new; cat /data/new']);
    assert.is(r.code, 0, r.stderr);
    assert.is(r.stdout, 'through the proxy\nnew\n');
    const ran = next('ctr run --rm');
    assert.equal(ran.map(method), ['Stat', 'Prepare', 'Mounts', 'Mounts']);
    assert.is(req(ran[0]!).key, top);
    const container = req(ran[1]!).key!;
    assert.match(container, new RegExp(`^${ns}/\\d+/viaproxy$`));
    assert.is(req(ran[1]!).parent, top);
    assert.is(req(ran[2]!).key, container);
    // --rm deletes the container's snapshot in containerd's metadata; the snapshotter's Remove
    // comes later from the garbage collector: List everything, Remove what containerd's
    // metadata does not know (children first), then Cleanup.
    const deadline = Date.now() + 10_000;
    while (!snap.calls().some((c) => method(c) === 'Cleanup') && Date.now() < deadline) await new Promise((res) => setTimeout(res, 50));
    const collected = next('garbage collection after --rm');
    assert.equal(collected.map(method), ['List', 'Remove', 'Cleanup']);
    assert.is(req(collected[1]!).key, container);
    assert.is(collected[2]!.code, 'Unimplemented');

    const ls = await ctd.ctrOk(['snapshots', '--snapshotter', PLUGIN, 'ls']);
    // ctr shows the names without containerd's prefix.
    assert.equal(ls.trim().split('\n').slice(1).map((l) => l.split(/\s+/)[0]).sort(), [...img.chainIds].sort());
    next('ctr snapshots ls');
    await ctd.ctrOk(['snapshots', '--snapshotter', PLUGIN, 'usage']);
    assert.equal([...new Set(next('ctr snapshots usage').map(method))].sort(), ['Stat', 'Usage']);

    await ctd.ctrOk(['snapshots', '--snapshotter', PLUGIN, 'label', img.chainIds[1]!, 'plain=1', 'containerd.io/snapshot/own=2']);
    const labelled = next('ctr snapshots label').filter((c) => method(c) === 'Update');
    assert.is(labelled.length, 1);
    assert.equal(req(labelled[0]!).update_mask!.paths.sort(), ['labels.containerd.io/snapshot/own', 'labels.plain']);
    assert.equal(req(labelled[0]!).info!.labels, { 'containerd.io/snapshot/own': '2' });
    assert.is(req(labelled[0]!).info!.name, req(imported[3]!).name);
    const info = JSON.parse(await ctd.ctrOk(['snapshots', '--snapshotter', PLUGIN, 'info', img.chainIds[1]!])) as { Labels: Record<string, string> };
    assert.is(info.Labels.plain, '1', 'containerd keeps the other labels itself');
    next('ctr snapshots info');

    await ctd.ctrOk(['images', 'rm', '--sync', img.name]);
    const removed = next('ctr images rm --sync');
    assert.equal(removed.filter((c) => method(c) === 'Remove').map((c) => req(c).key), [top, req(imported[1]!).name]);
    assert.equal(snap.calls().filter((c) => c.code !== 'OK' && method(c) !== 'Cleanup'), [], 'no call failed');
    assert.equal((await ctd.ctrOk(['snapshots', '--snapshotter', PLUGIN, 'ls'])).trim().split('\n').length, 1);
  } finally {
    await ctd.stop();
    await snap.stop();
  }
});

t.run();
