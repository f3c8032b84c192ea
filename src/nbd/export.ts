/**
 * What the NBD server serves: an export is a byte-addressed device. `src/nbd` knows only this
 * interface; the adapter from a thin device to an export lives in `src/serve`.
 *
 * Errors thrown by an export are mapped to NBD error values by the server:
 * `code === 'ENOSPC'` -> NBD_ENOSPC, `RangeError` -> NBD_EINVAL, `code === 'EROFS' | 'EPERM'` ->
 * NBD_EPERM, `code === 'ENOTSUP'` -> NBD_ENOTSUP (e.g. a fast zero that cannot be fast),
 * anything else -> NBD_EIO. The server checks offsets and lengths against `size` before calling.
 */

/** A run of bytes returned by {@link NbdExport.read}: `data === null` is a hole (reads as zeros). */
export interface ReadSegment {
  offset: number;
  length: number;
  data: Uint8Array | null;
}

/** One extent of `base:allocation` block status. */
export interface AllocationExtent {
  length: number;
  /** Not provisioned (NBD_STATE_HOLE). */
  hole: boolean;
  /** Reads as zeros (NBD_STATE_ZERO). */
  zero: boolean;
}

export interface WriteZeroesOptions {
  /** NBD_CMD_FLAG_NO_HOLE: the range must stay allocated. */
  noHole: boolean;
  /** NBD_CMD_FLAG_FAST_ZERO: fail with code ENOTSUP instead of doing slow work. */
  fastZero: boolean;
  /** NBD_CMD_FLAG_FUA */
  fua: boolean;
}

export interface NbdExport {
  readonly name: string;
  readonly description?: string;
  /** Size in bytes (a multiple of 512). May change between connections, not during one. */
  readonly size: number;
  readonly readOnly: boolean;
  /**
   * Reads `[offset, offset + length)` as contiguous segments covering the range in order.
   * The returned buffers are owned by the caller until the reply is written.
   */
  read(offset: number, length: number): Promise<ReadSegment[]>;
  /**
   * Optional: the server is done with the buffers of a `read` result (its reply was handed to
   * the socket, or the connection ended); the export may reuse them.
   */
  releaseRead?(segments: ReadSegment[]): void;
  /**
   * Optional, for zero-copy READ replies: when every byte of the range can be sent straight from
   * a file right now (all provisioned, nothing to wait for), calls `send` synchronously with the
   * file's descriptor and the byte runs of the range in it (in order) and returns true; returns
   * false without calling it when not, and the server uses {@link read}. The sender passes the
   * file's pages on by reference (sendfile), so the export promises they keep the bytes they
   * had during the call, unless the export itself is written there later (the overlap of a
   * read with a later write), e.g. because a block is reused only after it was punched out.
   */
  sendNow?(offset: number, length: number, send: (fd: number, positions: number[], lengths: number[]) => void): boolean;
  /**
   * Writes `data` at `offset`; with `fua` the bytes are durable when the promise resolves.
   * Without `fua` the server passes `accepted`: the export may call it (once) before the promise
   * resolves, as soon as every later read (on any connection) sees the data and a later flush
   * covers it, i.e. once the write sits in the export's volatile cache; the server replies then.
   * A failure after that must fail the next flush (the spec's ordering rules: a FLUSH makes
   * every write replied to before it durable).
   */
  write(offset: number, data: Uint8Array, fua: boolean, accepted?: () => void): Promise<void>;
  /** Makes every completed write durable. */
  flush(): Promise<void>;
  /** Discards what can be discarded inside the range (the rest keeps its contents). */
  trim(offset: number, length: number, fua: boolean): Promise<void>;
  /** Makes the range read as zeros. */
  writeZeroes(offset: number, length: number, opts: WriteZeroesOptions): Promise<void>;
  /** `base:allocation` extents covering `[offset, offset + length)` (may stop early, never empty). */
  blockStatus(offset: number, length: number): Promise<AllocationExtent[]>;
  /** Hint: bring the range into cache. */
  cache(offset: number, length: number): Promise<void>;
}

/** Where the server finds exports by name; lets the owner count connections per export. */
export interface NbdExportProvider {
  /** Export names for NBD_OPT_LIST, in a stable order. */
  list(): string[];
  /** The export for a name ("" is the default export), or undefined to refuse it. */
  get(name: string): NbdExport | undefined;
  /** Called when a connection starts using an export, and the returned function when it stops. */
  attach?(exp: NbdExport): () => void;
}
