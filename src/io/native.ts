/**
 * Host file-system calls Node does not expose: hole punching (fallocate PUNCH_HOLE|KEEP_SIZE)
 * and SEEK_DATA/SEEK_HOLE. Provided by the small N-API addon in `native/` (built by `npm ci`);
 * without it, hole punching falls back to util-linux `fallocate`, and data seeking reports the
 * whole file as data.
 */
import { execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import { readlinkSync } from 'node:fs';

interface NativeAddon {
  punchHole(fd: number, offset: number, length: number): Promise<void>;
  seekData(fd: number, offset: number): Promise<number>;
  seekHole(fd: number, offset: number): Promise<number>;
}

let addon: NativeAddon | null | undefined;
function load(): NativeAddon | null {
  if (addon !== undefined) return addon;
  try {
    const require = createRequire(import.meta.url);
    addon = require('../../../native/build/Release/thinpool_native.node') as NativeAddon;
  } catch {
    addon = null;
  }
  return addon;
}

/** True when the native addon is loaded (hole punching and SEEK_DATA without helpers). */
export function hasNativeAddon(): boolean {
  return load() !== null;
}

/** Deallocates a byte range of an open file without changing its size. */
export async function punchHole(fd: number, offset: number, length: number): Promise<void> {
  const a = load();
  if (a) return a.punchHole(fd, offset, length);
  const path = readlinkSync(`/proc/self/fd/${fd}`);
  await new Promise<void>((resolve, reject) => {
    execFile('fallocate', ['--punch-hole', '--keep-size', '--offset', String(offset), '--length', String(length), path], (err) => (err ? reject(err) : resolve()));
  });
}

/** Offset of the first data byte at or after `offset`, or -1 when only a hole follows. */
export async function seekData(fd: number, offset: number, size: number): Promise<number> {
  const a = load();
  if (a) return a.seekData(fd, offset);
  return offset < size ? offset : -1;
}

/** Offset of the first hole at or after `offset` (the file size when none). */
export async function seekHole(fd: number, offset: number, size: number): Promise<number> {
  const a = load();
  if (a) return a.seekHole(fd, offset);
  return size;
}
