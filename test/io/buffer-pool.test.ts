/**
 * The read-buffer pool: buffers of a size come back for reuse; small, foreign-shaped and excess
 * ones are dropped; when full, idle buffers of other sizes (the longest unused size first) make
 * room for the size in use, and the idle bytes never exceed the bound.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { BufferPool } from '../../src/io/buffer-pool.js';

test('buffers of a size come back for reuse; small, foreign-shaped and excess ones are dropped', () => {
  const pool = new BufferPool(16 * 1024, 256 * 1024);
  const a = pool.get(64 * 1024);
  assert.is(a.length, 64 * 1024);
  pool.put(a);
  assert.is(pool.idleBytes, 64 * 1024);
  assert.ok(pool.get(64 * 1024) === a, 'the same buffer is handed out again');
  assert.is(pool.idleBytes, 0);
  pool.put(Buffer.allocUnsafe(4096));
  assert.is(pool.idleBytes, 0, 'small buffers are not pooled');
  pool.put(Buffer.alloc(128 * 1024).subarray(0, 64 * 1024));
  assert.is(pool.idleBytes, 0, 'views into larger memory are not pooled');
  for (let i = 0; i < 6; i++) pool.put(Buffer.allocUnsafe(64 * 1024));
  assert.is(pool.idleBytes, 256 * 1024, 'at most maxBytes stay idle');
  assert.ok(pool.get(32 * 1024).length === 32 * 1024);
});

test('a full pool makes room for the size in use from other sizes, the size pooled longest ago first', () => {
  const K = 1024;
  const pool = new BufferPool(16 * K, 256 * K);
  const mid = Buffer.allocUnsafe(32 * K);
  const small: Buffer[] = [0, 1, 2].map(() => Buffer.allocUnsafe(64 * K));
  pool.put(small[0]!);
  pool.put(mid);
  pool.put(small[1]!);
  pool.put(small[2]!);
  assert.is(pool.idleBytes, 224 * K);
  const big = Buffer.allocUnsafe(128 * K);
  pool.put(big);
  assert.is(pool.idleBytes, 256 * K, 'the 32 KiB buffer and one 64 KiB buffer made room');
  assert.ok(pool.get(128 * K) === big, 'the new size was pooled');
  assert.ok(pool.get(32 * K) !== mid, 'the size pooled longest ago went first');
  assert.ok(small.includes(pool.get(64 * K)) && small.includes(pool.get(64 * K)), 'two 64 KiB buffers stayed');
  assert.is(pool.idleBytes, 0);
  pool.put(Buffer.allocUnsafe(512 * K));
  assert.is(pool.idleBytes, 0, 'a buffer larger than the bound is not pooled');
});

test.run();
