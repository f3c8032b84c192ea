/**
 * Digests and chain ids: validation of `sha256:<64 hex>` (other algorithms, upper case, short
 * or long hex refused with the value named), sha256 against the `sha256sum` program, and chain
 * ids as the OCI image spec defines them (the first is the diff id, then sha256 of
 * "parent + space + diff id"), checked against sha256sum of the same strings.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { UsageError } from '../../src/errors.js';
import { type Digest, chainId, chainIds, digestFromHex, digestHex, isDigest, parseDigest, sha256Digest, shortDigest } from '../../src/images/digest.js';
import { run, testIf, which } from '../support/oracles.js';

const A = `sha256:${'a'.repeat(64)}` as Digest;
const B = `sha256:${'0123456789abcdef'.repeat(4)}` as Digest;
const C = sha256Digest('layer c');

test('isDigest/parseDigest accept only sha256 with 64 lowercase hex digits', () => {
  assert.ok(isDigest(A));
  for (const bad of [`sha512:${'a'.repeat(128)}`, `sha256:${'A'.repeat(64)}`, `sha256:${'a'.repeat(63)}`, `sha256:${'a'.repeat(65)}`, 'a'.repeat(64), '', 42, null]) {
    assert.not.ok(isDigest(bad), String(bad));
    assert.throws(() => parseDigest(bad, 'layer digest'), (e: unknown) => e instanceof UsageError && /Cannot use layer digest .*: not a sha256 digest/.test((e as Error).message));
  }
  assert.is(parseDigest(B), B);
  assert.is(digestHex(B), '0123456789abcdef'.repeat(4));
  assert.is(digestFromHex(digestHex(B)), B);
  assert.is(shortDigest(B), '0123456789ab');
});

test('chain ids: the first is the diff id, then sha256("parent diffid")', () => {
  assert.equal(chainIds([]), []);
  assert.equal(chainIds([A]), [A]);
  const ab = sha256Digest(`${A} ${B}`);
  const abc = sha256Digest(`${ab} ${C}`);
  assert.equal(chainIds([A, B, C]), [A, ab, abc]);
  assert.is(chainId(undefined, B), B);
  assert.is(chainId(ab, C), abc);
  assert.is.not(chainIds([B, A])[1], ab, 'order matters');
});

testIf(test, which('sha256sum') !== null, 'needs sha256sum')('sha256 and chain ids agree with sha256sum', async () => {
  const sum = async (s: string) => `sha256:${(await run('sha256sum', [], { input: s })).stdout.split(' ')[0]}`;
  assert.is(sha256Digest('Hello world\n'), await sum('Hello world\n'));
  assert.is(chainIds([A, B])[1], await sum(`${A} ${B}`));
});

test.run();
