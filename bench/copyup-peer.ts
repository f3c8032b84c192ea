/**
 * What a system of the copyup suite is ({@link CopyupPeer}), the file it writes into, one sample,
 * and the untimed checks and measures the peers share (du, reading back the write).
 */
import { closeSync, constants, fsyncSync, lstatSync, openSync, readdirSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { now } from './harness.js';

export type Mode = 'system' | 'durable';
export const MODES: readonly Mode[] = ['system', 'durable'];

/** The file every peer writes into: S bytes in a lower layer (or the first S bytes of a device). */
export interface FileUnderTest {
  bytes: number;
  /** The lower layer (a directory) holding the file at `rel`. */
  lowerDir: string;
  rel: string;
  /** `lowerDir/rel`. */
  path: string;
  /** Where the write goes: the middle of the file, 4 KiB aligned. */
  offset: number;
  /** The 4 KiB written. */
  data: Buffer;
}

export interface FirstWriteSample {
  round: number;
  /** The timed first write, in microseconds. */
  micros: number;
  /** Bytes the write put into the new layer (measured, see each peer's `how`). */
  bytesCopied: number;
  /** Space used by the new layer just before the timed write (after its untimed setup). */
  spaceBeforeBytes: number;
  /** Space used by the new layer after the write (see each peer's `how`). */
  spaceAfterBytes: number;
  /** Other timings of the sample, untimed by the figure (e.g. metacopy's chmod), in microseconds. */
  extraMicros?: Record<string, number>;
}

export interface CopyupPeer {
  /** Stable id used in the JSON. */
  id: string;
  /** Name in tables and charts (the mode's cache setting where it differs). */
  label(mode: Mode): string;
  level: 'file' | 'block';
  /** What is timed and measured, per mode (goes into the JSON). */
  how: Record<Mode, string>;
  /** Null when the peer can run here, else why not (not installed, not root, cannot mount). */
  probe(): Promise<string | null>;
  /** Once per file size, untimed. */
  prepare(f: FileUnderTest): Promise<void>;
  sample(f: FileUnderTest, mode: Mode, round: number): Promise<FirstWriteSample>;
  /** After the last sample of a size, untimed. */
  release(f: FileUnderTest): Promise<void>;
  close(): Promise<void>;
}

/** `du -s` in bytes: st_blocks x 512 of a directory and everything under it. */
export function duBytes(dir: string): number {
  let total = lstatSync(dir).blocks * 512;
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    const st = lstatSync(p);
    total += st.isDirectory() ? duBytes(p) : st.blocks * 512;
  }
  return total;
}

/** Reads `len` bytes at `pos` of a file (sync, untimed checks). */
export function preadFile(path: string, pos: number, len: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(len);
    readSync(fd, b, 0, len, pos);
    return b;
  } finally {
    closeSync(fd);
  }
}

/** Checks (untimed) that the new layer reads back the write, and the lower file's bytes just before it. */
export function verify(f: FileUnderTest, got: Buffer, before: Buffer, what: string): void {
  if (!got.equals(f.data)) throw new Error(`${what}: the written 4 KiB do not read back`);
  const lower = preadFile(f.path, f.offset - before.length, before.length);
  if (!before.equals(lower)) throw new Error(`${what}: the bytes before the write differ from the lower file`);
}

/**
 * The timed first write into a file of a mounted file system (overlayfs, the thinpool ext4 row):
 * open, write the 4 KiB in the middle, fsync in durable mode, close. Returns microseconds.
 */
export function timedFileWrite(target: string, f: FileUnderTest, mode: Mode): number {
  const t0 = now();
  const fd = openSync(target, constants.O_WRONLY);
  writeSync(fd, f.data, 0, f.data.length, f.offset);
  if (mode === 'durable') fsyncSync(fd);
  closeSync(fd);
  return (now() - t0) * 1e6;
}
