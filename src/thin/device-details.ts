/**
 * Device details, the value of the details tree (key = device id).
 *
 * ```
 * off size field
 *   0   8  mapped_blocks     number of mappings of the device
 *   8   8  transaction_id    pool transaction id when the device was created
 *  16   4  creation_time     pool time at creation
 *  20   4  snapshotted_time  pool time of the last snapshot of or as this device
 * ```
 */
import { readU64, writeU64 } from '../pdata/block-manager.js';
import type { ValueType } from '../pdata/btree.js';

export interface DeviceDetails {
  mappedBlocks: number;
  transactionId: number;
  creationTime: number;
  snapshottedTime: number;
}

export const deviceDetailsValue: ValueType<DeviceDetails> = {
  size: 24,
  unpack: (v, o) => ({
    mappedBlocks: readU64(v, o),
    transactionId: readU64(v, o + 8),
    creationTime: v.getUint32(o + 16, true),
    snapshottedTime: v.getUint32(o + 20, true),
  }),
  pack: (v, o, d) => {
    writeU64(v, o, d.mappedBlocks);
    writeU64(v, o + 8, d.transactionId);
    v.setUint32(o + 16, d.creationTime >>> 0, true);
    v.setUint32(o + 20, d.snapshottedTime >>> 0, true);
  },
};
