/**
 * containerd's own snapshotter test suite (snapshots/testsuite of containerd 1.6, from Debian's
 * Go sources) as the acceptance test of an external snapshotter: test/go/snapshotter-suite runs
 * every case through containerd's proxy client over gRPC against a fresh process of the command
 * below per case, and each Go subtest is reported here as its own pass, failure or skip. A case
 * also fails when the process does not exit 0 on SIGTERM, leaves processes of its group or
 * leaves mounts (shown here with a command that leaves a process behind).
 *
 * Today the command is containerd's native snapshotter served over gRPC (test/go/native-snapshotter),
 * which proves the harness; THINPOOL_SNAPSHOTTER_CMD overrides it. Skipped without root (the suite
 * mounts), go or containerd's Go sources.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { goPrograms, goProgramsUnavailable, type GoPrograms } from '../support/go-programs.js';
import { isRoot } from '../support/oracles.js';
import { runSuite } from '../support/snapshotter-suite.js';

/**
 * The snapshotter under test: a shell command, `{root}` and `{socket}` replaced per case. To test
 * thinpool: `node ${REPO_ROOT}dist/tools/thinpool.js snapshotter --address {socket} -p {root}`.
 */
const snapshotterCommand = (go: GoPrograms) => process.env.THINPOOL_SNAPSHOTTER_CMD ?? `${go.nativeSnapshotter} -root {root} -address {socket}`;

const why = !isRoot ? 'not root (the suite mounts)' : goProgramsUnavailable();
if (why) {
  test.skip(`containerd snapshotter suite [skipped: ${why}]`, () => {});
} else {
  const t0 = Date.now();
  const go = await goPrograms();
  const built = Date.now();
  const command = snapshotterCommand(go);
  const suite = await runSuite(go.snapshotterSuite, command);
  const secs = (ms: number) => (ms / 1000).toFixed(1);
  console.log(`snapshotter suite: command ${command}`);
  console.log(`snapshotter suite: Go programs ${go.buildSeconds ? `built in ${go.buildSeconds} s` : 'cached'} (${secs(built - t0)} s), suite ran in ${secs(Date.now() - built)} s: ${suite.results.filter((r) => r.status === 'PASS').length} passed, ${suite.results.filter((r) => r.status === 'FAIL').length} failed, ${suite.results.filter((r) => r.status === 'SKIP').length} skipped`);
  console.log(`snapshotter suite: case times ${suite.results.map((r) => `${r.name} ${r.seconds}s`).join(', ')}`);
  for (const r of suite.results) {
    if (r.status === 'SKIP') test.skip(`suite ${r.name} [skipped by containerd's suite: ${r.details || 'no reason given'}]`, () => {});
    else
      test(`suite ${r.name}`, () => {
        assert.ok(r.status === 'PASS', `${r.name} failed:\n${r.details}`);
      });
  }
  test('suite process: ran every case, exited 0, left no mounts', () => {
    assert.ok(suite.results.length >= 20, `only ${suite.results.length} cases reported:\n${suite.out.slice(-4000)}`);
    assert.equal(suite.leftover, [], 'mounts left under the suite dir');
    assert.is(suite.code, 0, suite.out.slice(-4000));
  });
  test('a case fails when its snapshotter leaves a process behind', async () => {
    const leaky = `sh -c 'sleep 300 & exec "$0" "$@"' ${go.nativeSnapshotter} -root {root} -address {socket}`;
    const r = await runSuite(go.snapshotterSuite, leaky, ['-test.run', '^TestSnapshotterSuite$/^Basic$']);
    assert.is(r.results.length, 1, r.out);
    assert.is(r.results[0]!.status, 'FAIL', r.out);
    assert.match(r.results[0]!.details, /left processes of its group running; killed/);
    assert.is.not(r.code, 0);
  });
}

test.run();
