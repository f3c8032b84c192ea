/**
 * Full, independent check of dm-thin metadata (our `thin_check`).
 *
 * Reads raw blocks through a {@link BlockManager} and the validators of `pdata` and the
 * superblock, never through {@link ThinMetadata} (which stops at the first damage), and walks
 * everything reachable from the superblock: both mapping levels, the details tree, both space
 * maps and the held metadata snapshot. It recomputes every metadata and data reference count
 * and compares them with the stored space maps. Damage never throws: it becomes an issue, the
 * damaged block's subtree is skipped and the rest is still checked. Only I/O errors throw.
 *
 * @example
 * const f = await FileBlockFile.open('pool/metadata', { readOnly: true });
 * const report = await checkMetadata(f);
 * console.log(formatReport(report));
 * process.exitCode = report.ok ? 0 : 1;
 */
import type { BlockFile } from '../io/block-file.js';
import { BLOCK_SIZE, type Block, BlockManager, readU64 } from '../pdata/block-manager.js';
import { keyAt, keyHi, keyLo, valueOffset } from '../pdata/btree-node.js';
import {
  BITMAP_BYTES, BITMAP_HEADER_SIZE, ENTRIES_PER_BITMAP, FREE_IN_BYTE, INDEX_ENTRY_SIZE, type IndexEntry,
  MAX_METADATA_BLOCKS, bitmapValidator, getEntry, indexBlockValidator, unpackIndexEntry,
} from '../pdata/space-map-disk.js';
import { MAX_DATA_BLOCK, TIME_MASK } from './block-time.js';
import { BAD, Claim, DataCounts, type IssueSink, type TreeSpec, Walker, validate } from './check-walk.js';
import {
  MAX_DEVICE_ID, NEEDS_CHECK_FLAG, type Superblock, THIN_MAGIC, THIN_VERSION, superblockValidator, unpackSuperblock,
  validDataBlockSize,
} from './superblock.js';

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
  'metadata-leak': 'leak: a metadata block counted as used that nothing refers to',
  'data-count': 'damage: stored data reference count differs from the mappings found',
  'data-leak': 'leak: a data block counted as used that no mapping refers to',
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

const KERNEL_META_LIMIT = MAX_METADATA_BLOCKS;

interface DeviceEntry {
  root: number;
  leaf: number;
}
interface DetailsEntry {
  mappedBlocks: number;
  creationTime: number;
  snapshottedTime: number;
  leaf: number;
}

interface View {
  label: string;
  sb: Superblock;
  devices: Map<number | bigint, DeviceEntry>;
  details: Map<number | bigint, DetailsEntry>;
  topRoot: number;
  detailsRoot: number;
  topOk: boolean;
  detailsOk: boolean;
}

class Checker implements IssueSink {
  readonly issues: CheckIssue[] = [];
  readonly counts = { damage: 0, leak: 0, warning: 0 };
  private readonly maxIssues: number;
  walker!: Walker;
  private data = new DataCounts();
  summary: CheckSummary = {
    devices: 0, mappings: 0, metadataBlocksUsed: 0, dataBlocksUsed: 0, nrMetadataBlocks: 0, nrDataBlocks: 0, btreeNodes: 0,
    sharedNodeRefs: 0, heldRoot: 0, snapshotDevices: 0, transactionId: 0, time: 0, dataBlockSize: 0, damage: 0, leaks: 0,
    warnings: 0, leakedMetadataBlocks: 0, leakedDataBlocks: 0,
  };
  needsCheck = false;
  private nrData = 0;
  /** Stored metadata bitmaps (undefined when unreadable), entry bytes only. */
  private metaBits: Array<Uint8Array | undefined> = [];
  private metaOverflow = new Map<number, number>();
  private metaOverflowOk = true;
  private dataOverflow = new Map<number, number>();
  private dataOverflowOk = true;

  constructor(private readonly file: BlockFile, private readonly opts: CheckOptions) {
    this.maxIssues = opts.maxIssues ?? 1000;
  }

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

  async run(): Promise<void> {
    const fileBlocks = Math.floor((await this.file.size()) / BLOCK_SIZE);
    if (fileBlocks < 1) {
      this.damage('metadata-size', `Cannot check ${this.opts.name ?? this.file.path}: the file holds no complete 4 KiB block, expected a superblock at block 0`);
      return;
    }
    const bm = new BlockManager(this.file, fileBlocks);
    const sbBlock = await bm.readRaw(0);
    const sb = this.checkSuperblock(sbBlock, 0, 'superblock');
    if (!sb) return;
    const s = this.summary;
    s.transactionId = sb.transactionId;
    s.time = sb.time;
    s.dataBlockSize = sb.dataBlockSize;
    s.heldRoot = sb.heldRoot;
    this.needsCheck = (sb.flags & NEEDS_CHECK_FLAG) !== 0;

    // Size of the metadata device: the metadata space map's nr_blocks is authoritative.
    const smNr = sb.metadataSm.nrBlocks;
    let limit = fileBlocks;
    let smUsable = true;
    if (!Number.isSafeInteger(smNr) || smNr < 1 || smNr > KERNEL_META_LIMIT) {
      this.damage('metadata-size', `Cannot use the metadata space map: nr_blocks ${smNr}, expected 1..${KERNEL_META_LIMIT}`, 0, 'superblock');
      smUsable = false;
      limit = Math.min(fileBlocks, KERNEL_META_LIMIT);
    } else if (smNr > fileBlocks) {
      // A truncated copy: fine as long as nothing reachable lies past the end (pointers there are damage).
      this.warning('metadata-size', `The metadata space map covers ${smNr} blocks but the file holds ${fileBlocks}, expected at most ${fileBlocks}`, 0, 'superblock');
      limit = fileBlocks;
    } else {
      limit = smNr;
    }
    if (sb.metadataNrBlocks === 0 || sb.metadataNrBlocks > smNr) {
      this.warning('metadata-nr-blocks', `Superblock metadata_nr_blocks is ${sb.metadataNrBlocks}, expected at most the metadata space map's ${smNr} (the kernel leaves it at the size it formatted)`, 0, 'superblock');
    }
    s.nrMetadataBlocks = smUsable ? smNr : limit;
    this.nrData = sb.dataSm.nrBlocks;
    s.nrDataBlocks = this.nrData;
    if (this.nrData > MAX_DATA_BLOCK + 1) {
      this.warning('data-nr-blocks', `Data space map nr_blocks is ${this.nrData}, expected at most 2^40 (mappings store 40-bit block numbers)`, 0, 'superblock');
    }

    const w = (this.walker = new Walker(bm, limit, this));
    w.refs[0] = 1;
    w.claims[0] = Claim.superblock;

    if (smUsable) await this.loadMetadataSpaceMap(bm, sb, smNr);
    else w.metaIncomplete = true;

    // Live trees.
    const live = await this.walkView('', sb);
    // Held metadata snapshot.
    let snap: View | undefined;
    if (sb.heldRoot !== 0) {
      const h = sb.heldRoot;
      if (w.reference(h, Claim.superblock, 'held metadata snapshot', 'superblock held_root', 0)) {
        const held = this.checkSuperblock(await bm.readRaw(h), h, 'held metadata snapshot');
        if (held) snap = await this.walkView('metadata snapshot ', held);
        else w.metaIncomplete = w.dataIncomplete = true;
      } else {
        w.metaIncomplete = w.dataIncomplete = true;
      }
    }
    this.compareView(live);
    if (snap && this.opts.metadataSnap !== false) this.compareView(snap);
    s.devices = live.devices.size;
    let mappings = 0;
    for (const d of live.devices.values()) mappings += w.entriesOf(d.root)?.entries ?? 0;
    s.mappings = mappings;
    s.snapshotDevices = snap ? snap.devices.size : 0;

    await this.checkDataSpaceMap(bm, sb);
    if (smUsable) this.compareMetadataCounts(smNr, sb);

    let used = 0;
    for (let b = 0; b < limit; b++) if (w.refs[b]) used++;
    s.metadataBlocksUsed = used;
    s.dataBlocksUsed = this.data.used;
    s.btreeNodes = w.nodes;
    s.sharedNodeRefs = w.sharedRefs;
  }

  /** Validates a superblock (block 0 or the held copy); returns it unless it is unusable. */
  private checkSuperblock(b: Block, nr: number, what: string): Superblock | undefined {
    const bad = validate(b, superblockValidator, 'superblock');
    const sb = unpackSuperblock(b);
    let csumOk = true;
    if (bad) {
      const [code, message] = bad;
      if (code === 'superblock-checksum' || code === 'wrong-block-type') csumOk = false;
      this.damage(code, message, nr, what);
    }
    if (!csumOk || bad?.[0] === 'superblock-blocknr') {
      // The validator stopped early: check what it did not get to.
      if (!csumOk && sb.blocknr !== nr) this.damage('superblock-blocknr', `Cannot read ${what} at block ${nr}: it says it is block ${sb.blocknr}`, nr, what);
      if (sb.magic !== THIN_MAGIC) this.damage('superblock-magic', `Cannot read ${what} at block ${nr}: magic ${sb.magic}, expected ${THIN_MAGIC}`, nr, what);
    }
    if (!csumOk && sb.magic !== THIN_MAGIC) return undefined;
    if (sb.version !== THIN_VERSION) this.warning('superblock-version', `${cap(what)} version is ${sb.version}, expected ${THIN_VERSION}`, nr, what);
    if (sb.flags & ~NEEDS_CHECK_FLAG) this.warning('superblock-flags', `${cap(what)} has unknown flags ${sb.flags}, expected only bit 0 (needs_check)`, nr, what);
    if (sb.incompatFlags) this.damage('superblock-incompat', `Cannot interpret the metadata: ${what} has incompatible feature flags ${sb.incompatFlags}, expected 0`, nr, what);
    if (sb.compatRoFlags) this.damage('superblock-compat-ro', `Cannot write the metadata: ${what} has read-only-compatible feature flags ${sb.compatRoFlags} no writer here knows, expected 0`, nr, what);
    if (sb.compatFlags) this.warning('superblock-compat', `${cap(what)} has compatible feature flags ${sb.compatFlags}, expected 0`, nr, what);
    if (!validDataBlockSize(sb.dataBlockSize)) this.damage('data-block-size', `Cannot use ${what}: data block size ${sb.dataBlockSize} sectors, expected a multiple of 128 in 128..2097152`, nr, what);
    if (sb.metadataBlockSize !== 8) this.damage('metadata-block-size', `Cannot use ${what}: metadata block size ${sb.metadataBlockSize} sectors, expected 8`, nr, what);
    return sb;
  }

  private async loadMetadataSpaceMap(bm: BlockManager, sb: Superblock, smNr: number): Promise<void> {
    const w = this.walker;
    const idx = sb.metadataSm.bitmapRoot;
    const nrBitmaps = Math.ceil(smNr / ENTRIES_PER_BITMAP);
    this.metaBits = new Array(nrBitmaps).fill(undefined);
    if (!w.reference(idx, Claim.metadataIndex, 'metadata space map index', 'superblock metadata space map', 0)) {
      w.metaIncomplete = true;
    } else {
      const b = await bm.readRaw(idx);
      const bad = validate(b, indexBlockValidator, 'index');
      if (bad) {
        this.damage(bad[0], bad[1], idx, 'metadata space map index');
        w.metaIncomplete = true;
      } else {
        const entries: IndexEntry[] = [];
        for (let k = 0; k < nrBitmaps; k++) entries.push(unpackIndexEntry(b.view, 16 + k * INDEX_ENTRY_SIZE));
        const blocks = await Promise.all(entries.map((e, k) => this.readBitmap(bm, e.blocknr, Claim.metadataBitmap, `metadata space map index ${idx}, entry ${k}`, idx)));
        blocks.forEach((bits, k) => {
          if (!bits) return;
          this.metaBits[k] = bits;
          this.checkIndexEntry(entries[k]!, bits, Math.min(ENTRIES_PER_BITMAP, smNr - k * ENTRIES_PER_BITMAP), `metadata space map index ${idx}, entry ${k}`, idx);
        });
      }
    }
    const rc = sb.metadataSm.refCountRoot;
    const spec: TreeSpec = {
      claim: Claim.metadataRefCount, name: 'metadata ref-count tree', valueSize: 4, carriesData: false,
      leaf: (node, n) => {
        for (let i = 0; i < n; i++) {
          const k = keyAt(node, i);
          const v = node.view.getUint32(valueOffset(node, i), true);
          if (typeof k !== 'number' || k >= smNr) {
            this.damage('overflow-entry', `Cannot use metadata ref-count tree entry for block ${k}: past the end of the metadata space map, expected below ${smNr}`, node.nr, 'metadata ref-count tree');
            continue;
          }
          this.metaOverflow.set(k, v);
        }
      },
    };
    if ((await w.walk(rc, spec, 'superblock metadata space map', 0)) === BAD) this.metaOverflowOk = false;
  }

  /** Reads and validates a bitmap block; returns its entry bytes, or undefined when unusable. */
  private async readBitmap(bm: BlockManager, nr: number, claim: number, where: string, from: number): Promise<Uint8Array | undefined> {
    if (!this.walker.reference(nr, claim, 'space map bitmap', where, from)) return undefined;
    const b = await bm.readRaw(nr);
    const bad = validate(b, bitmapValidator, 'bitmap');
    if (bad) {
      this.damage(bad[0], bad[1], nr, where);
      return undefined;
    }
    return b.data.subarray(BITMAP_HEADER_SIZE, BITMAP_HEADER_SIZE + BITMAP_BYTES);
  }

  /** nr_free in either convention, none_free_before a lower bound, zero entries past the end. */
  private checkIndexEntry(e: IndexEntry, bits: Uint8Array, valid: number, where: string, block: number): void {
    let freeAll = 0;
    for (let j = 0; j < BITMAP_BYTES; j++) freeAll += FREE_IN_BYTE[bits[j]!]!;
    let tail = 0;
    for (let i = valid; i < ENTRIES_PER_BITMAP; i++) if (getEntry(bits, i)) tail++;
    const freeValid = freeAll - (ENTRIES_PER_BITMAP - valid - tail);
    if (tail) this.warning('bitmap-tail', `Bitmap ${e.blocknr} has ${tail} nonzero entries past the end of the space map (${valid} valid entries), expected 0`, e.blocknr, where);
    if (e.nrFree !== freeAll && e.nrFree !== freeValid) {
      this.warning('index-nr-free', `Index entry for bitmap ${e.blocknr} says nr_free ${e.nrFree}, expected ${freeAll} (all entries) or ${freeValid} (valid entries)`, block, where);
    }
    let firstFree = -1;
    for (let i = 0; i < valid; i++) {
      if (getEntry(bits, i) === 0) {
        firstFree = i;
        break;
      }
    }
    if (firstFree >= 0 && e.noneFreeBefore > firstFree) {
      this.warning('index-none-free-before', `Index entry for bitmap ${e.blocknr} says none_free_before ${e.noneFreeBefore}, but entry ${firstFree} is free, expected at most ${firstFree}`, block, where);
    }
  }

  private async walkView(label: string, sb: Superblock): Promise<View> {
    const w = this.walker;
    const view: View = { label, sb, devices: new Map(), details: new Map(), topRoot: sb.dataMappingRoot, detailsRoot: sb.deviceDetailsRoot, topOk: false, detailsOk: false };
    const none = () => undefined;
    const detailsSpec: TreeSpec = { claim: Claim.details, name: `${label}device details tree`, valueSize: 24, carriesData: false, leaf: none };
    // A tree with an unreadable subtree cannot say which keys are missing from it.
    view.detailsOk = (await w.walk(sb.deviceDetailsRoot, detailsSpec, `${label}superblock`, sb.blocknr)) !== BAD && !w.entriesOf(sb.deviceDetailsRoot)!.partial;
    await w.leaves(sb.deviceDetailsRoot, Claim.details, (node, n) => {
        for (let i = 0; i < n; i++) {
          const off = valueOffset(node, i);
          view.details.set(devKey(node, i), {
            mappedBlocks: readU64(node.view, off),
            creationTime: node.view.getUint32(off + 16, true),
            snapshottedTime: node.view.getUint32(off + 20, true),
            leaf: node.nr,
          });
        }
    });
    // Bottom roots are referenced once per top-level leaf entry: leaves shared with a tree walked
    // before (live and snapshot) add no reference, so only newly walked leaves' entries are followed.
    const pending: Array<{ id: number | bigint; root: number; leaf: number }> = [];
    const topSpec: TreeSpec = {
      claim: Claim.topLevel, name: `${label}top-level mapping tree`, valueSize: 8, carriesData: true,
      leaf: (node, n) => {
        for (let i = 0; i < n; i++) pending.push({ id: devKey(node, i), root: readU64(node.view, valueOffset(node, i)), leaf: node.nr });
      },
    };
    view.topOk = (await w.walk(sb.dataMappingRoot, topSpec, `${label}superblock`, sb.blocknr)) !== BAD && !w.entriesOf(sb.dataMappingRoot)!.partial;
    for (const { id, root, leaf } of pending) {
      if (typeof id !== 'number' || id > MAX_DEVICE_ID) {
        this.warning('device-id-range', `Thin device id ${id} is above ${MAX_DEVICE_ID}, expected a 24-bit id (the kernel refuses larger ones)`, leaf, `${label}top-level mapping tree`);
      }
      await w.walk(root, this.bottomSpec(`${label}mapping tree of device ${id}`, sb), `${label}top-level mapping tree leaf ${leaf}, device ${id}`, leaf);
    }
    await w.leaves(sb.dataMappingRoot, Claim.topLevel, (node, n) => {
      for (let i = 0; i < n; i++) view.devices.set(devKey(node, i), { root: readU64(node.view, valueOffset(node, i)), leaf: node.nr });
    });
    return view;
  }

  private bottomSpec(name: string, sb: Superblock): TreeSpec {
    const nrData = this.nrData;
    const data = this.data;
    const poolTime = sb.time;
    const checkTime = poolTime <= TIME_MASK;
    return {
      claim: Claim.bottomLevel, name, valueSize: 8, carriesData: true,
      leaf: (node, n, where) => {
        const view = node.view;
        const base = valueOffset(node, 0);
        let past = 0, firstPast = -1, late = 0, maxTime = 0;
        for (let i = 0; i < n; i++) {
          const lo = view.getUint32(base + 8 * i, true);
          const hi = view.getUint32(base + 8 * i + 4, true);
          const block = hi * 256 + (lo >>> 24);
          const time = lo & TIME_MASK;
          if (block < nrData) data.inc(block);
          else if (past++ === 0) firstPast = i;
          if (checkTime && time > poolTime) {
            late++;
            if (time > maxTime) maxTime = time;
          }
        }
        if (past) {
          const bt = view.getUint32(base + 8 * firstPast + 4, true) * 256 + (view.getUint32(base + 8 * firstPast, true) >>> 24);
          this.damage('data-block-range', `Cannot map ${past} block(s) of leaf ${node.nr} past the end of the pool (first: virtual block ${keyAt(node, firstPast)} -> data block ${bt}), expected data blocks below ${nrData}`, node.nr, where());
        }
        if (late) {
          this.warning('mapping-time', `${late} mapping(s) in leaf ${node.nr} carry a time after the pool time ${poolTime} (latest ${maxTime}), expected at most ${poolTime}`, node.nr, where());
        }
      },
    };
  }

  /** Details keys == top-level keys; mapped_blocks == mappings; times not after the pool time. */
  private compareView(v: View): void {
    const w = this.walker;
    const where = `${v.label}device details tree`;
    if (v.detailsOk) {
      for (const [id, d] of v.devices) {
        if (!v.details.has(id)) this.damage('details-missing', `Cannot find the details of thin device ${id}: it has a mapping tree (root ${d.root}) but no entry in the ${v.label}details tree, expected one`, v.detailsRoot, where);
      }
    }
    if (v.topOk) {
      for (const [id, d] of v.details) {
        if (!v.devices.has(id)) this.damage('mapping-missing', `Cannot find the mapping tree of thin device ${id}: it has details (leaf ${d.leaf}) but no entry in the ${v.label}top-level mapping tree, expected one`, v.topRoot, `${v.label}top-level mapping tree`);
      }
    }
    const poolTime = v.sb.time;
    for (const [id, d] of v.details) {
      const dev = v.devices.get(id);
      const sum = dev ? w.entriesOf(dev.root) : undefined;
      if (sum && !sum.partial && sum.entries !== d.mappedBlocks) {
        this.damage('mapped-blocks', `Cannot match the details of thin device ${id}: mapped_blocks ${d.mappedBlocks}, expected ${sum.entries} (the mappings in its tree)`, d.leaf, `${where}, device ${id}`);
      }
      if (d.creationTime > poolTime || d.snapshottedTime > poolTime) {
        this.warning('details-time', `Thin device ${id} has creation time ${d.creationTime} and snapshot time ${d.snapshottedTime}, expected at most the pool time ${poolTime}`, d.leaf, `${where}, device ${id}`);
      }
    }
  }

  private async checkDataSpaceMap(bm: BlockManager, sb: Superblock): Promise<void> {
    const w = this.walker;
    const nr = this.nrData;
    const refSpec: TreeSpec = {
      claim: Claim.dataRefCount, name: 'data ref-count tree', valueSize: 4, carriesData: false,
      leaf: (node, n, where) => {
        for (let i = 0; i < n; i++) {
          const k = keyAt(node, i);
          const v = node.view.getUint32(valueOffset(node, i), true);
          if (typeof k !== 'number' || k >= nr) {
            this.damage('overflow-entry', `Cannot use data ref-count tree entry for data block ${k}: past the end of the pool, expected below ${nr}`, node.nr, where());
            continue;
          }
          this.dataOverflow.set(k, v);
        }
      },
    };
    if ((await w.walk(sb.dataSm.refCountRoot, refSpec, 'superblock data space map', 0)) === BAD) this.dataOverflowOk = false;

    const entries = new Map<number, { e: IndexEntry; leaf: number }>();
    const want = Math.ceil(nr / ENTRIES_PER_BITMAP);
    let extra = 0;
    const indexSpec: TreeSpec = {
      claim: Claim.dataIndex, name: 'data space map index tree', valueSize: 16, carriesData: false,
      leaf: (node, n) => {
        for (let i = 0; i < n; i++) {
          const k = keyAt(node, i);
          const e = unpackIndexEntry(node.view, valueOffset(node, i));
          if (typeof k === 'number' && k < want) entries.set(k, { e, leaf: node.nr });
          else {
            extra++;
            // Still the bitmap's one reference, so the metadata counts stay comparable.
            if (e.blocknr > 0 && e.blocknr < w.limit) w.reference(e.blocknr, Claim.dataBitmap, 'space map bitmap', `data space map index leaf ${node.nr}`, node.nr);
          }
        }
      },
    };
    const indexOk = (await w.walk(sb.dataSm.bitmapRoot, indexSpec, 'superblock data space map', 0)) !== BAD;
    if (extra) this.damage('data-index-entries', `Cannot use ${extra} data space map index entries: keys at or past ${want}, expected keys 0..${want - 1} for ${nr} data blocks`, sb.dataSm.bitmapRoot, 'data space map index tree');
    // Bounded by the entries found, not by nr_blocks (which may be garbage).
    const keys = [...entries.keys()].sort((a, b) => a - b);
    const missing = want - keys.length;
    let firstMissing = keys.length;
    for (let j = 0; j < keys.length; j++) {
      if (keys[j] !== j) {
        firstMissing = j;
        break;
      }
    }
    if (missing && indexOk) {
      this.damage('data-index-entries', `Cannot find ${missing} data space map index entries (first: bitmap ${firstMissing}), expected keys 0..${want - 1} for ${nr} data blocks`, sb.dataSm.bitmapRoot, 'data space map index tree');
    }

    // Stream the bitmaps: compare stored counts with the recomputed ones.
    let storedNonzero = 0;
    let complete = missing === 0;
    let unverified = 0;
    const unverifiedFirst: number[] = [];
    const data = this.data;
    const overflow = this.dataOverflow;
    const seenOverflow = new Set<number>();
    const verified = new Set<number>();
    const BATCH = 32;
    for (let j0 = 0; j0 < keys.length; j0 += BATCH) {
      const ks = keys.slice(j0, j0 + BATCH);
      const bitsList = await Promise.all(ks.map((k) => this.readBitmap(bm, entries.get(k)!.e.blocknr, Claim.dataBitmap, `data space map index leaf ${entries.get(k)!.leaf}, bitmap ${k}`, entries.get(k)!.leaf)));
      for (let j = 0; j < ks.length; j++) {
        const k = ks[j]!;
        const bits = bitsList[j];
        if (!bits) {
          complete = false;
          continue;
        }
        const base = k * ENTRIES_PER_BITMAP;
        const valid = Math.min(ENTRIES_PER_BITMAP, nr - base);
        const { e, leaf } = entries.get(k)!;
        this.checkIndexEntry(e, bits, valid, `data space map index leaf ${leaf}, bitmap ${k}`, leaf);
        verified.add(k);
        const chunk = data.chunk(k);
        for (let i = 0; i < valid; i++) {
          const byte = bits[i >>> 2]!;
          if (byte === 0 && (i & 3) === 0 && !chunk) {
            i += 3;
            continue;
          }
          let stored = getEntry(bits, i);
          const want2 = chunk ? data.at(chunk, k, i) : 0;
          if (stored) storedNonzero++;
          const b = base + i;
          let atLeast = false;
          if (stored === 3) {
            const o = overflow.get(b);
            if (o !== undefined) {
              seenOverflow.add(b);
              if (o < 3) {
                this.damage('overflow-entry', `Cannot use the data ref-count tree entry for data block ${b}: count ${o}, expected at least 3 (its bitmap entry is 3)`, b, 'data ref-count tree');
              }
              stored = o;
            } else if (this.dataOverflowOk) {
              this.damage('overflow-entry', `Cannot find data block ${b} in the data ref-count tree: its bitmap entry says 3 or more, expected an entry`, b, 'data ref-count tree');
              atLeast = true;
            } else {
              atLeast = true;
            }
          }
          if (stored === want2 || (atLeast && want2 >= 3)) continue;
          this.countMismatch('data', b, stored, want2, w.dataIncomplete, (n) => {
            unverified++;
            if (unverifiedFirst.length < 8) unverifiedFirst.push(n);
          });
        }
      }
    }
    for (const [b, o] of overflow) {
      if (!seenOverflow.has(b) && verified.has(Math.floor(b / ENTRIES_PER_BITMAP))) {
        this.damage('overflow-entry', `Cannot use the data ref-count tree entry for data block ${b} (count ${o}): its bitmap entry is not 3, expected 3`, b, 'data ref-count tree');
      }
    }
    if (unverified) {
      this.warning('counts-unverified', `${unverified} data block(s) have stored reference counts above those found (first: ${unverifiedFirst.join(', ')}); part of the mapping trees could not be read, so they are not reported as damage or leaks`, undefined, 'data space map');
    }
    if (complete && storedNonzero !== sb.dataSm.nrAllocated) {
      this.warning('nr-allocated', `Data space map nr_allocated is ${sb.dataSm.nrAllocated}, expected ${storedNonzero} (nonzero bitmap entries)`, 0, 'superblock data space map');
    }
  }

  private countMismatch(kind: 'data' | 'metadata', b: number, stored: number, found: number, incomplete: boolean, defer: (b: number) => void): void {
    const unit = kind === 'data' ? 'data block' : 'metadata block';
    if (stored > found && incomplete) {
      defer(b);
      return;
    }
    if (found === 0) {
      if (kind === 'data') this.summary.leakedDataBlocks++;
      else this.summary.leakedMetadataBlocks++;
      this.leak(kind === 'data' ? 'data-leak' : 'metadata-leak', `Cannot account for ${unit} ${b}: the space map counts ${stored} reference(s) but nothing refers to it, expected 0 (leaked)`, b, `${kind} space map`);
      return;
    }
    this.damage(kind === 'data' ? 'data-count' : 'metadata-count', `Cannot account for ${unit} ${b}: the space map counts ${stored} reference(s), expected ${found} (found by walking the metadata)`, b, `${kind} space map`);
  }

  private compareMetadataCounts(smNr: number, sb: Superblock): void {
    const w = this.walker;
    const refs = w.refs;
    const limit = w.limit;
    let storedNonzero = 0;
    let complete = true;
    let unverified = 0;
    const first: number[] = [];
    for (let k = 0; k < this.metaBits.length; k++) {
      const bits = this.metaBits[k];
      if (!bits) {
        complete = false;
        continue;
      }
      const base = k * ENTRIES_PER_BITMAP;
      const valid = Math.min(ENTRIES_PER_BITMAP, smNr - base);
      for (let i = 0; i < valid; i++) {
        const b = base + i;
        let stored = getEntry(bits, i);
        if (stored) storedNonzero++;
        let atLeast = false;
        if (stored === 3) {
          const o = this.metaOverflow.get(b);
          if (o !== undefined) {
            if (o < 3) this.damage('overflow-entry', `Cannot use the metadata ref-count tree entry for block ${b}: count ${o}, expected at least 3 (its bitmap entry is 3)`, b, 'metadata ref-count tree');
            stored = o;
          } else {
            if (this.metaOverflowOk) this.damage('overflow-entry', `Cannot find metadata block ${b} in the metadata ref-count tree: its bitmap entry says 3 or more, expected an entry`, b, 'metadata ref-count tree');
            atLeast = true;
          }
        } else if (this.metaOverflow.size && this.metaOverflow.has(b)) {
          this.damage('overflow-entry', `Cannot use the metadata ref-count tree entry for block ${b} (count ${this.metaOverflow.get(b)}): its bitmap entry is ${stored}, expected 3`, b, 'metadata ref-count tree');
        }
        const found = b < limit ? refs[b]! : 0;
        if (stored === found || (atLeast && found >= 3)) continue;
        this.countMismatch('metadata', b, stored, found, w.metaIncomplete, (n) => {
          unverified++;
          if (first.length < 8) first.push(n);
        });
      }
    }
    if (unverified) {
      this.warning('counts-unverified', `${unverified} metadata block(s) have stored reference counts above those found (first: ${first.join(', ')}); part of the metadata could not be read, so they are not reported as damage or leaks`, undefined, 'metadata space map');
    }
    if (complete && storedNonzero !== sb.metadataSm.nrAllocated) {
      this.warning('nr-allocated', `Metadata space map nr_allocated is ${sb.metadataSm.nrAllocated}, expected ${storedNonzero} (nonzero bitmap entries)`, 0, 'superblock metadata space map');
    }
  }
}

function devKey(node: Block, i: number): number | bigint {
  const hi = keyHi(node, i);
  return hi < 0x200000 ? hi * 4294967296 + keyLo(node, i) : keyAt(node, i);
}

function cap(s: string): string {
  return s.charAt(0).toUpperCase() + s.slice(1);
}

/**
 * Checks the metadata in `file` (read-only: nothing is ever written). Damage is reported, never
 * thrown; only I/O errors reject.
 * @example const report = await checkMetadata(await FileBlockFile.open(path, { readOnly: true }));
 */
export async function checkMetadata(file: BlockFile, opts: CheckOptions = {}): Promise<CheckReport> {
  const c = new Checker(file, opts);
  await c.run();
  const dropped = c.counts.damage + c.counts.leak + c.counts.warning - c.issues.length;
  if (dropped > 0) {
    c.issues.push({ severity: 'warning', code: 'too-many-issues', message: `${dropped} more issue(s) were found but not listed (limit ${opts.maxIssues ?? 1000})` });
  }
  c.summary.damage = c.counts.damage;
  c.summary.leaks = c.counts.leak;
  c.summary.warnings = c.counts.warning;
  return { ok: c.counts.damage === 0, needsCheck: c.needsCheck, issues: c.issues, summary: c.summary };
}

/**
 * A report as text, one issue per line (like `thin_check`): a summary line, the issues, then
 * the verdict.
 * @example console.log(formatReport(await checkMetadata(file)));
 */
export function formatReport(report: CheckReport): string {
  const s = report.summary;
  const lines: string[] = [];
  lines.push(`transaction ${s.transactionId}, time ${s.time}, data block size ${s.dataBlockSize} sectors${s.heldRoot ? `, metadata snapshot at block ${s.heldRoot} (${s.snapshotDevices} devices)` : ''}`);
  lines.push(`${s.devices} devices, ${s.mappings} mappings; metadata blocks used ${s.metadataBlocksUsed}/${s.nrMetadataBlocks}; data blocks used ${s.dataBlocksUsed}/${s.nrDataBlocks}`);
  if (report.needsCheck) lines.push('needs_check: the superblock flag is set');
  for (const i of report.issues) {
    const at = [i.block !== undefined ? `block ${i.block}` : '', i.where ?? ''].filter(Boolean).join(', ');
    lines.push(`${i.severity} [${i.code}]${at ? ` (${at})` : ''}: ${i.message}`);
  }
  const verdict = report.ok
    ? s.leaks ? `ok with ${s.leaks} leak(s)` : 'ok'
    : `damaged`;
  lines.push(`${verdict}: ${s.damage} damage, ${s.leaks} leak(s), ${s.warnings} warning(s)`);
  return lines.join('\n') + '\n';
}
