/**
 * Content digests and the ids built from them (OCI image spec): `sha256:<64 lowercase hex>`
 * strings, the hashing helpers, and chain ids. A layer's diff id is the digest of its
 * uncompressed tar; the chain id of the first layer is its diff id, and of every later layer
 * `sha256(parentChainId + " " + diffId)`, so a chain id names a whole stack of layers.
 */
import { createHash } from 'node:crypto';
import { UsageError } from '../errors.js';

/** A validated `sha256:<64 lowercase hex>` digest string. */
export type Digest = `sha256:${string}`;

const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;

/** True when `s` is a `sha256:<64 lowercase hex>` digest. */
export function isDigest(s: unknown): s is Digest {
  return typeof s === 'string' && DIGEST_RE.test(s);
}

/**
 * Returns `s` as a {@link Digest}, or throws a UsageError naming `what` (e.g. "layer digest")
 * when it is not `sha256:` followed by 64 lowercase hex digits. Other algorithms are refused:
 * sha256 is the only one this store keeps.
 */
export function parseDigest(s: unknown, what = 'digest'): Digest {
  if (isDigest(s)) return s;
  const shown = typeof s === 'string' ? JSON.stringify(s.length > 80 ? s.slice(0, 80) + '...' : s) : String(s);
  throw new UsageError(`Cannot use ${what} ${shown}: not a sha256 digest, expected sha256:<64 lowercase hex digits>`, { value: s });
}

/** The 64 hex digits of a digest. */
export function digestHex(d: Digest): string {
  return d.slice(7);
}

/** A digest from 64 hex digits (validated). */
export function digestFromHex(hex: string): Digest {
  return parseDigest(`sha256:${hex}`);
}

/** sha256 digest of bytes or a string (UTF-8). */
export function sha256Digest(data: Uint8Array | string): Digest {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

/** Chain id of a layer on top of `parent` (undefined for the first layer, whose chain id is its diff id). */
export function chainId(parent: Digest | undefined, diffId: Digest): Digest {
  return parent === undefined ? diffId : sha256Digest(`${parent} ${diffId}`);
}

/** Chain ids of every prefix of a stack of layers, bottom first (the last one names the image's file system). */
export function chainIds(diffIds: readonly Digest[]): Digest[] {
  const out: Digest[] = [];
  let parent: Digest | undefined;
  for (const d of diffIds) {
    parent = chainId(parent, d);
    out.push(parent);
  }
  return out;
}

/** A short form for messages and listings: the first 12 hex digits, as docker prints ids. */
export function shortDigest(d: Digest): string {
  return digestHex(d).slice(0, 12);
}
