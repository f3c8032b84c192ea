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
 * The parts: the issue catalogue and list (check-issues.ts), the superblock checks
 * (check-superblock.ts), the B-tree walker (check-walk.ts), the trees one superblock reaches
 * (check-trees.ts), the space maps and reference counts (check-space-maps.ts), and the text
 * report (check-report.ts).
 *
 * @example
 * const f = await FileBlockFile.open('pool/metadata', { readOnly: true });
 * const report = await checkMetadata(f);
 * console.log(formatReport(report));
 * process.exitCode = report.ok ? 0 : 1;
 */
import type { BlockFile } from '../io/block-file.js';
import { BLOCK_SIZE, BlockManager } from '../pdata/block-manager.js';
import { MAX_METADATA_BLOCKS } from '../pdata/space-map-disk.js';
import { MAX_DATA_BLOCK } from './block-time.js';
import { type CheckOptions, type CheckReport, type CheckSummary, IssueList } from './check-issues.js';
import { SpaceMapChecks } from './check-space-maps.js';
import { checkSuperblock } from './check-superblock.js';
import { type View, compareView, walkView } from './check-trees.js';
import { type CheckContext, Claim, DataCounts, Walker } from './check-walk.js';
import { NEEDS_CHECK_FLAG } from './superblock.js';

const KERNEL_META_LIMIT = MAX_METADATA_BLOCKS;

class Checker {
  readonly issues: IssueList;
  summary: CheckSummary = {
    devices: 0, mappings: 0, metadataBlocksUsed: 0, dataBlocksUsed: 0, nrMetadataBlocks: 0, nrDataBlocks: 0, btreeNodes: 0,
    sharedNodeRefs: 0, heldRoot: 0, snapshotDevices: 0, transactionId: 0, time: 0, dataBlockSize: 0, damage: 0, leaks: 0,
    warnings: 0, leakedMetadataBlocks: 0, leakedDataBlocks: 0,
  };
  needsCheck = false;

  constructor(private readonly file: BlockFile, private readonly opts: CheckOptions) {
    this.issues = new IssueList(opts.maxIssues ?? 1000);
  }

  async run(): Promise<void> {
    const issues = this.issues;
    const fileBlocks = Math.floor((await this.file.size()) / BLOCK_SIZE);
    if (fileBlocks < 1) {
      issues.damage('metadata-size', `Cannot check ${this.opts.name ?? this.file.path}: the file holds no complete 4 KiB block, expected a superblock at block 0`);
      return;
    }
    const bm = new BlockManager(this.file, fileBlocks);
    const sbBlock = await bm.readRaw(0);
    const sb = checkSuperblock(issues, sbBlock, 0, 'superblock');
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
      issues.damage('metadata-size', `Cannot use the metadata space map: nr_blocks ${smNr}, expected 1..${KERNEL_META_LIMIT}`, 0, 'superblock');
      smUsable = false;
      limit = Math.min(fileBlocks, KERNEL_META_LIMIT);
    } else if (smNr > fileBlocks) {
      // A truncated copy: fine as long as nothing reachable lies past the end (pointers there are damage).
      issues.warning('metadata-size', `The metadata space map covers ${smNr} blocks but the file holds ${fileBlocks}, expected at most ${fileBlocks} (harmless while nothing reachable lies past the end: opening the pool grows the file back)`, 0, 'superblock');
      limit = fileBlocks;
    } else {
      limit = smNr;
    }
    if (sb.metadataNrBlocks === 0 || sb.metadataNrBlocks > smNr) {
      issues.warning('metadata-nr-blocks', `Superblock metadata_nr_blocks is ${sb.metadataNrBlocks}, expected at most the metadata space map's ${smNr} (the kernel leaves it at the size it formatted)`, 0, 'superblock');
    }
    s.nrMetadataBlocks = smUsable ? smNr : limit;
    const nrData = sb.dataSm.nrBlocks;
    s.nrDataBlocks = nrData;
    if (nrData > MAX_DATA_BLOCK + 1) {
      issues.warning('data-nr-blocks', `Data space map nr_blocks is ${nrData}, expected at most 2^40 (mappings store 40-bit block numbers)`, 0, 'superblock');
    }

    const w = new Walker(bm, limit, issues);
    w.refs[0] = 1;
    w.claims[0] = Claim.superblock;
    const c: CheckContext = { issues, walker: w, data: new DataCounts(), nrData, summary: s };
    const spaceMaps = new SpaceMapChecks(c);

    if (smUsable) await spaceMaps.loadMetadataSpaceMap(bm, sb, smNr);
    else w.metaIncomplete = true;

    // Live trees.
    const live = await walkView(c, '', sb);
    // Held metadata snapshot.
    let snap: View | undefined;
    if (sb.heldRoot !== 0) {
      const h = sb.heldRoot;
      if (w.reference(h, Claim.superblock, 'held metadata snapshot', 'superblock held_root', 0)) {
        const held = checkSuperblock(issues, await bm.readRaw(h), h, 'held metadata snapshot');
        if (held) snap = await walkView(c, 'metadata snapshot ', held);
        else w.metaIncomplete = w.dataIncomplete = true;
      } else {
        w.metaIncomplete = w.dataIncomplete = true;
      }
    }
    compareView(c, live);
    if (snap && this.opts.metadataSnap !== false) compareView(c, snap);
    s.devices = live.devices.size;
    let mappings = 0;
    for (const d of live.devices.values()) mappings += w.entriesOf(d.root)?.entries ?? 0;
    s.mappings = mappings;
    s.snapshotDevices = snap ? snap.devices.size : 0;

    await spaceMaps.checkDataSpaceMap(bm, sb);
    if (smUsable) spaceMaps.compareMetadataCounts(smNr, sb);

    let used = 0;
    for (let b = 0; b < limit; b++) if (w.refs[b]) used++;
    s.metadataBlocksUsed = used;
    s.dataBlocksUsed = c.data.used;
    s.btreeNodes = w.nodes;
    s.sharedNodeRefs = w.sharedRefs;
  }
}

/**
 * Checks the metadata in `file` (read-only: nothing is ever written). Damage is reported, never
 * thrown; only I/O errors reject.
 * @example const report = await checkMetadata(await FileBlockFile.open(path, { readOnly: true }));
 */
export async function checkMetadata(file: BlockFile, opts: CheckOptions = {}): Promise<CheckReport> {
  const c = new Checker(file, opts);
  await c.run();
  const { issues, counts } = c.issues;
  const dropped = counts.damage + counts.leak + counts.warning - issues.length;
  if (dropped > 0) {
    issues.push({ severity: 'warning', code: 'too-many-issues', message: `${dropped} more issue(s) were found but not listed (limit ${opts.maxIssues ?? 1000})` });
  }
  c.summary.damage = counts.damage;
  c.summary.leaks = counts.leak;
  c.summary.warnings = counts.warning;
  return { ok: counts.damage === 0, needsCheck: c.needsCheck, issues, summary: c.summary };
}
