/**
 * The checker's walk of the trees one superblock reaches (the live one and the held metadata
 * snapshot's): the device details tree and the two-level mapping tree, every bottom-level leaf's
 * data blocks counted and checked against the pool size and time; then details against trees
 * (a device in one and not the other, mapped_blocks against the mappings found).
 */
import { readU64 } from '../pdata/block-manager.js';
import { keyAt, valueOffset } from '../pdata/btree-node.js';
import { TIME_MASK } from './block-time.js';
import { BAD, type CheckContext, Claim, type TreeSpec } from './check-walk.js';
import { MAX_DEVICE_ID, type Superblock } from './superblock.js';

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

/** What one superblock's trees hold, as walked. */
export interface View {
  label: string;
  sb: Superblock;
  devices: Map<number | bigint, DeviceEntry>;
  details: Map<number | bigint, DetailsEntry>;
  topRoot: number;
  detailsRoot: number;
  topOk: boolean;
  detailsOk: boolean;
}

/** Walks the details tree and the two-level mapping tree of one superblock (live or held). */
export async function walkView(c: CheckContext, label: string, sb: Superblock): Promise<View> {
  const w = c.walker;
  const view: View = { label, sb, devices: new Map(), details: new Map(), topRoot: sb.dataMappingRoot, detailsRoot: sb.deviceDetailsRoot, topOk: false, detailsOk: false };
  const none = () => undefined;
  const detailsSpec: TreeSpec = { claim: Claim.details, name: `${label}device details tree`, valueSize: 24, carriesData: false, leaf: none };
  // A tree with an unreadable subtree cannot say which keys are missing from it.
  view.detailsOk = (await w.walk(sb.deviceDetailsRoot, detailsSpec, `${label}superblock`, sb.blocknr)) !== BAD && !w.entriesOf(sb.deviceDetailsRoot)!.partial;
  await w.leaves(sb.deviceDetailsRoot, Claim.details, (node, n) => {
      for (let i = 0; i < n; i++) {
        const off = valueOffset(node, i);
        view.details.set(keyAt(node, i), {
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
      for (let i = 0; i < n; i++) pending.push({ id: keyAt(node, i), root: readU64(node.view, valueOffset(node, i)), leaf: node.nr });
    },
  };
  view.topOk = (await w.walk(sb.dataMappingRoot, topSpec, `${label}superblock`, sb.blocknr)) !== BAD && !w.entriesOf(sb.dataMappingRoot)!.partial;
  for (const { id, root, leaf } of pending) {
    if (typeof id !== 'number' || id > MAX_DEVICE_ID) {
      c.issues.warning('device-id-range', `Thin device id ${id} is above ${MAX_DEVICE_ID}, expected a 24-bit id (the kernel refuses larger ones)`, leaf, `${label}top-level mapping tree`);
    }
    await w.walk(root, bottomSpec(c, `${label}mapping tree of device ${id}`, sb), `${label}top-level mapping tree leaf ${leaf}, device ${id}`, leaf);
  }
  await w.leaves(sb.dataMappingRoot, Claim.topLevel, (node, n) => {
    for (let i = 0; i < n; i++) view.devices.set(keyAt(node, i), { root: readU64(node.view, valueOffset(node, i)), leaf: node.nr });
  });
  return view;
}

function bottomSpec(c: CheckContext, name: string, sb: Superblock): TreeSpec {
  const nrData = c.nrData;
  const data = c.data;
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
        c.issues.damage('data-block-range', `Cannot map ${past} block(s) of leaf ${node.nr} past the end of the pool (first: virtual block ${keyAt(node, firstPast)} -> data block ${bt}), expected data blocks below ${nrData}`, node.nr, where());
      }
      if (late) {
        c.issues.warning('mapping-time', `${late} mapping(s) in leaf ${node.nr} carry a time after the pool time ${poolTime} (latest ${maxTime}), expected at most ${poolTime}`, node.nr, where());
      }
    },
  };
}

/** Details keys == top-level keys; mapped_blocks == mappings; times not after the pool time. */
export function compareView(c: CheckContext, v: View): void {
  const w = c.walker;
  const where = `${v.label}device details tree`;
  if (v.detailsOk) {
    for (const [id, d] of v.devices) {
      if (!v.details.has(id)) c.issues.damage('details-missing', `Cannot find the details of thin device ${id}: it has a mapping tree (root ${d.root}) but no entry in the ${v.label}details tree, expected one`, v.detailsRoot, where);
    }
  }
  if (v.topOk) {
    for (const [id, d] of v.details) {
      if (!v.devices.has(id)) c.issues.damage('mapping-missing', `Cannot find the mapping tree of thin device ${id}: it has details (leaf ${d.leaf}) but no entry in the ${v.label}top-level mapping tree, expected one`, v.topRoot, `${v.label}top-level mapping tree`);
    }
  }
  const poolTime = v.sb.time;
  for (const [id, d] of v.details) {
    const dev = v.devices.get(id);
    const sum = dev ? w.entriesOf(dev.root) : undefined;
    if (sum && !sum.partial && sum.entries !== d.mappedBlocks) {
      c.issues.damage('mapped-blocks', `Cannot match the details of thin device ${id}: mapped_blocks ${d.mappedBlocks}, expected ${sum.entries} (the mappings in its tree)`, d.leaf, `${where}, device ${id}`);
    }
    if (d.creationTime > poolTime || d.snapshottedTime > poolTime) {
      c.issues.warning('details-time', `Thin device ${id} has creation time ${d.creationTime} and snapshot time ${d.snapshottedTime}, expected at most the pool time ${poolTime}`, d.leaf, `${where}, device ${id}`);
    }
  }
}
