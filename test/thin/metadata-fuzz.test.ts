/**
 * Fuzzing the metadata readers: thousands of seeded mutations (bit flips, values written past a
 * fixed-up checksum into headers, nodes and bitmaps, block swaps, zeroed blocks, truncations) of
 * the metadata vectors, kernel-written images and a pool of ours with a held metadata snapshot,
 * each through open + dump + ls (live and held trees) and the checker, in a worker with a
 * per-case timeout: every reader succeeds or fails with a coded thinpool error (never a
 * TypeError, RangeError or plain Error, never a crash of the worker, never a hang), and whenever
 * thin_check 1.x reports damage our check does too (the reverse cases are counted and printed).
 * THINPOOL_META_FUZZ_CASES=N sets the number of cases (default 1200).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { readFileSync, rmSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { newHarness, provision } from '../support/thin-harness.js';
import { run, tool1x } from '../support/oracles.js';
import { blockKinds, type CaseResult } from '../support/metadata-fuzz.js';
import type { FuzzReply, FuzzRequest } from '../support/metadata-fuzz-worker.js';
import { tempDir } from '../support/tmp.js';
import { kernelVectors, readFixture, topVectors } from '../support/vectors.js';

const CASES = Number(process.env.THINPOOL_META_FUZZ_CASES || 1200);
/** Every Nth case also goes through thin_check 1.x (half a second each, eight at a time). */
const ORACLE_EVERY = Number(process.env.THINPOOL_META_FUZZ_ORACLE_EVERY || (process.env.THINPOOL_META_FUZZ_CASES ? 1 : 4));
const CASE_TIMEOUT_MS = 20_000;
const WORKER = new URL('../support/metadata-fuzz-worker.js', import.meta.url);

async function ourPool(): Promise<Uint8Array> {
  const h = await newHarness({ metadataBlocks: 512, dataBlocks: 5000 });
  await h.md.createThin(1);
  h.model.createThin(1);
  for (let i = 0; i < 700; i++) await provision(h, 1, i * 2);
  await h.md.createSnap(2, 1);
  h.model.createSnap(2, 1);
  for (let i = 0; i < 60; i++) await provision(h, 2, i * 7);
  await h.md.commit();
  await h.md.reserveMetadataSnap();
  await h.md.createThin(3);
  h.model.createThin(3);
  for (let i = 0; i < 30; i++) await provision(h, 3, i);
  await h.md.commit();
  await h.close();
  return new Uint8Array(readFileSync(h.path));
}

async function bases(): Promise<Array<{ name: string; img: Uint8Array; kinds: ReturnType<typeof blockKinds> }>> {
  const list: Array<{ name: string; img: Uint8Array }> = [];
  for (const v of topVectors()) {
    let img: Uint8Array;
    try {
      img = readFixture(`${v}.bin.gz`);
    } catch {
      img = readFixture(`${v}.bin`);
    }
    list.push({ name: v, img });
  }
  const kernel = kernelVectors();
  for (let i = 0; i < kernel.length; i += 12) list.push({ name: kernel[i]!, img: readFixture(kernel[i]!) });
  list.push({ name: 'ours (3 devices, held snapshot)', img: await ourPool() });
  return list.map((b) => ({ ...b, img: new Uint8Array(b.img), kinds: blockKinds(b.img) }));
}

type Base = Awaited<ReturnType<typeof bases>>[number];

/**
 * Runs the cases in a worker, one at a time; a case that does not answer within the timeout is a
 * hang (the worker is replaced and the rest go on).
 */
async function inWorker(bs: Base[], requests: FuzzRequest[], scratchDir: string): Promise<{ results: CaseResult[]; bugs: string[]; hangs: string[] }> {
  const results: CaseResult[] = [];
  const bugs: string[] = [];
  const hangs: string[] = [];
  let next = 0;
  while (next < requests.length) {
    const w = new Worker(WORKER, { workerData: { bases: bs, scratchDir } });
    await new Promise<void>((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      let current: FuzzRequest | undefined;
      let done = false;
      const finish = (hung: boolean) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        if (hung) void w.terminate().then(() => resolve());
        else {
          // The worker leaves by itself once its port closes; one that keeps a handle open would
          // hang the test, so it is terminated after a grace period (terminating a busy worker
          // at once aborted Node 20 under load).
          const grace = setTimeout(() => void w.terminate(), 10_000);
          w.once('exit', () => {
            clearTimeout(grace);
            resolve();
          });
          w.postMessage('done');
        }
      };
      const send = () => {
        if (next >= requests.length) return finish(false);
        current = requests[next++]!;
        w.postMessage(current);
        clearTimeout(timer);
        timer = setTimeout(() => {
          hangs.push(`${bs[current!.base]!.name} #${current!.seed}`);
          finish(true);
        }, CASE_TIMEOUT_MS);
      };
      w.on('message', (m: FuzzReply) => {
        if (m.error) bugs.push(`case ${m.i}: harness: ${m.error}`);
        if (m.result) {
          results.push(m.result);
          for (const [what, o] of [['open/dump/ls', m.result.open], ['check', m.result.check]] as const) {
            if (o.r === 'bug') bugs.push(`${m.result.what}: ${what}: ${o.error}`);
          }
        }
        send();
      });
      w.on('error', (err) => {
        bugs.push(`${current ? `${bs[current.base]!.name} #${current.seed}` : 'worker'}: the worker died: ${err.stack ?? String(err)}`);
        finish(true);
      });
      send();
    });
  }
  return { results, bugs, hangs };
}

test('regressions the fuzzer found: a node copied under itself (a cycle) and a space map size past the limit are coded errors', async () => {
  const cases: Array<[string, number]> = [
    // block 44 replaced by a copy of its ancestor 16: dump and ls walked the cycle forever
    ['09-three-level-btree.bin.gz', 5245],
    // the metadata space map's nr_blocks set to 2^31-1 x 3: a plain RangeError from the space map
    ['kernel/blocksize/bs-128.bin.gz', 5172],
  ];
  const bs = cases.map(([name]) => {
    const img = new Uint8Array(readFixture(name));
    return { name, img, kinds: blockKinds(img) };
  });
  const r = await inWorker(bs, cases.map(([, seed], i) => ({ i, base: i, seed, oracle: false })), tempDir('thinpool-fuzz-'));
  assert.equal(r.hangs, [], 'hangs');
  assert.equal(r.bugs, [], 'uncoded errors');
  for (const res of r.results) {
    assert.equal(res.open, { r: 'coded', code: 'ECORRUPT' }, res.what);
    assert.is(res.checkOk, false, `${res.what}: the checker finds damage`);
  }
});

test(`metadata fuzz: ${CASES} mutated images through open, dump, ls and check; compared with thin_check 1.x`, async () => {
  const bs = await bases();
  const oracle = process.env.FUZZ_NO_ORACLE ? undefined : tool1x('thin_check') ?? undefined;
  const scratchDir = tempDir('thinpool-fuzz-');
  const requests = Array.from({ length: CASES }, (_, i): FuzzRequest => ({ i, base: i % bs.length, seed: 1000 + i, oracle: !!oracle && i % ORACLE_EVERY === 0 }));
  const { results, bugs, hangs } = await inWorker(bs, requests, scratchDir);

  // thin_check 1.x on the images kept for it, several at once (it mostly waits)
  const queue = results.filter((r) => r.image);
  await Promise.all(Array.from({ length: 8 }, async () => {
    for (let r = queue.shift(); r; r = queue.shift()) {
      const out = await run(oracle!, [r.image!], { timeoutMs: 60_000 });
      r.oracle = out.code;
      // 1.x exits 64 for leaks alone ("data space map contains leaks"); 0.9 and ours pass them
      r.oracleLeaksOnly = out.code !== 0 && /contains leaks|have leaked/.test(out.stderr) && !/error|damage|corrupt|bad |missing|fail/i.test(out.stderr.replace(/Check of mappings failed/, ''));
      const agree = out.code === 0 || r.checkOk === false || (r.oracleLeaksOnly && (r.checkLeaks ?? 0) > 0);
      if (agree || !process.env.THINPOOL_KEEP_TMP) rmSync(r.image!, { force: true });
      else console.log(`  kept ${r.image}: ${r.what}\n${out.stderr}`);
    }
  }));
  const opened = results.filter((r) => r.open.r === 'ok').length;
  const ourDamage = results.filter((r) => r.checkOk === false).length;
  const compared = results.filter((r) => r.oracle !== undefined && r.checkOk !== undefined);
  const missed = compared.filter((r) => r.oracle !== 0 && r.checkOk === true && !(r.oracleLeaksOnly && (r.checkLeaks ?? 0) > 0));
  const leaksOnly = compared.filter((r) => r.oracleLeaksOnly && (r.checkLeaks ?? 0) > 0 && r.checkOk === true).length;
  const reverse = compared.filter((r) => r.oracle === 0 && r.checkOk === false);
  const oracleDamage = compared.filter((r) => r.oracle !== 0).length;
  console.log(
    `metadata fuzz: ${results.length} cases over ${bs.length} images; opened and read ${opened}; our check found damage in ${ourDamage}; ` +
      (oracle ? `thin_check 1.x found damage in ${oracleDamage} of ${compared.length}, ours missed ${missed.length}, ours only ${reverse.length} (leaks alone, which 1.x exits 64 for and ours reports as leaks: ${leaksOnly})` : 'thin_check 1.x not installed') +
      `; ${bugs.length} uncoded errors, ${hangs.length} hangs`,
  );
  for (const r of reverse.slice(0, 5)) console.log(`  ours only: ${r.what}`);
  for (const b of bugs.slice(0, 5)) console.log(`  uncoded: ${b}`);
  for (const h of hangs) console.log(`  hang: ${h}`);
  assert.equal(hangs, [], 'hangs');
  assert.equal(bugs.slice(0, 5), [], `${bugs.length} readers failed with something other than a coded error`);
  assert.equal(missed.slice(0, 5).map((r) => r.what), [], `${missed.length} cases thin_check 1.x finds damaged pass our check`);
  assert.is(results.length, CASES);
});

test.run();
