/**
 * The NBD fuzzer against one live server with in-memory exports: random and mutated handshakes
 * and requests never crash it or leak memory, and the good export holds exactly what the
 * well-behaved client wrote.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { MemoryExport } from '../../src/nbd/memory-export.js';
import { startNbd, waitFor } from '../support/nbd-harness.js';
import { type FuzzTarget, runFuzz } from '../support/nbd-fuzz.js';
import { testSeed } from '../support/rng.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const MAX_PAYLOAD = 256 * KiB;
const GOOD = 'good-export-that-fuzzers-never-name';
const CASES = Number(process.env.THINPOOL_FUZZ_CASES || 12_000);
const WORKERS = 6;

const target: FuzzTarget = {
  names: ['fuzz', 'fro', 'tiny', '', 'nope', 'FUZZ', 'fuzz\0', 'x'.repeat(300)],
  handshakeExports: ['fuzz', 'fuzz', 'fro', 'tiny', ''],
  sizes: { fuzz: 16 * MiB, fro: MiB, tiny: 1536, '': 16 * MiB },
  typicalPayload: MAX_PAYLOAD,
  maxPayload: MAX_PAYLOAD,
};

test(`fuzz: ${CASES} random and mutated handshakes and requests against one live server`, async () => {
  const seed = testSeed();
  const good = new MemoryExport({ name: GOOD, size: 32 * MiB });
  const h = await startNbd(
    [good, new MemoryExport({ name: 'fuzz', size: 16 * MiB }), new MemoryExport({ name: 'fro', size: MiB, readOnly: true }), new MemoryExport({ name: 'tiny', size: 1536 })],
    { defaultExport: 'fuzz', maxPayload: MAX_PAYLOAD, closeGraceMs: 500 },
  );
  const t0 = Date.now();
  try {
    const c = await h.client({ exportName: GOOD });
    const { cases, conns, model } = await runFuzz({ sock: h.sock, target, cases: CASES, workers: WORKERS, seed, good: { client: c, size: good.size } });
    for (let off = 0; off < good.size; off += MAX_PAYLOAD) {
      const got = await c.read(off, MAX_PAYLOAD);
      assert.ok(got.equals(model.subarray(off, off + MAX_PAYLOAD)), `good export differs in [${off}, ${off + MAX_PAYLOAD})`);
    }
    await c.disconnect();
    await waitFor(() => h.server.connectionCount() === 0, 5000, 'every fuzz connection closed');
    const internal = h.logs.filter((l) => l.includes('internal error'));
    assert.equal(internal, [], 'no internal errors');
    assert.ok(process.memoryUsage().rss < 1024 * MiB, `rss ${process.memoryUsage().rss}`);
    console.log(`fuzz: ${cases} cases over ${conns} connections in ${((Date.now() - t0) / 1000).toFixed(1)} s, ${h.logs.length} protocol violations logged, seed ${seed}`);
  } catch (err) {
    console.error(`fuzz failed; replay with THINPOOL_SEED=${seed}`);
    throw err;
  } finally {
    await h.close();
  }
});

test.run();
