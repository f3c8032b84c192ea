/**
 * A full host file system under a served pool (a small tmpfs holds the pool): NBD writes that
 * need new space fail with ENOSPC, everything else keeps working (overwrites of provisioned
 * blocks, FLUSH, reads, every other command through the control socket), service is normal
 * again once space is freed, the daemon logs each change, and nothing flushed is lost. An import
 * that runs out of host space leaves no device behind, with or without the daemon.
 *
 * Regressions: the first failed write put the served pool in `fail` mode for good (the timer's
 * commit hit ENOSPC writing into the sparse metadata file): every later write got EPERM and every
 * command exit 6 until a restart, with nothing in the log; and a failed import's device stayed
 * (its removal could not be committed).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { NbdErr } from '../../src/nbd/protocol.js';
import { Pool } from '../../src/pool/pool.js';
import { cli } from '../support/cli.js';
import { cliHasServe, startDaemon, until } from '../support/daemon.js';
import { NbdRequestError } from '../support/nbd-client.js';
import { haveTools, isRoot, run, testIf, tool09, tool1x } from '../support/oracles.js';
import { tempDir } from '../support/tmp.js';

const MiB = 1024 * 1024;
const rootTest = testIf(test, isRoot && cliHasServe(), 'root needed to mount a small tmpfs');

/** A tmpfs of `size` mounted for the test; `done()` unmounts it. */
function smallFs(size: string): { mnt: string; done: () => void } {
  const mnt = join(tempDir('thinpool-enospc-'), 'mnt');
  mkdirSync(mnt);
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', mnt]);
  return { mnt, done: () => execFileSync('umount', ['-l', mnt]) };
}

function pattern(n: number, tag: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i += 4) b.writeUInt32LE((tag * 2654435761 + i) >>> 0, i);
  return b;
}

async function thinCheckClean(meta: string): Promise<void> {
  for (const exe of [tool09('thin_check'), tool1x('thin_check')]) {
    if (!exe) continue;
    const r = await run(exe, [meta]);
    assert.is(r.code, 0, `${exe}: ${r.stderr}${r.stdout}`);
  }
}

rootTest('served pool on a full host: ENOSPC for what does not fit, normal service once space is freed, a log line per change, nothing flushed lost', async () => {
  const fs = smallFs('10m');
  try {
    const dir = join(fs.mnt, 'pool');
    const p = await Pool.create({ dir, dataSize: 64 * MiB, metadataSize: MiB, autoExtend: false });
    await p.createDevice('a', 32 * MiB);
    await p.close();
    const model = new Map<number, Buffer>();
    const d = await startDaemon({ dir });
    try {
      const c = await d.client({ exportName: 'a' });
      // Fill the host: 1 MiB writes until one fails.
      let failedAt = -1;
      for (let i = 0; i < 32; i++) {
        const data = pattern(MiB, i);
        try {
          await c.write(i * MiB, data);
          model.set(i, data);
        } catch (err) {
          assert.instance(err, NbdRequestError);
          assert.is((err as NbdRequestError).errno, NbdErr.ENOSPC, String(err));
          failedAt = i;
          break;
        }
      }
      assert.ok(failedAt > 0, `the host filled up (first failure at MiB ${failedAt})`);
      await c.flush();
      // Past the timer's commit (1 s): the pool is still writable where it has the space.
      await new Promise((r) => setTimeout(r, 1500));
      const again = pattern(MiB, 100);
      await c.write(0, again);
      model.set(0, again);
      await c.flush();
      const more = await c.write(failedAt * MiB, pattern(MiB, 101)).then(() => 0, (e: NbdRequestError) => e.errno);
      assert.is(more, NbdErr.ENOSPC, 'a write that needs new space still fails with ENOSPC');
      assert.ok((await c.read(0, MiB)).equals(again));
      const status = await cli(['pool', 'status', '--json'], { pool: dir });
      assert.is(status.code, 0, status.stderr);
      const st = JSON.parse(status.stdout) as { mode: string; hostFull: boolean };
      assert.is(st.mode, 'rw');
      assert.is(st.hostFull, true);
      const ls = await cli(['device', 'ls'], { pool: dir });
      assert.is(ls.code, 0, `commands work: ${ls.stderr}`);
      await until(() => /host file system full/.test(d.log()), 5000, 'the daemon logs the host filling up');
      // Free space: discard the second half of what was written; the commit punches it out.
      const half = Math.floor(failedAt / 2);
      await c.trim(half * MiB, (failedAt - half) * MiB);
      for (let i = half; i < failedAt; i++) model.delete(i);
      await c.flush();
      for (let i = half; i < failedAt; i++) {
        const data = pattern(MiB, 200 + i);
        await c.write(i * MiB, data);
        model.set(i, data);
      }
      await c.flush();
      await until(() => /host file system has room again/.test(d.log()), 5000, 'the daemon logs the room coming back');
      for (const [i, data] of model) assert.ok((await c.read(i * MiB, MiB)).equals(data), `MiB ${i}`);
      await c.disconnect();
      const stop = await d.stop();
      assert.is(stop.code, 0, d.log());
      assert.not.match(d.log(), /mode rw -> fail/);
    } finally {
      if (d.alive()) await d.kill();
    }
    // Everything flushed is there after a restart, and the metadata is clean.
    const pool = await Pool.open(dir);
    try {
      const v = pool.volume('a');
      for (const [i, data] of model) assert.ok((await v.read(i * MiB, MiB)).equals(data), `MiB ${i} after the restart`);
      assert.is(pool.mode, 'rw');
    } finally {
      await pool.close();
    }
    if (haveTools('thin_check')) await thinCheckClean(join(dir, 'metadata'));
  } finally {
    fs.done();
  }
});

rootTest('an import that runs out of host space leaves no device, without and with the daemon', async () => {
  const fs = smallFs('8m');
  try {
    const dir = join(fs.mnt, 'pool');
    const p = await Pool.create({ dir, dataSize: 64 * MiB, metadataSize: MiB, autoExtend: false });
    await p.close();
    const src = join(tempDir('thinpool-enospc-'), 'big.img');
    writeFileSync(src, pattern(16 * MiB, 7));
    const r = await cli(['device', 'import', 'big', src], { pool: dir });
    assert.is(r.code, 4, r.stderr);
    assert.match(r.stderr, /host file system .* is full/);
    const ls = await cli(['device', 'ls', '--json'], { pool: dir });
    assert.is(ls.code, 0, ls.stderr);
    assert.equal(JSON.parse(ls.stdout), [], 'no device left behind');
    const d = await startDaemon({ dir });
    try {
      const r2 = await cli(['device', 'import', 'big', src], { pool: dir });
      assert.is(r2.code, 4, r2.stderr);
      const ls2 = await cli(['device', 'ls', '--json'], { pool: dir });
      assert.equal(JSON.parse(ls2.stdout), [], 'no device left behind through the daemon');
      const ok = await cli(['device', 'import', 'small', '-'], { pool: dir, input: pattern(MiB, 9) });
      assert.is(ok.code, 0, `an import that fits works: ${ok.stderr}`);
    } finally {
      await d.stop();
    }
    if (haveTools('thin_check')) await thinCheckClean(join(dir, 'metadata'));
  } finally {
    fs.done();
  }
});

test.run();
