/**
 * CRC-32C (Castagnoli) through `@node-rs/crc32`, which uses the CPU's crc32 instruction.
 */
import { crc32c as hwCrc32c } from '@node-rs/crc32';

/** Standard iSCSI CRC-32C of `bytes` (init ~0, final ~0): `crc32c('123456789') === 0xe3069283`. */
export function crc32c(bytes: Uint8Array): number {
  return hwCrc32c(bytes) >>> 0;
}

/**
 * The checksum dm-thin's persistent-data uses: CRC-32C register after `bytes` with no final
 * inversion, XORed with a per-block-type salt.
 */
export function dmChecksum(bytes: Uint8Array, salt: number): number {
  return (hwCrc32c(bytes) ^ 0xffffffff ^ salt) >>> 0;
}
