/**
 * Inodes in use on a device's file system, read from its superblock without mounting it: ext4
 * keeps `s_inodes_count` and `s_free_inodes_count` (little-endian, superblock at byte 1024,
 * magic 0xEF53 at +0x38); xfs keeps `sb_icount` (inodes allocated) and `sb_ifree` (free among
 * them) (big-endian, at bytes 128 and 136 of sector 0, magic `XFSB`). Both are written when the
 * file system is synced or unmounted, so a mounted file system's count lags behind.
 */
import type { ThinVolume } from '../pool/thin-volume.js';

/** Inodes in use, or undefined when the device does not hold a file system of that type. */
export async function usedInodes(vol: ThinVolume, fs: string): Promise<number | undefined> {
  if (fs === 'ext4') {
    if (vol.size < 2048) return undefined;
    const sb = await vol.read(1024, 1024);
    if (sb.readUInt16LE(0x38) !== 0xef53) return undefined;
    return sb.readUInt32LE(0) - sb.readUInt32LE(16);
  }
  if (fs === 'xfs') {
    if (vol.size < 512) return undefined;
    const sb = await vol.read(0, 512);
    if (sb.toString('latin1', 0, 4) !== 'XFSB') return undefined;
    return Number(sb.readBigUInt64BE(128) - sb.readBigUInt64BE(136));
  }
  return undefined;
}
