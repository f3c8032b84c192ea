/**
 * Zero-copy READ replies: the reply header, then the data straight from the export's file with
 * sendfile, so the socket's buffers reference the page cache pages and the bytes are copied once
 * (by the client's read) instead of three times (into a buffer, into the socket, out of it).
 *
 * It runs synchronously, in the same step as the export's mapping lookup (`NbdExport.sendNow`),
 * and only when nothing of earlier replies is still queued on the stream (so the bytes go out in
 * reply order). The runs must all be in the page cache (cachestat), so sendfile never waits for
 * the disk on the event loop; when they are not, or the socket is full from the start, nothing is
 * sent and the caller replies the usual way. When the socket fills up part way, the data not sent
 * is copied at once (the runs are the export's bytes only during this step) and queued behind.
 */
import { readSync } from 'node:fs';
import type { BufferPool } from '../io/buffer-pool.js';
import { readNow, sendFileRuns } from '../io/native.js';

/** Where a partly sent reply's rest is queued (the connection's ordered send). */
export type QueueRest = (bufs: Uint8Array[], sent: () => void) => void;

/**
 * Sends `header` and the runs (`total` bytes) on socket `sockfd`; true when the reply went out
 * (whole, or the rest queued with `queue`), false when nothing was sent. Throws what the socket
 * throws (EPIPE, ECONNRESET): the connection is gone.
 */
export function sendFileReply(sockfd: number, header: Uint8Array, fd: number, positions: number[], lengths: number[], total: number, buffers: BufferPool | undefined, queue: QueueRest): boolean {
  const sent = sendFileRuns(sockfd, header, fd, positions, lengths);
  if (sent === null || sent <= 0) return false;
  if (sent === header.length + total) return true;
  const parts: Uint8Array[] = [];
  if (sent < header.length) parts.push(header.subarray(sent));
  const dataSent = Math.max(0, sent - header.length);
  const rest = buffers ? buffers.get(total - dataSent) : Buffer.allocUnsafe(total - dataSent);
  copyRuns(fd, positions, lengths, dataSent, rest);
  parts.push(rest);
  queue(parts, () => buffers?.put(rest));
  return true;
}

/** Reads the runs' bytes from `skip` on into `into`, now (the pages were cached a moment ago; a blocking read if one was evicted since). */
function copyRuns(fd: number, positions: number[], lengths: number[], skip: number, into: Uint8Array): void {
  let at = 0;
  for (let i = 0; i < positions.length; i++) {
    let pos = positions[i]!;
    let len = lengths[i]!;
    if (skip >= len) {
      skip -= len;
      continue;
    }
    pos += skip;
    len -= skip;
    skip = 0;
    while (len > 0) {
      let n = readNow(fd, into, at, len, pos);
      if (n <= 0) n = readSync(fd, into, at, len, pos);
      if (n === 0) {
        into.fill(0, at, at + len);
        n = len;
      }
      at += n;
      pos += n;
      len -= n;
    }
  }
}
