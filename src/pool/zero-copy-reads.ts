/**
 * Zero-copy reads: a device's bytes handed out as runs of the data file, for a sender that passes
 * the file's page cache pages on by reference (sendfile into the NBD socket) instead of copying
 * them twice (into a buffer, then into the socket).
 *
 * Why a reference stays right after the call: the pages a socket references keep whatever bytes
 * they hold until the client reads them. The device's own later writes may show through, which
 * is the overlap of a read with a later write (either result is allowed). A data block that
 * stops being the device's is not written again until it is reused, and a block is reused only
 * after the commit that freed it has punched it out of the data file (metadata-store.ts: freed
 * blocks are not reused until `afterSuperblock`, pool-commit.ts punches them there), which takes
 * its pages out of the page cache: a new write there gets new pages, and the referenced ones keep
 * the old bytes. So this is offered only when holes can be punched in the data file
 * (`canPunchHoles`), and only in one synchronous step (mapping lookup to send) with no block of
 * the range freed in between.
 *
 * `THINPOOL_ZERO_COPY_READS=0` in the environment turns it off.
 */
import type { BlockFile } from '../io/block-file.js';
import { canPunchHoles } from '../io/native.js';
import { NOT_CACHED } from '../pdata/btree.js';
import type { ThinDevice } from '../thin/thin-device.js';
import type { AcknowledgedWrites } from './acknowledged-writes.js';
import type { VolumeHost } from './volume-host.js';

/** Most data-file runs one zero-copy read hands out (the native sender's bound). */
export const MAX_SEND_RUNS = 64;

/** Sends the runs of the data file (descriptor `fd`) now, synchronously; see {@link sendNow}. */
export type RunSender = (fd: number, positions: number[], lengths: number[]) => void;

/**
 * The data file's descriptor when its pages may be handed out by reference (holes can be punched
 * in it, the native addon is there, not turned off), else undefined.
 */
export function sendableFd(dataFile: BlockFile): number | undefined {
  if (process.env.THINPOOL_ZERO_COPY_READS === '0') return undefined;
  const fd = dataFile.fd;
  if (fd === undefined) return undefined;
  try {
    return canPunchHoles(fd) ? fd : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Calls `send` with the data-file runs of `[offset, offset + length)` of `device` and returns
 * true, when that can be done at once: the pool sends by reference ({@link sendableFd}), nobody
 * holds it exclusively, every block of the range is provisioned with its mapping in cached
 * metadata and no acknowledged write of it pending, and there are at most
 * {@link MAX_SEND_RUNS} runs. Otherwise returns false without calling `send`.
 */
export function sendNow(host: VolumeHost, device: ThinDevice, acked: AcknowledgedWrites, offset: number, length: number, send: RunSender): boolean {
  const fd = host.sendableDataFd;
  if (fd === undefined || length === 0) return false;
  const gate = host.gate;
  if (!gate.tryEnterShared()) return false;
  try {
    const bs = host.blockSize;
    const end = offset + length;
    const first = Math.floor(offset / bs);
    const last = Math.floor((end - 1) / bs);
    const positions: number[] = [];
    const lengths: number[] = [];
    let runEnd = -1;
    for (let vb = first; vb <= last; vb++) {
      if (acked.has(vb)) return false;
      const m = device.lookupCached(vb);
      if (m === NOT_CACHED || !m) return false;
      const from = vb === first ? offset - vb * bs : 0;
      const to = vb === last ? end - vb * bs : bs;
      const pos = m.block * bs + from;
      if (pos === runEnd) {
        lengths[lengths.length - 1]! += to - from;
      } else {
        if (positions.length === MAX_SEND_RUNS) return false;
        positions.push(pos);
        lengths.push(to - from);
      }
      runEnd = m.block * bs + to;
    }
    send(fd, positions, lengths);
    return true;
  } finally {
    gate.leaveShared();
  }
}
