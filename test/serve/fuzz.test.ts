/**
 * The NBD fuzzer (test/support/nbd-fuzz.ts) against a live daemon serving a real thin pool:
 * thousands of random and mutated handshakes and requests on thin-backed exports (writable,
 * read-only, tiny, the default export, id:N names). The daemon stays up, logs no internal error,
 * keeps its memory bounded, stops cleanly on SIGTERM, and the good export holds every write
 * flushed before, also after reopening the pool; the metadata checks clean.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Pool } from '../../src/pool/pool.js';
import { checkMetadata } from '../../src/thin/check.js';
import { FileBlockFile } from '../../src/io/block-file.js';
import { type FuzzTarget, runFuzz } from '../support/nbd-fuzz.js';
import { makePool, startDaemon } from '../support/daemon.js';
import { testSeed } from '../support/rng.js';
import { haveThinTools, assertThinCheckClean } from '../support/thin-oracle.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GOOD = 'good-export-that-fuzzers-never-name';
const CASES = Number(process.env.THINPOOL_SERVE_FUZZ_CASES || 10_000);
const WORKERS = 6;
const READ = 256 * KiB;

// Device ids follow creation order: good 1, fuzz 2, fro 3, tiny 4.
const target: FuzzTarget = {
  names: ['fuzz', 'fro', 'tiny', '', 'nope', 'FUZZ', 'fuzz\0', 'x'.repeat(300), 'id:2', 'id:3', 'id:0', 'id:', 'id:99999999999999999999', 'id:-1', 'id:1e3'],
  handshakeExports: ['fuzz', 'fuzz', 'fro', 'tiny', '', 'id:2'],
  sizes: { fuzz: 16 * MiB, fro: MiB, tiny: 1536, '': 16 * MiB, 'id:2': 16 * MiB },
  typicalPayload: 256 * KiB,
  maxPayload: 32 * MiB,
};

async function rssOf(pid: number): Promise<number> {
  const m = /VmRSS:\s+(\d+) kB/.exec(await readFile(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * KiB : 0;
}

test(`serve fuzz: ${CASES} random and mutated handshakes and requests against a live thin-backed daemon`, async () => {
  const seed = testSeed();
  const dir = await makePool({
    devices: [
      { name: GOOD, size: 32 * MiB },
      { name: 'fuzz', size: 16 * MiB },
      { name: 'fro', size: MiB },
      { name: 'tiny', size: 1536 },
    ],
  });
  const d = await startDaemon({ dir, defaultDevice: 'fuzz', readOnly: ['fro'] });
  const t0 = Date.now();
  let model: Buffer | undefined;
  try {
    const c = await d.client({ exportName: GOOD });
    const r = await runFuzz({ sock: d.sock, target, cases: CASES, workers: WORKERS, seed, good: { client: c, size: 32 * MiB } });
    model = r.model;
    const fuzzSecs = (Date.now() - t0) / 1000;
    assert.ok(d.alive(), 'the daemon is up');
    for (let off = 0; off < model.length; off += READ) {
      const got = await c.read(off, READ);
      assert.ok(got.equals(model.subarray(off, off + READ)), `good export differs in [${off}, ${off + READ})`);
    }
    await c.disconnect();
    const rss = await rssOf(d.pid);
    assert.ok(rss < 1024 * MiB, `daemon rss ${rss}`);
    const svc = await d.service();
    try {
      const st = await svc.status();
      assert.is(st.mode, 'rw', 'the pool is still read-write');
      assert.is(st.servedBy, d.pid);
      // The read-only export took no write, whatever the fuzzer sent.
      assert.is((await svc.device('fro')).mappedBlocks, 0, 'nothing reached the read-only export');
      const rep = await svc.check();
      assert.ok(rep.ok && rep.issues.length === 0 && !rep.needsCheck, `live check: ${JSON.stringify(rep).slice(0, 2000)}`);
    } finally {
      await svc.close();
    }
    const log = d.log();
    const lines = log.split('\n').filter(Boolean);
    // Export names the fuzzer made up are quoted (JSON) in the log: blank them before looking for failures.
    const bad = lines.filter((l) => /internal error|failed:|uncaught|Error\b|at file:/i.test(l.replace(/"(?:[^"\\]|\\.)*"/g, '""')));
    assert.equal(bad, [], 'no internal errors or failed export I/O in the daemon log');
    const exit = await d.stop();
    assert.is(exit.code, 0, `daemon exit after SIGTERM: ${log.slice(-4000)}`);
    console.log(`serve fuzz: ${r.cases} cases over ${r.conns} connections in ${fuzzSecs.toFixed(1)} s, ${lines.length} log lines, daemon rss ${(rss / MiB).toFixed(0)} MiB, seed ${seed}`);
  } catch (err) {
    console.error(`serve fuzz failed; replay with THINPOOL_SEED=${seed}\ndaemon log (tail):\n${d.log().slice(-4000)}`);
    throw err;
  } finally {
    if (d.alive()) await d.stop();
  }
  // Every good write was flushed: the reopened pool has them all.
  const pool = await Pool.open(dir);
  try {
    assert.ok((await pool.volume(GOOD).read(0, model.length)).equals(model), 'good export after reopen');
    assert.is((await pool.device('fro')).mappedBlocks, 0);
  } finally {
    await pool.close();
  }
  const file = await FileBlockFile.open(join(dir, 'metadata'), { readOnly: true });
  try {
    const rep = await checkMetadata(file);
    assert.ok(rep.ok && rep.issues.length === 0, JSON.stringify(rep).slice(0, 2000));
  } finally {
    await file.close();
  }
  if (haveThinTools()) await assertThinCheckClean(join(dir, 'metadata'));
});

test.run();
