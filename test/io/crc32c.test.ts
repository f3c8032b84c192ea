/** crc32c gives the standard check value, and dm-thin's checksum is the salted register without the final inversion. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { crc32c, dmChecksum } from '../../src/io/crc32c.js';

test('crc32c check value', () => {
  assert.is(crc32c(new TextEncoder().encode('123456789')), 0xe3069283);
});

test('dm checksum: no final inversion, salted', () => {
  const data = new TextEncoder().encode('123456789');
  assert.is(dmChecksum(data, 0), (0xe3069283 ^ 0xffffffff) >>> 0);
  assert.is(dmChecksum(data, 160774), (0xe3069283 ^ 0xffffffff ^ 160774) >>> 0);
});

test.run();
