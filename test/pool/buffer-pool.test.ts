/** The read-buffer pool: buffers of a size come back for reuse; small, foreign-shaped and excess ones are dropped. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { BufferPool } from '../../src/pool/buffer-pool.js';

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

test.run();
