/**
 * Zero-copy READ replies on a real pool (zero-copy-reads.ts): a reply sent by reference keeps the
 * bytes the device had when it was sent, even when the client reads it only after the blocks were
 * discarded, committed, reused by another device and written (the commit punches freed blocks out
 * of the data file before any reuse, so the new bytes land in new pages); with
 * THINPOOL_ZERO_COPY_READS=0 nothing goes by reference; reads stay right either way.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { Socket } from 'node:net';
import { hasNativeAddon } from '../../src/io/native.js';
import { Daemon } from '../../src/serve/daemon.js';
import { NbdClient, dialUnix } from '../support/nbd-client.js';
import { makePool } from '../support/daemon.js';

const KiB = 1024;
const BS = 64 * KiB;

function filled(n: number, byte: number): Buffer {
  return Buffer.alloc(n, byte);
}

async function client(d: Daemon, name: string): Promise<NbdClient> {
  return NbdClient.connect(await dialUnix(d.nbdSocket), { exportName: name });
}

async function reuseRun(zeroCopy: boolean): Promise<void> {
  const prev = process.env.THINPOOL_ZERO_COPY_READS;
  if (!zeroCopy) process.env.THINPOOL_ZERO_COPY_READS = '0';
  // 16 data blocks and no auto-extend: device b's 16 blocks must reuse the 4 that a frees.
  const dir = await makePool({ dataSize: 16 * BS, blockSize: BS, autoExtend: false, devices: [{ name: 'a', size: 16 * BS }, { name: 'b', size: 16 * BS }] });
  let d: Daemon;
  try {
    d = await Daemon.start({ dir, commitIntervalMs: 0 });
  } finally {
    if (prev === undefined) delete process.env.THINPOOL_ZERO_COPY_READS;
    else process.env.THINPOOL_ZERO_COPY_READS = prev;
  }
  try {
    const a = await client(d, 'a');
    await a.write(0, filled(4 * BS, 0x41));
    await a.flush();

    // A reader asks for those bytes and does not read the reply for now.
    const reader = await client(d, 'a');
    (reader.stream as Socket).pause();
    const before = d.nbd.stats.zeroCopyReplies;
    const pending = reader.read(0, 4 * BS);
    const deadline = Date.now() + 5000;
    while (zeroCopy && d.nbd.stats.zeroCopyReplies === before && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    await new Promise((r) => setTimeout(r, 50));
    if (zeroCopy) assert.is(d.nbd.stats.zeroCopyReplies, before + 1, 'the reply went by reference');
    else assert.is(d.nbd.stats.zeroCopyReplies, 0, 'nothing by reference when turned off');

    // Meanwhile a's blocks are discarded and committed, and b takes every block there is.
    await a.trim(0, 4 * BS);
    await a.flush();
    const b = await client(d, 'b');
    await b.write(0, filled(16 * BS, 0x42));
    await b.flush();
    assert.ok((await b.read(0, 16 * BS)).equals(filled(16 * BS, 0x42)));

    (reader.stream as Socket).resume();
    const got = await pending;
    assert.ok(got.equals(filled(4 * BS, 0x41)), `the reply kept a's bytes (first byte 0x${got[0]!.toString(16)}, ${got.filter((x) => x === 0x42).length} bytes of b's)`);
    assert.ok((await a.read(0, 4 * BS)).equals(filled(4 * BS, 0)), 'a reads zeros now');
    for (const c of [a, b, reader]) await c.disconnect();
  } finally {
    await d.stop();
  }
}

test(`a reply sent by reference keeps its bytes when the blocks are freed, reused and rewritten before the client reads it${hasNativeAddon() ? '' : ' (native addon missing: no zero-copy, checked the usual way)'}`, () => reuseRun(hasNativeAddon()));

test('with THINPOOL_ZERO_COPY_READS=0 replies are copied, and keep their bytes the same way', () => reuseRun(false));

test.run();
