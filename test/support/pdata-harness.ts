/**
 * A bare persistent-data stack (block manager, metadata space map, transaction manager) over an
 * in-memory block file, with a commit that stores the metadata space map root in memory and a
 * reopen that loads it back: enough to test B-trees and space maps below the thin layer.
 */
import { BlockManager } from '../../src/pdata/block-manager.js';
import { isLeaf, keyAt, childAt, nrEntries, maxEntries, nodeValidator, keyHi, keyLo } from '../../src/pdata/btree-node.js';
import { MetadataSpaceMap } from '../../src/pdata/metadata-space-map.js';
import type { SmRoot } from '../../src/pdata/space-map-disk.js';
import { TransactionManager } from '../../src/pdata/transaction-manager.js';
import { FaultyBlockFile } from './faulty-file.js';

export class PdataStack {
  file: FaultyBlockFile;
  bm!: BlockManager;
  sm!: MetadataSpaceMap;
  tm!: TransactionManager;
  root: SmRoot | undefined;

  constructor(readonly nrBlocks: number) {
    this.file = new FaultyBlockFile('pdata', new Uint8Array(nrBlocks * 4096));
    this.bm = new BlockManager(this.file, nrBlocks, { cacheBlocks: 256 });
    this.sm = MetadataSpaceMap.format(nrBlocks);
    this.tm = new TransactionManager(this.bm, this.sm);
  }

  /** Writes the space map and every dirty block; `extra` runs first (to commit other structures). */
  async commit(extra?: () => Promise<void>): Promise<void> {
    if (extra) await extra();
    this.root = await this.sm.preCommit(this.tm);
    await this.bm.flush();
    this.sm.postCommit();
    this.tm.reset();
  }

  /** A fresh stack over the same file, loaded from the last committed root. */
  async reopen(): Promise<void> {
    this.bm = new BlockManager(this.file, this.nrBlocks, { cacheBlocks: 256 });
    this.sm = await MetadataSpaceMap.open(this.bm, this.root!);
    this.tm = new TransactionManager(this.bm, this.sm);
    await this.sm.loadOverflow(this.tm);
  }
}

export interface TreeShape {
  entries: number;
  depth: number;
}

/**
 * Checks a tree's structure (sorted keys, parent key = lowest key below, non-root nodes at least
 * a third full, leaves at one depth) and adds one reference per parent pointer to `refs`.
 * Shared nodes are walked once.
 */
export async function checkTree(bm: BlockManager, root: number, refs: Map<number, number>, seen: Set<number>): Promise<TreeShape> {
  refs.set(root, (refs.get(root) ?? 0) + 1);
  let leafDepth = -1;
  let entries = 0;
  const go = async (nr: number, depth: number, lowHi: number, lowLo: number, isRoot: boolean): Promise<void> => {
    const b = await bm.read(nr, nodeValidator);
    const n = nrEntries(b);
    if (!isRoot && n < maxEntries(b) / 3) throw new Error(`node ${nr} underfull: ${n}/${maxEntries(b)}`);
    for (let i = 1; i < n; i++) {
      const a = [keyHi(b, i - 1), keyLo(b, i - 1)];
      const c = [keyHi(b, i), keyLo(b, i)];
      if (!(a[0]! < c[0]! || (a[0] === c[0] && a[1]! < c[1]!))) throw new Error(`node ${nr} keys out of order at ${i}`);
    }
    if (!isRoot && n > 0 && (keyHi(b, 0) !== lowHi || keyLo(b, 0) !== lowLo)) throw new Error(`node ${nr}: parent key ${lowHi}:${lowLo} != lowest key ${String(keyAt(b, 0))}`);
    if (isLeaf(b)) {
      if (leafDepth < 0) leafDepth = depth;
      else if (leafDepth !== depth) throw new Error(`leaf ${nr} at depth ${depth}, others at ${leafDepth}`);
      entries += n;
      return;
    }
    if (n === 0) throw new Error(`internal node ${nr} is empty`);
    for (let i = 0; i < n; i++) {
      const c = childAt(b, i);
      refs.set(c, (refs.get(c) ?? 0) + 1);
      if (seen.has(c)) continue;
      seen.add(c);
      await go(c, depth + 1, keyHi(b, i), keyLo(b, i), false);
    }
  };
  if (!seen.has(root)) {
    seen.add(root);
    await go(root, 0, 0, 0, true);
  }
  return { entries, depth: leafDepth };
}
