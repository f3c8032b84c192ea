/**
 * The data writes of one request (block-writes.ts): neighbouring pieces go out as one vectored
 * write, partial new blocks are zero-filled, a shared block's untouched bytes are copied; and the
 * call settles only after every write it started has ended, also when a copy-on-write read
 * fails, since the caller reuses the source buffers then (the NBD server pools its payloads).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { BlockFile, WriteRun } from '../../src/io/block-file.js';
import { type Piece, writePieces } from '../../src/pool/block-writes.js';

const BS = 64 * 1024;

/** An in-memory block file whose writes finish when the test says, and whose reads can fail. */
class SlowFile implements BlockFile {
  readonly path = 'mem';
  readonly bytes = Buffer.alloc(16 * BS);
  readonly pending: Array<() => void> = [];
  writevCalls = 0;
  failReads = false;
  async read(buf: Uint8Array, position: number): Promise<void> {
    if (this.failReads) throw Object.assign(new Error('EIO: injected read failure'), { code: 'EIO' });
    buf.set(this.bytes.subarray(position, position + buf.length));
  }
  write(buf: Uint8Array, position: number): Promise<void> {
    return this.writev([buf], position);
  }
  writev(bufs: readonly Uint8Array[], position: number): Promise<void> {
    this.writevCalls++;
    return new Promise((resolve) => {
      this.pending.push(() => {
        let at = position;
        for (const b of bufs) {
          this.bytes.set(b, at);
          at += b.length;
        }
        resolve();
      });
    });
  }
  finishAll(): void {
    for (const f of this.pending.splice(0)) f();
  }
  async sync(): Promise<void> {}
  async writeDurable(_runs: readonly WriteRun[]): Promise<void> {}
  async size(): Promise<number> {
    return this.bytes.length;
  }
  async truncate(): Promise<void> {}
  async punchHole(): Promise<void> {}
  async close(): Promise<void> {}
}

const settledSoon = (p: Promise<unknown>) => Promise.race([p.then(() => 'settled', () => 'settled'), new Promise((r) => setTimeout(() => r('pending'), 30))]);

test('neighbouring new blocks go out as one vectored write; a partial new block is zero-filled; a shared one keeps its other bytes', async () => {
  const f = new SlowFile();
  f.bytes.fill(0x55, 5 * BS, 6 * BS);
  const src = Buffer.alloc(2 * BS + 100, 0xaa);
  const pieces: Piece[] = [
    { vblock: 0, start: 0, end: BS, src: src.subarray(0, BS), mapping: undefined, fresh: 1 },
    { vblock: 1, start: 0, end: BS, src: src.subarray(BS, 2 * BS), mapping: undefined, fresh: 2 },
    { vblock: 2, start: 0, end: 100, src: src.subarray(2 * BS), mapping: undefined, fresh: 3 },
    { vblock: 3, start: 10, end: 20, src: Buffer.alloc(10, 0xbb), mapping: { block: 5, shared: true } as Piece['mapping'], fresh: 7 },
  ];
  const p = writePieces(f, BS, pieces);
  await new Promise((r) => setTimeout(r, 5));
  f.finishAll();
  await p;
  assert.is(f.writevCalls, 2, 'blocks 1-3 in one write, the copied block in another');
  assert.ok(f.bytes.subarray(BS, 3 * BS).every((b) => b === 0xaa));
  assert.ok(f.bytes.subarray(3 * BS, 3 * BS + 100).every((b) => b === 0xaa));
  assert.ok(f.bytes.subarray(3 * BS + 100, 4 * BS).every((b) => b === 0), 'zero-filled rest');
  assert.ok(f.bytes.subarray(7 * BS, 7 * BS + 10).every((b) => b === 0x55), 'old bytes before');
  assert.ok(f.bytes.subarray(7 * BS + 10, 7 * BS + 20).every((b) => b === 0xbb), 'new bytes');
  assert.ok(f.bytes.subarray(7 * BS + 20, 8 * BS).every((b) => b === 0x55), 'old bytes after');
});

test('a failed copy-on-write read rejects only after the writes already started have ended', async () => {
  const f = new SlowFile();
  f.failReads = true;
  const pieces: Piece[] = [
    { vblock: 0, start: 0, end: BS, src: Buffer.alloc(BS, 1), mapping: undefined, fresh: 1 },
    { vblock: 1, start: 0, end: 100, src: Buffer.alloc(100, 2), mapping: { block: 5, shared: true } as Piece['mapping'], fresh: 2 },
  ];
  const p = writePieces(f, BS, pieces);
  p.catch(() => {});
  assert.is(await settledSoon(p), 'pending', 'the first block is still being written: the caller must not reuse its buffers yet');
  f.finishAll();
  try {
    await p;
    assert.unreachable('should have failed');
  } catch (err) {
    assert.match((err as Error).message, /injected read failure/);
  }
});

test.run();
