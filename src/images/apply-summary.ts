/**
 * What applying one layer did: counts per entry kind, content bytes, whiteouts, and what was
 * left out (owners without root, device nodes when asked to skip them, xattrs the file system or
 * the caller's privileges refused, aufs meta entries).
 */

/** One thing a layer asked for that was not done, and why. */
export interface SkippedItem {
  /** The tar entry's name. */
  entry: string;
  /** What was left out: `owner`, `device`, `xattr <name>`, `meta-whiteout`. */
  what: string;
  reason: string;
}

/** Result of {@link applyLayer}. */
export interface ApplySummary {
  /** Tar entries read (PAX and GNU long-name headers are not entries). */
  entries: number;
  files: number;
  dirs: number;
  symlinks: number;
  hardlinks: number;
  devices: number;
  fifos: number;
  /** Bytes of regular file content in the layer. */
  bytes: number;
  /** Of {@link bytes}, those written to disk (whole zero blocks become holes). */
  bytesWritten: number;
  /** `.wh.NAME` entries that removed something from a lower layer. */
  whiteouts: number;
  /** `.wh..wh..opq` markers applied (directories emptied of lower content). */
  opaqueDirs: number;
  /** Entries whose owner was not applied (not running as root, or `owners: false`). */
  ownersSkipped: number;
  /** The first {@link MAX_SKIPPED} things left out; {@link skippedCount} counts them all. */
  skipped: SkippedItem[];
  skippedCount: number;
}

/** How many skipped items a summary lists (all are counted). */
export const MAX_SKIPPED = 100;

/** A summary with every count at zero. */
export function emptySummary(): ApplySummary {
  return {
    entries: 0,
    files: 0,
    dirs: 0,
    symlinks: 0,
    hardlinks: 0,
    devices: 0,
    fifos: 0,
    bytes: 0,
    bytesWritten: 0,
    whiteouts: 0,
    opaqueDirs: 0,
    ownersSkipped: 0,
    skipped: [],
    skippedCount: 0,
  };
}

/** Records something left out. */
export function noteSkipped(s: ApplySummary, item: SkippedItem): void {
  s.skippedCount++;
  if (s.skipped.length < MAX_SKIPPED) s.skipped.push(item);
}
