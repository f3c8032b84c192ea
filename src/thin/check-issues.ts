/**
 * What the metadata checker reports: the closed set of issue codes with their meaning and usual
 * severity, the report and its summary, and the list issues are collected into (capped; issues
 * past the cap are only counted).
 */
import type { IssueSink } from './check-walk.js';

/** How bad an issue is: `damage` makes the report not ok; a `leak` (space marked used that nothing uses) and a `warning` do not. */
export type IssueSeverity = 'damage' | 'leak' | 'warning';

/** Every issue code the checker can report (a closed set). */
export type IssueCode =
  // superblock (block 0, or the held-root copy)
  | 'superblock-checksum' | 'superblock-blocknr' | 'superblock-magic' | 'superblock-version' | 'superblock-flags'
  | 'superblock-incompat' | 'superblock-compat-ro' | 'superblock-compat' | 'data-block-size' | 'metadata-block-size'
  | 'metadata-nr-blocks' | 'metadata-size' | 'data-nr-blocks'
  // any block
  | 'block-range' | 'block-reused' | 'wrong-block-type'
  // B-tree nodes
  | 'node-checksum' | 'node-blocknr' | 'node-flags' | 'node-max-entries' | 'node-nr-entries' | 'node-value-size'
  | 'node-invalid' | 'node-keys-order' | 'node-underfull' | 'node-cycle' | 'tree-unbalanced' | 'key-range'
  | 'internal-key-high' | 'internal-key-low'
  // space maps
  | 'index-checksum' | 'index-blocknr' | 'index-invalid' | 'bitmap-checksum' | 'bitmap-blocknr' | 'bitmap-invalid'
  | 'data-index-entries' | 'index-nr-free' | 'index-none-free-before' | 'bitmap-tail' | 'nr-allocated'
  | 'overflow-entry'
  // values
  | 'data-block-range' | 'mapping-time' | 'details-time' | 'device-id-range' | 'details-missing'
  | 'mapping-missing' | 'mapped-blocks'
  // reference counts
  | 'metadata-count' | 'metadata-leak' | 'data-count' | 'data-leak' | 'counts-unverified'
  // the report itself
  | 'too-many-issues';

/** What each code means, with its usual severity (for help texts; also the run-time list of the closed set). */
export const ISSUE_CODES: Readonly<Record<IssueCode, string>> = {
  'superblock-checksum': 'damage: the superblock (or the held-root copy) fails its checksum',
  'superblock-blocknr': 'damage: the superblock does not carry its own block number',
  'superblock-magic': 'damage: wrong magic number (the kernel refuses it; thin_check 0.9 does not notice)',
  'superblock-version': 'warning: version other than 2 (the kernel accepts 1 and 3)',
  'superblock-flags': 'warning: unknown flag bits besides NEEDS_CHECK',
  'superblock-incompat': 'damage: incompatible feature flags (the kernel refuses to open)',
  'superblock-compat-ro': 'damage: read-only-compatible feature flags (the kernel refuses read-write)',
  'superblock-compat': 'warning: compatible feature flags set',
  'data-block-size': 'damage: data block size not a multiple of 128 in 128..2097152 sectors',
  'metadata-block-size': 'damage: metadata block size other than 8 sectors',
  'metadata-nr-blocks': 'warning: superblock metadata_nr_blocks above the metadata space map size, or 0',
  'metadata-size': 'damage (bad nr_blocks) or warning (file shorter than the metadata space map)',
  'data-nr-blocks': 'warning: more data blocks than 40-bit block numbers can address',
  'block-range': 'damage: a pointer outside the metadata device (the block holding it is named)',
  'block-reused': 'damage: one block serving as two different structures',
  'wrong-block-type': 'damage: a block carrying the checksum of another block type',
  'node-checksum': 'damage: B-tree node checksum',
  'node-blocknr': 'damage: B-tree node does not carry its own block number',
  'node-flags': 'damage: B-tree node flags neither internal nor leaf',
  'node-max-entries': 'damage: max_entries not a multiple of 3 or not fitting the block',
  'node-nr-entries': 'damage: nr_entries above max_entries',
  'node-value-size': 'damage: value size wrong for the tree',
  'node-invalid': 'damage: B-tree node fails its validator otherwise',
  'node-keys-order': 'damage: keys not strictly increasing',
  'node-underfull': 'damage: non-root node less than a third full, or an internal node with no entries',
  'node-cycle': 'damage: a node is its own ancestor',
  'tree-unbalanced': 'damage: leaves at different depths',
  'key-range': 'damage: a subtree holds keys at or above the next slot of its parent',
  'internal-key-high': 'damage: an internal key above the lowest key below it',
  'internal-key-low': 'warning: an internal key below the lowest key below it (thin_check accepts it)',
  'index-checksum': 'damage: metadata space map index block checksum',
  'index-blocknr': 'damage: metadata space map index block does not carry its own block number',
  'index-invalid': 'damage: metadata space map index block fails its validator otherwise',
  'bitmap-checksum': 'damage: space map bitmap checksum',
  'bitmap-blocknr': 'damage: space map bitmap does not carry its own block number',
  'bitmap-invalid': 'damage: space map bitmap fails its validator otherwise',
  'data-index-entries': 'damage: data space map index keys not exactly 0..bitmaps-1',
  'index-nr-free': 'warning: index entry nr_free matches neither convention',
  'index-none-free-before': 'warning: index entry none_free_before above the first free entry',
  'bitmap-tail': 'warning: nonzero bitmap entries past the end of the space map',
  'nr-allocated': 'warning: space map nr_allocated differs from its nonzero bitmap entries',
  'overflow-entry': 'damage: ref-count tree and bitmap entry 3 disagree, or an entry past the end',
  'data-block-range': 'damage: a mapping to a data block past nr_data_blocks',
  'mapping-time': 'warning: a mapping time after the pool time',
  'details-time': 'warning: a device creation or snapshot time after the pool time',
  'device-id-range': 'warning: a device id above 2^24-1',
  'details-missing': 'damage: a device in the top-level mapping tree without details',
  'mapping-missing': 'damage: a device with details but no mapping tree',
  'mapped-blocks': 'damage: details mapped_blocks differs from the mappings in the tree',
  'metadata-count': 'damage: stored metadata reference count differs from the references found',
  'metadata-leak': 'leak: a metadata block counted once that nothing refers to (counted twice or more: metadata-count)',
  'data-count': 'damage: stored data reference count differs from the mappings found',
  'data-leak': 'leak: a data block counted once that no mapping refers to (counted twice or more: data-count)',
  'counts-unverified': 'warning: counts above those found, not attributable because part of the metadata could not be read',
  'too-many-issues': 'warning: issues beyond the list limit were counted but not listed',
};

export interface CheckIssue {
  severity: IssueSeverity;
  code: IssueCode;
  /** The metadata block at fault (for data reference counts: the data block). */
  block?: number;
  /** Where it was found: tree, path of block numbers from the root, device. */
  where?: string;
  message: string;
}

export interface CheckSummary {
  /** Live thin devices (top-level mapping tree entries). */
  devices: number;
  /** Mappings of the live devices (sum over devices; shared ones count per device). */
  mappings: number;
  /** Metadata blocks referenced by the metadata (recomputed). */
  metadataBlocksUsed: number;
  /** Data blocks referenced by a mapping (recomputed). */
  dataBlocksUsed: number;
  nrMetadataBlocks: number;
  nrDataBlocks: number;
  /** Distinct B-tree nodes read. */
  btreeNodes: number;
  /** References to nodes already walked (shared subtrees). */
  sharedNodeRefs: number;
  /** Block of the held metadata snapshot, 0 when none. */
  heldRoot: number;
  /** Devices in the held metadata snapshot (0 when none). */
  snapshotDevices: number;
  transactionId: number;
  time: number;
  dataBlockSize: number;
  /** Issue counts by severity, including issues left out of the list. */
  damage: number;
  leaks: number;
  warnings: number;
  leakedMetadataBlocks: number;
  leakedDataBlocks: number;
}

export interface CheckReport {
  /** No damage found (leaks and warnings allowed). */
  ok: boolean;
  /** The superblock carries NEEDS_CHECK (a result of its own, not damage). */
  needsCheck: boolean;
  issues: CheckIssue[];
  summary: CheckSummary;
}

export interface CheckOptions {
  /**
   * Also check the values of the held metadata snapshot's trees (details vs mapping trees,
   * mapped_blocks); default true. Its nodes are always walked, since they hold references.
   */
  metadataSnap?: boolean;
  /** Issues listed at most (later ones are only counted); default 1000. */
  maxIssues?: number;
  /** Where the metadata comes from, for messages (default the file's path). */
  name?: string;
}

/** The issues of one check, listed up to a limit and counted by severity. */
export class IssueList implements IssueSink {
  readonly issues: CheckIssue[] = [];
  readonly counts = { damage: 0, leak: 0, warning: 0 };

  constructor(private readonly maxIssues: number) {}

  private add(severity: IssueSeverity, code: IssueCode, message: string, block?: number, where?: string): void {
    this.counts[severity]++;
    if (this.issues.length >= this.maxIssues) return;
    const issue: CheckIssue = { severity, code, message };
    if (block !== undefined) issue.block = block;
    if (where !== undefined) issue.where = where;
    this.issues.push(issue);
  }
  damage(code: string, message: string, block?: number, where?: string): void {
    this.add('damage', code as IssueCode, message, block, where);
  }
  warning(code: string, message: string, block?: number, where?: string): void {
    this.add('warning', code as IssueCode, message, block, where);
  }
  leak(code: IssueCode, message: string, block?: number, where?: string): void {
    this.add('leak', code, message, block, where);
  }
}
