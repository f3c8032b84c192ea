/**
 * The shapes containerd's Snapshotter API speaks in: snapshot info, usage and mounts.
 */
import type { SnapshotKind } from '../pool/catalog-slots.js';

export type { SnapshotKind };

/** A snapshot as Stat/Walk report it (containerd's `snapshots.Info`). */
export interface SnapshotInfo {
  /** The key (active, view) or name (committed). */
  name: string;
  kind: SnapshotKind;
  /** The parent's name, '' when none. */
  parent: string;
  labels: Record<string, string>;
  /** RFC 3339 with nanoseconds. */
  created: string;
  updated: string;
}

/** Resources a snapshot holds itself, its parents' excluded (containerd's `snapshots.Usage`). */
export interface SnapshotUsage {
  /** Bytes of pool blocks the snapshot maps that its parent does not map to the same block. */
  size: number;
  /** Inodes in use beyond the parent's, from the file system's superblock (0 when unknown). */
  inodes: number;
}

/** A mount for the caller to perform (containerd's `mount.Mount`). */
export interface Mount {
  type: string;
  source: string;
  options: string[];
}

/** The file systems a base device can hold. */
export type BaseFs = 'ext4' | 'xfs';
