/**
 * The daemon's memory stays bounded under a flood of partial WRITEs: 150 connections each send
 * the header of a 32 MiB WRITE and 4 MiB of its payload, then hold on. The daemon's RSS grows by
 * less than its NBD buffer (the daemon's default, 32 MiB, plus the small lane) and some slack, an ordinary client
 * is served during the flood, and the daemon stops cleanly afterwards.
 *
 * Regression: the same flood grew the daemon from about 70 MB to 709 MB (and to 2.6 GB with
 * 16 MiB sent per connection): every byte received was kept, with no bound across connections.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { DEFAULT_NBD_BUFFER_BYTES } from '../../src/serve/daemon.js';
import { cliHasServe, makePool, startDaemon } from '../support/daemon.js';
import { flood, rssOf, settledRss } from '../support/nbd-flood.js';
import { withTimeout } from '../support/nbd-client.js';
import { testIf } from '../support/oracles.js';

const MiB = 1024 * 1024;
const BOUND = DEFAULT_NBD_BUFFER_BYTES + DEFAULT_NBD_BUFFER_BYTES / 8; // the daemon's default NBD buffer and its small lane
const SLACK = 64 * MiB; // socket chunks of 150 paused connections, the heap's own growth

testIf(test, cliHasServe() && process.platform === 'linux', 'needs the CLI serve command and /proc')('150 connections holding partial 32 MiB WRITEs: RSS grows by less than the budget; service goes on', async () => {
  const dir = await makePool({ dataSize: 8 * 1024 * MiB, devices: [{ name: 'a', size: 1024 * MiB }] });
  const d = await startDaemon({ dir });
  try {
    await new Promise((r) => setTimeout(r, 500));
    const before = rssOf(d.pid);
    const f = await flood(d.sock, 'a', 150, 32 * MiB, 4 * MiB);
    try {
      const during = await settledRss(d.pid);
      const growth = during - before;
      console.log(`daemon RSS ${Math.round(before / 1e6)} MB -> ${Math.round(during / 1e6)} MB under the flood (growth ${Math.round(growth / 1e6)} MB)`);
      assert.ok(growth < BOUND + SLACK, `RSS grew by ${Math.round(growth / MiB)} MiB, bound ${Math.round((BOUND + SLACK) / MiB)} MiB`);
      const c = await d.client({ exportName: 'a' });
      await withTimeout(c.write(900 * MiB, Buffer.alloc(64 * 1024, 0x42)), 10_000, 'a small write during the flood');
      assert.ok((await withTimeout(c.read(900 * MiB, 64 * 1024), 10_000, 'a small read')).every((x) => x === 0x42));
      await c.disconnect();
    } finally {
      f.close();
    }
    const stop = await d.stop();
    assert.is(stop.code, 0, d.log());
  } finally {
    if (d.alive()) await d.kill();
  }
});

test.run();
