/**
 * A device an NBD client has open cannot shrink under it (NBD cannot tell a client the size
 * changed, so it would go on using bytes past the new end): `device resize` to a smaller size is
 * refused with exit 5 while a client is connected, growing works, and once the clients are
 * gone the shrink goes through. The client's bytes at the end stay readable throughout.
 *
 * Regression: the shrink went through under a connected client, whose reads past the new end
 * then met a device that no longer had those blocks.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { cli } from '../support/cli.js';
import { cliHasServe, makePool, startDaemon, until } from '../support/daemon.js';
import { testIf } from '../support/oracles.js';

const MiB = 1024 * 1024;
const cliTest = testIf(test, cliHasServe(), 'the CLI has no serve command yet');

async function sizeOf(dir: string, dev: string): Promise<number> {
  const r = await cli(['device', 'info', dev, '--json'], { pool: dir });
  assert.is(r.code, 0, r.stderr);
  return (JSON.parse(r.stdout) as { sizeBytes: number }).sizeBytes;
}

cliTest('device resize refuses to shrink an exported device (exit 5), grows it, and shrinks it once the client left', async () => {
  const dir = await makePool({ devices: [{ name: 'a', size: 16 * MiB }] });
  const d = await startDaemon({ dir });
  try {
    const c = await d.client({ exportName: 'a' });
    const tail = Buffer.alloc(MiB, 0x6b);
    await c.write(15 * MiB, tail);
    await c.flush();
    const shrink = await cli(['device', 'resize', 'a', '--size', '8M'], { pool: dir });
    assert.is(shrink.code, 5, `shrink of an exported device: ${shrink.stderr}`);
    assert.match(shrink.stderr, /^thinpool: cannot shrink a .*in use \(1 export client connected/);
    assert.is(await sizeOf(dir, 'a'), 16 * MiB, 'the size did not change');
    assert.ok((await c.read(15 * MiB, MiB)).equals(tail), 'the client still reads its tail');
    const grow = await cli(['device', 'resize', 'a', '--size', '32M'], { pool: dir });
    assert.is(grow.code, 0, `growing is harmless: ${grow.stderr}`);
    assert.is(await sizeOf(dir, 'a'), 32 * MiB);
    await c.disconnect();
    await until(async () => {
      const r = await cli(['pool', 'status', '--json'], { pool: dir });
      return (JSON.parse(r.stdout) as { exports: unknown[] }).exports.length === 0;
    }, 5000, 'the export is released');
    const again = await cli(['device', 'resize', 'a', '--size', '8M'], { pool: dir });
    assert.is(again.code, 0, again.stderr);
    assert.is(await sizeOf(dir, 'a'), 8 * MiB);
  } finally {
    await d.stop();
  }
});

test.run();
