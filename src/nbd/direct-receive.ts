/**
 * Reading a connection's socket into buffers the connection picks. A `net.Socket` normally
 * allocates a fresh 64 KiB buffer for every read and hands it over as a chunk, which a WRITE
 * payload spanning chunks is then copied out of: a GiB written costs two GiB of fresh external
 * memory and V8 a full mark-compact every few MiB. Node lets a socket read into a caller's buffer
 * instead (the `onread` option of `new net.Socket`), but only for sockets it creates, so an
 * accepted connection is re-opened on a duplicate of its descriptor (the native addon's dupFd)
 * and the original closed before it ever read. Each read then lands in the tail of the WRITE
 * payload being received when there is one (the kernel copies straight into it), else in one
 * scratch buffer per connection whose unparsed bytes are copied out before the next read.
 *
 * Without the addon, or with `THINPOOL_NBD_DIRECT_RECEIVE=0` in the environment, sockets stay as
 * accepted (chunks, copied payloads).
 */
import { closeSync } from 'node:fs';
import { type OnReadOpts, Socket, type SocketConstructorOpts } from 'node:net';
import { dupFd } from '../io/native.js';

/** Where a re-opened socket's reads go. */
export interface ReadTargets {
  /** The buffer the next read should land in, or undefined for the scratch buffer. */
  readTarget(): Uint8Array | undefined;
  /** `n` bytes were read into `view` (what {@link readTarget} returned). */
  landed(view: Uint8Array, n: number): void;
  /** Bytes were read into the scratch buffer: `chunk` is valid only during the call. */
  received(chunk: Buffer): void;
}

/** The scratch buffer of a connection (what Node would allocate per read). */
export const SCRATCH_BYTES = 64 * 1024;

/** True unless `THINPOOL_NBD_DIRECT_RECEIVE=0` turns direct receive off. */
export function directReceiveWanted(): boolean {
  return process.env.THINPOOL_NBD_DIRECT_RECEIVE !== '0';
}

/**
 * Re-opens `accepted` (created with `pauseOnConnect`, so it has read nothing) as a socket whose
 * reads go where `targets()` says, and destroys the original; returns the new socket and its
 * descriptor (for zero-copy sends). Undefined, with `accepted` left as it is, when that cannot be
 * done (no native addon, no descriptor, dup failed).
 */
export function reopenForDirectReceive(accepted: Socket, targets: () => ReadTargets | undefined): { socket: Socket; fd: number } | undefined {
  // Node has no public accessor for a socket's descriptor; `_handle.fd` has been there since 0.x.
  const fd = (accepted as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) return undefined;
  let dup: number | null;
  try {
    dup = dupFd(fd);
  } catch {
    return undefined;
  }
  if (dup === null) return undefined;
  const scratch = Buffer.allocUnsafe(SCRATCH_BYTES);
  let socket: Socket;
  const onread: OnReadOpts = {
    buffer: () => targets()?.readTarget() ?? scratch,
    callback: (n: number, buf: Uint8Array) => {
      const t = targets();
      if (t === undefined) {
        // Bytes with no connection to take them: cannot happen (the connection is made right after).
        socket.destroy();
        return false;
      }
      if (buf === scratch) t.received(scratch.subarray(0, n));
      else t.landed(buf, n);
      return true;
    },
  };
  // @types/node lists `onread` only among connect()'s options; Node documents it for new Socket().
  const opts: SocketConstructorOpts & { onread: OnReadOpts } = { fd: dup, readable: true, writable: true, allowHalfOpen: true, onread };
  try {
    socket = new Socket(opts);
  } catch {
    closeSync(dup);
    return undefined;
  }
  accepted.destroy();
  return { socket, fd: dup };
}
