/**
 * Metadata repair (`thin_repair`): new metadata built from what is still reachable in damaged
 * metadata. The old file is only read, with the checker's walker (check-walk.ts), which skips
 * whatever subtree it cannot read and keeps walking: every readable leaf of the device details
 * tree and of each device's mapping tree is salvaged, so all mappings in undamaged leaves
 * survive. The result is written as XML into {@link restoreXml}, which builds fresh trees and
 * space maps (reference counts recomputed from the mappings kept) with needs_check clear and no
 * held metadata snapshot, as thin_repair does.
 *
 * What is dropped: devices whose mapping tree cannot be found (their details alone say nothing
 * about their data), mappings whose data block lies past the pool's end, and whatever lay under
 * an unreadable node. Devices found without details get zero times. A superblock that is not a
 * thin superblock at all (magic wrong and checksum bad) cannot be repaired here: thin_repair 1.x
 * then searches the whole file for tree roots, which this does not.
 */
import { CorruptionError } from '../errors.js';
import type { BlockFile } from '../io/block-file.js';
import { BLOCK_SIZE, BlockManager, readU64 } from '../pdata/block-manager.js';
import { type Key, keyAt, valueOffset } from '../pdata/btree-node.js';
import { TIME_MASK } from './block-time.js';
import { IssueList } from './check-issues.js';
import { checkSuperblock } from './check-superblock.js';
import { BAD, Claim, type TreeSpec, Walker } from './check-walk.js';
import { type RestoreSummary, restoreXml } from './restore.js';
import { MAX_DEVICE_ID, validDataBlockSize } from './superblock.js';

/** What a repair kept and lost. */
export interface RepairSummary {
  /** Devices written to the new metadata. */
  devices: number;
  /** Mappings written. */
  mappings: number;
  /** Devices whose details survived but whose mapping tree did not: left out. */
  devicesLost: number[];
  /** Devices found in the mapping tree without details (written with zero times). */
  devicesWithoutDetails: number[];
  /**
   * Mappings the details' `mapped_blocks` promise beyond what was found, over the devices
   * written (a lower bound of what was lost: devices without details do not count).
   */
  mappingsMissing: number;
  /** Mappings dropped because their data block lies past the pool's end. */
  mappingsPastEnd: number;
  /** Damage the walk met (the checker's issue count), and its first messages. */
  damage: number;
  firstDamage: string[];
  transactionId: number;
  dataBlockSize: number;
  nrDataBlocks: number;
  /** The restore that wrote the new metadata. */
  restore: RestoreSummary;
}

export interface RepairOptions {
  /** Size of the new metadata in 4 KiB blocks (default: the output file's size). */
  nrMetadataBlocks?: number;
}

interface Details {
  mappedBlocks: number;
  transactionId: number;
  creationTime: number;
  snapshottedTime: number;
}

/** A device's salvaged mappings: virtual block, data block, time. */
interface Salvaged {
  keys: Key[];
  blocks: number[];
  times: number[];
}

/**
 * Reads the damaged metadata in `src` and writes repaired metadata into `out` (an empty file;
 * `src` is never written).
 * @throws CorruptionError when the superblock cannot be used (not a thin superblock, or its data
 * block size or data space size make no sense).
 * @example
 * const s = await repairMetadata(await FileBlockFile.open('meta', { readOnly: true }), await FileBlockFile.open('meta.new', { create: true }));
 */
export async function repairMetadata(src: BlockFile, out: BlockFile, opts: RepairOptions = {}): Promise<RepairSummary> {
  const fileBlocks = Math.floor((await src.size()) / BLOCK_SIZE);
  if (fileBlocks < 1) throw new CorruptionError(`Cannot repair ${src.path}: it holds no complete 4 KiB block, expected a superblock at block 0`, { path: src.path });
  const bm = new BlockManager(src, fileBlocks);
  const issues = new IssueList(20);
  const sb = checkSuperblock(issues, await bm.readRaw(0), 0, 'superblock');
  if (!sb) throw new CorruptionError(`Cannot repair ${src.path}: block 0 is no thin superblock (${issues.issues.map((i) => i.message).join('; ')})`, { path: src.path });
  if (!validDataBlockSize(sb.dataBlockSize)) {
    throw new CorruptionError(`Cannot repair ${src.path}: the superblock's data block size ${sb.dataBlockSize} sectors is invalid, expected a multiple of 128 in 128..2097152`, { path: src.path });
  }
  const nrData = sb.dataSm.nrBlocks;
  if (!Number.isSafeInteger(nrData) || nrData < 1 || nrData > 2 ** 40) {
    throw new CorruptionError(`Cannot repair ${src.path}: the data space map says the pool has ${nrData} data blocks, expected 1..2^40`, { path: src.path });
  }
  const walker = new Walker(bm, fileBlocks, issues);
  const none = () => undefined;

  const details = new Map<number, Details>();
  const detailsSpec: TreeSpec = { claim: Claim.details, name: 'device details tree', valueSize: 24, carriesData: false, leaf: none };
  if ((await walker.walk(sb.deviceDetailsRoot, detailsSpec, 'superblock', 0)) !== BAD) {
    await walker.leaves(sb.deviceDetailsRoot, Claim.details, (node, n) => {
      for (let i = 0; i < n; i++) {
        const id = keyAt(node, i);
        if (typeof id !== 'number') continue;
        const off = valueOffset(node, i);
        details.set(id, {
          mappedBlocks: readU64(node.view, off),
          transactionId: readU64(node.view, off + 8),
          creationTime: node.view.getUint32(off + 16, true),
          snapshottedTime: node.view.getUint32(off + 20, true),
        });
      }
    });
  }

  const roots = new Map<number, number>();
  const topSpec: TreeSpec = { claim: Claim.topLevel, name: 'top-level mapping tree', valueSize: 8, carriesData: true, leaf: none };
  if ((await walker.walk(sb.dataMappingRoot, topSpec, 'superblock', 0)) !== BAD) {
    await walker.leaves(sb.dataMappingRoot, Claim.topLevel, (node, n) => {
      for (let i = 0; i < n; i++) {
        const id = keyAt(node, i);
        if (typeof id === 'number' && id <= MAX_DEVICE_ID && !roots.has(id)) roots.set(id, readU64(node.view, valueOffset(node, i)));
      }
    });
  }

  const devices = new Map<number, Salvaged>();
  let pastEnd = 0;
  for (const [id, root] of [...roots].sort((a, b) => a[0] - b[0])) {
    const spec: TreeSpec = { claim: Claim.bottomLevel, name: `mapping tree of device ${id}`, valueSize: 8, carriesData: true, leaf: none };
    if ((await walker.walk(root, spec, `top-level mapping tree, device ${id}`, 0)) === BAD) continue;
    const s: Salvaged = { keys: [], blocks: [], times: [] };
    await walker.leaves(root, Claim.bottomLevel, (node, n) => {
      const view = node.view;
      const base = valueOffset(node, 0);
      for (let i = 0; i < n; i++) {
        const lo = view.getUint32(base + 8 * i, true);
        const hi = view.getUint32(base + 8 * i + 4, true);
        const block = hi * 256 + (lo >>> 24);
        if (block >= nrData) {
          pastEnd++;
          continue;
        }
        s.keys.push(keyAt(node, i));
        s.blocks.push(block);
        s.times.push(lo & TIME_MASK);
      }
    });
    devices.set(id, s);
  }

  const devicesLost = [...details.keys()].filter((id) => !devices.has(id)).sort((a, b) => a - b);
  const devicesWithoutDetails = [...devices.keys()].filter((id) => !details.has(id));
  let missing = 0;
  let mappings = 0;
  for (const [id, s] of devices) {
    const unique = new Set(s.keys.map(String)).size;
    mappings += unique;
    const d = details.get(id);
    if (d && d.mappedBlocks > unique) missing += d.mappedBlocks - unique;
  }

  async function* xml(): AsyncGenerator<string> {
    yield `<superblock uuid="" time="${sb!.time}" transaction="${sb!.transactionId}" flags="0" version="2" data_block_size="${sb!.dataBlockSize}" nr_data_blocks="${nrData}">\n`;
    for (const [id, s] of devices) {
      const d = details.get(id);
      const unique = new Set(s.keys.map(String)).size;
      yield `  <device dev_id="${id}" mapped_blocks="${unique}" transaction="${d?.transactionId ?? 0}" creation_time="${d?.creationTime ?? 0}" snap_time="${d?.snapshottedTime ?? 0}">\n`;
      let buf = '';
      for (let i = 0; i < s.keys.length; i++) {
        buf += `    <single_mapping origin_block="${s.keys[i]}" data_block="${s.blocks[i]}" time="${s.times[i]}"/>\n`;
        if (buf.length > 1 << 16) {
          yield buf;
          buf = '';
        }
      }
      yield `${buf}  </device>\n`;
    }
    yield '</superblock>\n';
  }
  const restore = await restoreXml(xml(), out, opts.nrMetadataBlocks !== undefined ? { nrMetadataBlocks: opts.nrMetadataBlocks } : {});
  return {
    devices: devices.size,
    mappings: restore.mappings,
    devicesLost,
    devicesWithoutDetails,
    mappingsMissing: missing,
    mappingsPastEnd: pastEnd,
    damage: issues.counts.damage,
    firstDamage: issues.issues.filter((i) => i.severity === 'damage').map((i) => i.message),
    transactionId: sb.transactionId,
    dataBlockSize: sb.dataBlockSize,
    nrDataBlocks: nrData,
    restore,
  };
}
