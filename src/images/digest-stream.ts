/**
 * A pass-through stream that hashes (sha256) and counts what flows through it, and optionally
 * checks the result against a descriptor: it fails as soon as more bytes than the expected size
 * arrive, and at the end when the size or digest differ, with a BadImageError naming the blob.
 * The failure comes before the stream ends, so a consumer never sees a wrong blob complete.
 */
import { createHash, type Hash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { BadImageError } from '../errors.js';
import type { Digest } from './digest.js';

/** What the bytes must be; `name` says what they are in messages ("layer 2 (sha256:...)"). */
export interface StreamExpectation {
  digest?: Digest | undefined;
  size?: number | undefined;
  name: string;
  /** What the digest is called in messages (default "digest"; "diff id" for uncompressed layers). */
  digestName?: string;
}

/** Hashes and counts the bytes passing through; see the module comment. */
export class DigestStream extends Transform {
  private readonly hash: Hash = createHash('sha256');
  /** Bytes seen so far. */
  size = 0;
  private result: Digest | undefined;

  constructor(private readonly expect?: StreamExpectation) {
    super();
  }

  /** The sha256 of everything that passed (valid once the stream has ended). */
  get digest(): Digest {
    if (!this.result) this.result = `sha256:${this.hash.digest('hex')}`;
    return this.result;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.size += chunk.length;
    const e = this.expect;
    if (e?.size !== undefined && this.size > e.size) {
      cb(new BadImageError(`Cannot read ${e.name}: more than the ${e.size} bytes its descriptor gives`, { blob: e.digest, expected: e.size }));
      return;
    }
    this.hash.update(chunk);
    cb(null, chunk);
  }

  override _flush(cb: TransformCallback): void {
    const e = this.expect;
    const digest = this.digest;
    if (e?.size !== undefined && this.size !== e.size) {
      cb(new BadImageError(`Cannot read ${e.name}: ${this.size} bytes, expected ${e.size} (truncated)`, { blob: e.digest, size: this.size, expected: e.size }));
      return;
    }
    if (e?.digest !== undefined && digest !== e.digest) {
      cb(new BadImageError(`Cannot read ${e.name}: its content hashes to ${digest}, expected ${e.digestName ?? 'digest'} ${e.digest}`, { blob: e.digest, actual: digest }));
      return;
    }
    cb();
  }
}
