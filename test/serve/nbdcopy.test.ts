/**
 * nbdcopy into and out of exports of a real daemon, over one connection and several
 * (CAN_MULTI_CONN): byte-identical, sparse (exactly the blocks holding data are provisioned), and
 * what `--flush` acknowledged survives a SIGKILL of the daemon.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { randomFillSync } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Pool } from '../../src/pool/pool.js';
import { haveTools, run, testIf } from '../support/oracles.js';
import { makePool, mappedBlocksOf, nonzeroBlocksOf, startDaemon } from '../support/daemon.js';
import { Rng, testSeed } from '../support/rng.js';
import { tempDir } from '../support/tmp.js';

const K = 1024;
const M = 1024 * K;
const BS = 64 * K;
const copyTest = testIf(test, haveTools('nbdcopy'), 'nbdcopy not installed');

copyTest('nbdcopy file -> export -> file, one connection and four, export -> export: byte-identical and sparse; --flush survives SIGKILL', async () => {
  const seed = testSeed();
  const rng = new Rng(seed);
  const EXP = 128 * M;
  const SRC = 96 * M;
  const dir = await makePool({ devices: ['one', 'multi', 'copy'].map((name) => ({ name, size: EXP })) });
  const work = tempDir('thinpool-serve-copy-');
  const d = await startDaemon({ dir });
  try {
    const data = Buffer.alloc(SRC);
    for (let mb = 0; mb < SRC / M; mb++) {
      const k = rng.int(4);
      if (k === 0) continue;
      if (k === 1) randomFillSync(data, mb * M, M);
      else {
        const len = rng.range(1, 64) * 4 * K;
        randomFillSync(data, mb * M + rng.int((M - len) / 512 + 1) * 512, len);
      }
    }
    const src = join(work, 'src.img');
    await writeFile(src, data);
    const want = nonzeroBlocksOf(data, BS);
    const svc = await d.service();
    const timings: string[] = [];
    try {
      /** Runs nbdcopy while polling the daemon's status for the peak connection count per export. */
      const copy = async (args: string[], watch: string) => {
        let peak = 0;
        let running = true;
        const poll = (async () => {
          while (running) {
            const st = await svc.status();
            peak = Math.max(peak, st.exports?.find((e) => e.name === watch)?.connections ?? 0);
            await new Promise((r) => setTimeout(r, 5));
          }
        })();
        const t0 = Date.now();
        const r = await run('nbdcopy', args, { timeoutMs: 120_000 });
        timings.push(`${args.filter((a) => !a.includes('/')).join(' ')} ${watch}: ${((Date.now() - t0) / 1000).toFixed(2)} s`);
        running = false;
        await poll;
        assert.is(r.code, 0, `nbdcopy ${args.join(' ')}: ${r.stderr}`);
        return peak;
      };
      const check = async (name: string, out: string) => {
        const back = await readFile(out);
        assert.is(back.length, EXP);
        assert.ok(back.subarray(0, SRC).equals(data), `${name}: copied data is identical`);
        assert.ok(back.subarray(SRC).every((b) => b === 0), `${name}: the tail reads as zeros`);
        assert.equal(mappedBlocksOf(await svc.extents(name, 0, EXP), BS), want, `${name}: exactly the blocks holding data are provisioned`);
      };

      const p1 = await copy(['--connections=1', '--flush', src, d.uri('one')], 'one');
      assert.is(p1, 1, 'one connection');
      await copy(['--connections=1', d.uri('one'), join(work, 'one.out')], 'one');
      await check('one', join(work, 'one.out'));

      const p4 = await copy(['--connections=4', '--flush', src, d.uri('multi')], 'multi');
      assert.ok(p4 >= 2, `nbdcopy used ${p4} connections at once (CAN_MULTI_CONN)`);
      await copy(['--connections=4', d.uri('multi'), join(work, 'multi.out')], 'multi');
      await check('multi', join(work, 'multi.out'));

      await copy(['--connections=2', '--flush', d.uri('multi'), d.uri('copy')], 'copy');
      await copy([d.uri('copy'), join(work, 'copy.out')], 'copy');
      await check('copy', join(work, 'copy.out'));

      const st = await svc.status();
      assert.is(st.dataBlocks.used, 3 * want.length, 'no block provisioned beyond the data');
      assert.equal(st.exports, [], 'every nbdcopy connection is gone');
    } finally {
      await svc.close();
    }
    console.log(`nbdcopy ${SRC / M} MiB: ${timings.join('; ')}`);
    // Every copy ended with FLUSH: a daemon killed now loses none of it.
    const exit = await d.kill();
    assert.is(exit.signal, 'SIGKILL');
    const pool = await Pool.open(dir);
    try {
      for (const name of ['one', 'multi', 'copy']) {
        assert.ok((await pool.volume(name).read(0, SRC)).equals(data), `${name} after SIGKILL and reopen`);
      }
    } finally {
      await pool.close();
    }
  } catch (err) {
    console.error(`failed with THINPOOL_SEED=${seed}\n${d.log()}`);
    throw err;
  } finally {
    if (d.alive()) await d.stop();
  }
});

test.run();
