/**
 * The catalog log (`catalog.log`): what each commit changed in the catalog, appended in place
 * to a preallocated file, so a commit writes what changed and not every record.
 *
 * Entry layout (little-endian), entries back to back from offset 0:
 *
 * | offset | size | field |
 * |---|---|---|
 * | 0 | 4 | magic `0x454c5054` ("TPLE") |
 * | 4 | 4 | payload bytes |
 * | 8 | 4 | epoch: the generation of the checkpoint this entry follows |
 * | 12 | 4 | sequence: 1 for the first entry after the checkpoint, then +1 |
 * | 16 | 4 | tag: checksum of the superblock committed with this entry |
 * | 20 | 4 | previous: crc of the point this entry follows (the checkpoint body's crc, or the previous entry's crc) |
 * | 24 | 4 | crc32c of bytes 0..23 and the payload |
 * | 28 | n | payload: JSON {@link CatalogChange} (empty for a commit that changed no record) |
 *
 * An entry counts only when its magic, crc, epoch, sequence and previous crc all fit, so
 * zeros, a torn entry, the leftovers of an older epoch or of an uncommitted entry that a later
 * one overwrote end the chain.
 */
import { crc32c } from '../io/crc32c.js';
import type { DeviceRecord, OutsideChanges, PoolSettings } from './catalog-slots.js';

/** What one commit changed in the catalog. */
export interface CatalogChange {
  /** Records created or changed (the whole record). */
  put?: DeviceRecord[];
  /** Ids whose records were removed. */
  del?: number[];
  /** The settings, when they changed. */
  settings?: PoolSettings;
  /** The outside-changes report, when it changed (null: cleared). */
  outsideChanges?: OutsideChanges | null;
}

/** A decoded entry. */
export interface LogEntry {
  epoch: number;
  seq: number;
  tag: number;
  prev: number;
  crc: number;
  /** Where it starts in the log and how many bytes it takes (header included). */
  offset: number;
  bytes: number;
  change: CatalogChange;
}

export const ENTRY_MAGIC = 0x454c5054;
export const ENTRY_HEADER_BYTES = 28;

/** Encodes an entry. */
export function encodeEntry(epoch: number, seq: number, tag: number, prev: number, change: CatalogChange): { bytes: Buffer; crc: number } {
  const empty = change.put === undefined && change.del === undefined && change.settings === undefined && change.outsideChanges === undefined;
  const payload = empty ? Buffer.alloc(0) : Buffer.from(JSON.stringify(change));
  const out = Buffer.allocUnsafe(ENTRY_HEADER_BYTES + payload.length);
  out.writeUInt32LE(ENTRY_MAGIC, 0);
  out.writeUInt32LE(payload.length, 4);
  out.writeUInt32LE(epoch >>> 0, 8);
  out.writeUInt32LE(seq >>> 0, 12);
  out.writeUInt32LE(tag >>> 0, 16);
  out.writeUInt32LE(prev >>> 0, 20);
  payload.copy(out, ENTRY_HEADER_BYTES);
  const crc = entryCrc(out, payload.length);
  out.writeUInt32LE(crc, 24);
  return { bytes: out, crc };
}

function entryCrc(buf: Buffer, payloadBytes: number): number {
  return crc32c(Buffer.concat([buf.subarray(0, 24), buf.subarray(ENTRY_HEADER_BYTES, ENTRY_HEADER_BYTES + payloadBytes)]));
}

/** The entry at `offset` of `log`, or undefined when there is none there (or it is damaged). */
export function decodeEntry(log: Buffer, offset: number): LogEntry | undefined {
  if (offset + ENTRY_HEADER_BYTES > log.length || log.readUInt32LE(offset) !== ENTRY_MAGIC) return undefined;
  const len = log.readUInt32LE(offset + 4);
  if (offset + ENTRY_HEADER_BYTES + len > log.length) return undefined;
  const view = log.subarray(offset, offset + ENTRY_HEADER_BYTES + len);
  const crc = view.readUInt32LE(24);
  if (entryCrc(view, len) !== crc) return undefined;
  let change: CatalogChange = {};
  if (len > 0) {
    try {
      change = JSON.parse(view.subarray(ENTRY_HEADER_BYTES).toString('utf8')) as CatalogChange;
    } catch {
      return undefined;
    }
  }
  return {
    epoch: view.readUInt32LE(8), seq: view.readUInt32LE(12), tag: view.readUInt32LE(16), prev: view.readUInt32LE(20), crc,
    offset, bytes: ENTRY_HEADER_BYTES + len, change,
  };
}

/**
 * The chain of entries that follows the checkpoint of generation `epoch` whose body crc is
 * `checkpointCrc`: entries from offset 0 while each is valid, of that epoch, numbered 1, 2, ...
 * and chained to the one before.
 */
export function readChain(log: Buffer, epoch: number, checkpointCrc: number): LogEntry[] {
  const out: LogEntry[] = [];
  let offset = 0;
  let prev = checkpointCrc >>> 0;
  for (;;) {
    const e = decodeEntry(log, offset);
    if (!e || e.epoch !== epoch >>> 0 || e.seq !== out.length + 1 || e.prev !== prev) return out;
    out.push(e);
    prev = e.crc;
    offset += e.bytes;
  }
}
