/**
 * Size parsing and formatting: binary units, sectors, fractions that come to whole bytes, and
 * clear usage errors for anything else.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { UsageError } from '../src/errors.js';
import { formatSize, parseSize } from '../src/units.js';

test('sizes with units, sectors and fractions that are whole bytes', () => {
  assert.is(parseSize('512'), 512);
  assert.is(parseSize('64K'), 65536);
  assert.is(parseSize('64kib'), 65536);
  assert.is(parseSize(' 10M '), 10 * 1024 * 1024);
  assert.is(parseSize('1.5G'), 1.5 * 1024 ** 3);
  assert.is(parseSize('1.5K'), 1536);
  assert.is(parseSize('3s'), 1536);
  assert.is(parseSize('0.5s'), 256);
  assert.is(parseSize('2T'), 2 * 1024 ** 4);
});

test('a fraction of a byte is refused, not rounded (regression: --size 1.5 was taken as 2 bytes)', () => {
  for (const t of ['1.5', '1.3K', '0.1', '2.7b']) {
    try {
      parseSize(t, '--size');
      assert.unreachable(`${t} accepted`);
    } catch (err) {
      assert.instance(err, UsageError, t);
      assert.match((err as Error).message, new RegExp(`^Cannot parse --size '${t.replace('.', '\\.')}': .* bytes, expected a whole number of bytes`));
    }
  }
});

test('garbage, unknown units and overflow are usage errors', () => {
  for (const t of ['', 'abc', '1Q', '-1', '1e3', '99999999999P']) assert.throws(() => parseSize(t), (e: unknown) => e instanceof UsageError, t);
});

test('formatSize', () => {
  assert.is(formatSize(512), '512 B');
  assert.is(formatSize(65536), '64.0 KiB');
  assert.is(formatSize(1.5 * 1024 ** 3), '1.5 GiB');
});

test.run();
