/**
 * containerd's own snapshotter test suite (snapshots/testsuite of containerd 1.6) against
 * `thinpool snapshotter`, through containerd's proxy client over gRPC, a fresh pool per case
 * (the snapshotter makes it in the case's empty root, with the default 10 GiB ext4 base device):
 * every case passes, 128LayersMount included, and each process exits 0 on SIGTERM leaving no
 * process of its group and no mount (its attachments released). Rename is skipped by the suite
 * itself (`t.Skip` in containerd's issues.go). THINPOOL_SUITE_FS=xfs runs it on an xfs base
 * device (1 GiB). Skipped without root, go or containerd's Go sources.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { join } from 'node:path';
import { goPrograms, goProgramsUnavailable, REPO_ROOT } from '../support/go-programs.js';
import { isRoot, which } from '../support/oracles.js';
import { runSuite } from '../support/snapshotter-suite.js';

const why = !isRoot ? 'not root (the suite mounts)' : (goProgramsUnavailable() ?? (which('nbdfuse') ? null : 'nbdfuse missing (libnbd-bin)'));
if (why) {
  test.skip(`containerd snapshotter suite on thinpool [skipped: ${why}]`, () => {});
} else {
  const go = await goPrograms();
  const xfs = process.env.THINPOOL_SUITE_FS === 'xfs';
  const command = `${process.execPath} ${join(REPO_ROOT, 'dist/tools/thinpool.js')} -p {root} snapshotter --address {socket}${xfs ? ' --fs xfs --base-size 1G' : ''}`;
  const t0 = Date.now();
  const suite = await runSuite(go.snapshotterSuite, command);
  const count = (s: string) => suite.results.filter((r) => r.status === s).length;
  console.log(`thinpool snapshotter suite: ${((Date.now() - t0) / 1000).toFixed(1)} s, ${count('PASS')} passed, ${count('FAIL')} failed, ${count('SKIP')} skipped`);
  console.log(`thinpool snapshotter suite: case times ${suite.results.map((r) => `${r.name} ${r.seconds}s`).join(', ')}`);
  for (const r of suite.results) {
    if (r.status === 'SKIP') test.skip(`thinpool suite ${r.name} [skipped by containerd's suite: ${r.details || 'no reason given'}]`, () => {});
    else test(`thinpool suite ${r.name}`, () => assert.ok(r.status === 'PASS', `${r.name} failed:\n${r.details}`));
  }
  test('thinpool suite: every case ran (128LayersMount too), exit 0, no mount, nbdfuse or loop device left', async () => {
    const names = suite.results.map((r) => r.name);
    // When no case reports at all, what the suite printed is the only clue: show it.
    assert.ok(names.includes('128LayersMount'), `cases reported: ${names.join(' ') || 'none'}; exit ${suite.code}; the suite printed:\n${suite.out.slice(-4000)}`);
    assert.ok(suite.results.length >= 20, `only ${suite.results.length} cases reported:\n${suite.out.slice(-4000)}`);
    assert.equal(suite.leftover, [], 'mounts left under the suite dir');
    assert.is(suite.code, 0, suite.out.slice(-4000));
    // Other test files run at the same time: only devices under this run's own dir count.
    assert.equal(suite.loops, [], 'no loop device of the suite left');
    assert.equal(suite.processes, [], 'no nbdfuse of the suite left');
  });
}

test.run();
