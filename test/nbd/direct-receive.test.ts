/**
 * WRITE payloads received into pooled buffers, straight from the socket (direct-receive.ts,
 * write-payload.ts): the bytes arrive intact whatever their size and however they are pipelined;
 * large payloads land in the payload's own memory (the socket reads into it), come from the
 * server's buffer pool and go back to it only once their write has settled; a connection closed
 * mid-payload gives nothing back; with THINPOOL_NBD_DIRECT_RECEIVE=0 the socket delivers chunks
 * as Node allocates them and everything still arrives. The receive buffer's transient chunks are
 * never handed out as views.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { BufferPool } from '../../src/io/buffer-pool.js';
import type { AllocationExtent, NbdExport, ReadSegment, WriteZeroesOptions } from '../../src/nbd/export.js';
import { MemoryExport } from '../../src/nbd/memory-export.js';
import { Cmd, packRequestHeader } from '../../src/nbd/protocol.js';
import { ReceiveBuffer } from '../../src/nbd/receive-buffer.js';
import { WritePayload } from '../../src/nbd/write-payload.js';
import { startNbd, waitFor } from '../support/nbd-harness.js';

const KiB = 1024;
const MiB = 1024 * KiB;

function fill(n: number, tag: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = (tag * 131 + i * 7) & 0xff;
  return b;
}

interface Seen {
  memory: ArrayBufferLike;
  byteOffset: number;
  length: number;
}

/** A memory export that records the buffer of every write, can hold writes, and checks no payload changed while its write ran. */
class RecordingExport implements NbdExport {
  readonly seen: Seen[] = [];
  corrupted = 0;
  private gate: Promise<void> | undefined;
  private open: (() => void) | undefined;
  readonly inner: MemoryExport;
  constructor(readonly name: string, readonly size: number) {
    this.inner = new MemoryExport({ name, size });
  }
  get readOnly(): boolean {
    return false;
  }
  hold(): void {
    this.gate ??= new Promise((r) => (this.open = r));
  }
  release(): void {
    this.open?.();
    this.gate = this.open = undefined;
  }
  async write(offset: number, data: Uint8Array, fua: boolean): Promise<void> {
    this.seen.push({ memory: data.buffer, byteOffset: data.byteOffset, length: data.length });
    const copy = Buffer.from(data);
    if (this.gate) await this.gate;
    await new Promise((r) => setImmediate(r));
    if (!copy.equals(data)) this.corrupted++;
    await this.inner.write(offset, data, fua);
  }
  read(offset: number, length: number): Promise<ReadSegment[]> {
    return this.inner.read(offset, length);
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  trim(offset: number, length: number, fua: boolean): Promise<void> {
    return this.inner.trim(offset, length, fua);
  }
  writeZeroes(offset: number, length: number, opts: WriteZeroesOptions): Promise<void> {
    return this.inner.writeZeroes(offset, length, opts);
  }
  blockStatus(offset: number, length: number): Promise<AllocationExtent[]> {
    return this.inner.blockStatus(offset, length);
  }
  cache(offset: number, length: number): Promise<void> {
    return this.inner.cache(offset, length);
  }
}

/** Counts the bytes that landed straight in payloads (the socket read into them). */
function countLanded(): { bytes: number; restore: () => void } {
  const orig = WritePayload.prototype.landed;
  const counter = {
    bytes: 0,
    restore: () => {
      WritePayload.prototype.landed = orig;
    },
  };
  WritePayload.prototype.landed = function (this: WritePayload, view: Uint8Array, n: number) {
    counter.bytes += n;
    return orig.call(this, view, n);
  };
  return counter;
}

async function pipelinedWrites(direct: boolean): Promise<void> {
  const prev = process.env.THINPOOL_NBD_DIRECT_RECEIVE;
  if (!direct) process.env.THINPOOL_NBD_DIRECT_RECEIVE = '0';
  const landed = countLanded();
  const exp = new RecordingExport('disk', 64 * MiB);
  const pool = new BufferPool(16 * KiB, 16 * MiB);
  let h;
  try {
    h = await startNbd([exp], { buffers: pool, maxPayload: 4 * MiB });
  } finally {
    if (prev === undefined) delete process.env.THINPOOL_NBD_DIRECT_RECEIVE;
    else process.env.THINPOOL_NBD_DIRECT_RECEIVE = prev;
  }
  try {
    const c = await h.client({ exportName: 'disk' });
    const sizes = [512, 4 * KiB, 64 * KiB, 256 * KiB, 1 * MiB, 3 * MiB + 512, 100_000];
    const writes: Array<{ off: number; data: Buffer }> = [];
    let off = 0;
    for (let round = 0; round < 4; round++) {
      for (const [i, n] of sizes.entries()) {
        writes.push({ off, data: fill(n, round * 10 + i) });
        off += Math.ceil(n / 4096) * 4096;
      }
    }
    // All pipelined at once, then all again in sequence (pooled buffers come back and are reused).
    await Promise.all(writes.map((w) => c.write(w.off, w.data)));
    for (const w of writes) await c.write(w.off, w.data);
    for (const w of writes) assert.ok((await c.read(w.off, w.data.length)).equals(w.data), `bytes at ${w.off}`);
    assert.is(exp.corrupted, 0, 'no payload changed while its write ran');
    const big = exp.seen.filter((s) => s.length >= 256 * KiB);
    assert.ok(big.length >= 24);
    for (const s of big) assert.ok(s.byteOffset === 0 && s.memory.byteLength === s.length, 'a large payload is a whole buffer of its size');
    const distinct = new Set(big.map((s) => s.memory)).size;
    assert.ok(distinct < big.length, `payload buffers are reused (${distinct} buffers for ${big.length} writes)`);
    const total = writes.reduce((a, w) => a + w.data.length, 0) * 2;
    if (direct) assert.ok(landed.bytes > total / 2, `most payload bytes read straight into payloads (${landed.bytes} of ${total})`);
    else assert.is(landed.bytes, 0, 'no direct reads when turned off');
    await c.disconnect();
  } finally {
    landed.restore();
    await h.close();
  }
}

test('pipelined writes of every size arrive intact, read straight into pooled payloads', () => pipelinedWrites(true));

test('with THINPOOL_NBD_DIRECT_RECEIVE=0 the socket delivers chunks and the payloads still arrive intact, pooled', () => pipelinedWrites(false));

test('a payload goes back to the pool only once its write settled; a payload cut off by a closed connection not at all', async () => {
  const exp = new RecordingExport('disk', 16 * MiB);
  const pool = new BufferPool(16 * KiB, 16 * MiB);
  const h = await startNbd([exp], { buffers: pool });
  try {
    const c = await h.client({ exportName: 'disk' });
    exp.hold();
    const a = c.write(0, fill(256 * KiB, 1));
    await waitFor(() => exp.seen.length === 1, 5000, 'the first write to start');
    const b = c.write(256 * KiB, fill(256 * KiB, 2));
    await waitFor(() => exp.seen.length === 2, 5000, 'the second write to start');
    assert.is.not(exp.seen[1]!.memory, exp.seen[0]!.memory, 'a held write keeps its buffer');
    exp.release();
    await Promise.all([a, b]);
    assert.is(exp.corrupted, 0);
    assert.is(pool.idleBytes, 512 * KiB, 'both payloads back in the pool');
    await c.write(512 * KiB, fill(256 * KiB, 3));
    assert.ok([exp.seen[0]!.memory, exp.seen[1]!.memory].includes(exp.seen[2]!.memory), 'and reused');
    assert.ok((await c.read(0, 256 * KiB)).equals(fill(256 * KiB, 1)));
    assert.ok((await c.read(256 * KiB, 256 * KiB)).equals(fill(256 * KiB, 2)));
    await c.disconnect();

    // A client sends a WRITE header and half its payload, then goes away.
    const idle = pool.idleBytes;
    const c2 = await h.client({ exportName: 'disk' });
    c2.stream.write(packRequestHeader(Cmd.WRITE, 0, 7, 0, 0, 256 * KiB));
    c2.stream.write(fill(128 * KiB, 4));
    await new Promise((r) => setTimeout(r, 50));
    c2.destroy();
    await waitFor(() => h.server.connectionCount() === 0, 5000, 'the connection to close');
    assert.ok(pool.idleBytes <= idle, 'the cut-off payload did not go back to the pool');
    const c3 = await h.client({ exportName: 'disk' });
    assert.ok((await c3.read(0, 256 * KiB)).equals(fill(256 * KiB, 1)), 'nothing of it was written');
    await c3.disconnect();
  } finally {
    await h.close();
  }
});

test('receive buffer: transient chunks are copied when taken and when kept past the read', () => {
  const rx = new ReceiveBuffer();
  const scratch = Buffer.from('0123456789abcdef');
  rx.pushTransient(scratch.subarray(0, 10));
  assert.is(rx.takeView(4), undefined, 'no view of transient memory');
  const a = rx.take(4);
  assert.is(a.toString(), '0123');
  scratch.fill(0x2e, 0, 4);
  assert.is(a.toString(), '0123', 'a copy, not a view');
  rx.ownTransient();
  scratch.fill(0x2e);
  assert.is(rx.take(6).toString(), '456789', 'the rest was copied out before the scratch was reused');
  const owned = Buffer.from('xyz');
  rx.push(owned);
  const v = rx.takeView(3)!;
  assert.is(v.buffer, owned.buffer, 'an owned chunk is handed out as a view');
});

test('write payload: a direct read that lands anywhere but the handed-out tail is refused', () => {
  const pool = new BufferPool(16 * KiB, MiB);
  const p = new WritePayload(pool);
  const rx = new ReceiveBuffer();
  p.begin(rx, 64 * KiB);
  const t = p.target()!;
  assert.is(t.length, 64 * KiB);
  assert.throws(() => p.landed(Buffer.alloc(10), 10), /outside the payload/);
  t.fill(7, 0, 1000);
  p.landed(t, 1000);
  const t2 = p.target()!;
  assert.is(t2.length, 64 * KiB - 1000);
  assert.throws(() => p.landed(t, 10), /outside the payload/, 'a stale target');
  rx.push(Buffer.alloc(64 * KiB - 1000, 9));
  assert.ok(p.fill(rx));
  const { data, pooled } = p.take();
  assert.ok(pooled);
  assert.is(data[999], 7);
  assert.is(data[1000], 9);
  p.release(data);
  assert.is(pool.idleBytes, 64 * KiB);
});

test.run();
