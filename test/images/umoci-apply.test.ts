/**
 * applyLayer against the real umoci: an image made by umoci (a busybox-static rootfs with files
 * of every kind: hard links, relative/absolute/dangling symlinks, setuid/setgid/sticky modes,
 * owners, binary and text xattrs, an empty dir, a fifo, a device node, long and non-ASCII
 * names, a mostly-zero file), a second layer from umoci's own differ (deletions, type changes,
 * content and mode changes), and a third hand-made layer with whiteouts and opaque directories
 * in both entry orders. Applying the layers one by one into a plain directory gives, after each
 * layer, exactly the tree `umoci unpack` gives: type, content, mode, owner, link targets, hard
 * links, device numbers, xattrs and mtimes of every path (directories included).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { applyLayer } from '../../src/images/layer-apply.js';
import { readImage } from '../../src/images/read-image.js';
import { isRoot, testIf } from '../support/oracles.js';
import { tempDir } from '../support/tmp.js';
import { snapshotTree, treeDifferences } from '../support/tree.js';
import { BUSYBOX, haveUmoci, unpack } from '../support/umoci.js';
import { CAP_NET_RAW, buildTaggedImage } from '../support/umoci-layers.js';

const it = testIf(test, isRoot && haveUmoci && BUSYBOX !== null, 'needs root, umoci and busybox-static');

it('layers by umoci (busybox + every file kind, umoci diff, whiteouts, opaque dirs) apply exactly as umoci unpack', async () => {
  const work = tempDir('thinpool-umoci-');
  const { layout } = await buildTaggedImage(work);

  const ours = join(work, 'ours');
  await mkdir(ours);
  const img = await readImage(layout, { ref: 'v3' });
  assert.is(img.layers.length, 3);
  try {
    for (let i = 0; i < 3; i++) {
      const summary = await applyLayer(ours, await img.openLayer(i), { layer: img.layers[i]!.descriptor.digest });
      assert.is(summary.ownersSkipped, 0);
      assert.is(summary.skippedCount, 0, JSON.stringify(summary.skipped));
      if (i === 0) {
        assert.ok(summary.files >= 10 && summary.symlinks >= 9 && summary.hardlinks === 2 && summary.fifos === 1 && summary.devices === 1, JSON.stringify(summary));
        assert.ok(summary.bytes - summary.bytesWritten >= 3 * 1024 * 1024 - 65536, 'the zero megabytes of opt/big are holes');
      }
      if (i === 1) assert.is(summary.whiteouts, 3, 'umoci wrote whiteouts for etc/hostname, home/user, usr/bin/su');
      if (i === 2) {
        assert.is(summary.opaqueDirs, 2);
        assert.is(summary.whiteouts, 4, 'su2, libx.so.1, newfile, rm; the missing path is no removal');
      }
      const ref = await unpack(layout, `v${i + 1}`, join(work, `ref-${i + 1}`));
      const diffs = treeDifferences(await snapshotTree(ref), await snapshotTree(ours), { mtimes: 'all' });
      assert.equal(diffs, [], `after layer ${i + 1}`);
    }
  } finally {
    await img.close();
  }
  const final = await snapshotTree(ours);
  assert.equal([...final.keys()].filter((p) => p.startsWith('etc/')).sort(), ['etc/after-marker', 'etc/newconf']);
  assert.is(final.get('usr/bin/ping')?.xattrs['security.capability'], CAP_NET_RAW.toString('hex'));
  assert.is(final.get('tmp/newfile')?.mode, 0o600);
  assert.ok(!final.has('usr/share/café-ünïcode.txt') && final.has('usr/share/new.txt'));
});

test.run();
