/**
 * Copy-on-write B-tree with 64-bit keys, parameterised by a value type (Linux `dm-btree`).
 *
 * - Every change shadows the path from the root down (see {@link TransactionManager.shadow}),
 *   so each operation returns the tree's new root.
 * - Nodes are shared between trees by reference count: {@link BTree.clone} is O(1); a shared node
 *   is copied only when written, and its children gain a reference then.
 * - Inserts split full nodes on the way down (a full root keeps its block and becomes internal
 *   over two new halves); removals merge or redistribute an underfull child with a sibling on
 *   the way down, so every non-root node holds at least a third of `max_entries`.
 * - Internal key `i` is the lowest key under child `i`.
 *
 * Value types own the meaning of values: `inc` when a shared leaf is copied, `dec` when a value
 * is dropped (removed, overwritten, or its leaf freed).
 */
import { CorruptionError } from '../errors.js';
import { type Block, type WritableBlock, writeU64 } from './block-manager.js';
import {
  type Key, childAt, copySlots, initNode, insertGap, isLeaf, keyAt, keyEquals, keyHi, keyLo, lastAtOrBelow,
  lowerBound, maxEntries, moveSlots, nodeValidator, nrEntries, removeSlots, setChild, setKey, setNrEntries,
  splitKey, valueOffset, valueSize,
} from './btree-node.js';
import type { TransactionManager } from './transaction-manager.js';

/**
 * Deepest descent accepted. A tree of 4 KiB nodes holding 2^64 keys is at most 10 levels deep
 * (internal nodes at least a third full); anything deeper is a cycle in damaged metadata, which
 * would otherwise be followed forever.
 */
export const MAX_TREE_DEPTH = 32;

function tooDeep(what: string, nr: number): never {
  throw new CorruptionError(`Cannot ${what}: btree node ${nr} lies more than ${MAX_TREE_DEPTH} levels down, expected a tree (the metadata has a cycle)`, { block: nr, kind: 'btree node', reason: 'depth' });
}

export interface ValueType<V> {
  /** Bytes per value on disk. */
  readonly size: number;
  unpack(view: DataView, off: number): V;
  pack(view: DataView, off: number, v: V): void;
  /** A second node now holds `v` (a shared leaf was copied). */
  inc?(v: V): void | Promise<void>;
  /** A node no longer holds `v`. */
  dec?(v: V): void | Promise<void>;
  /** Overwriting a value with an equal one drops no reference. Required when `dec` is set. */
  equal?(a: V, b: V): boolean;
}

/** Result of an insert: the new root, and whether the key was new. */
export interface InsertResult<V = unknown> {
  root: number;
  added: boolean;
  /** The value the key held before, when it was present. */
  old?: V;
}

export interface RemoveResult<V> {
  root: number;
  /** The removed value, if the key was present. */
  value: V | undefined;
}

/** Returned by {@link BTree.lookupCached} when the answer needs a read from disk. */
export const NOT_CACHED: unique symbol = Symbol('not cached');

interface PathStep {
  node: WritableBlock;
  index: number;
}

export class BTree<V> {
  constructor(readonly tm: TransactionManager, readonly vt: ValueType<V>, readonly name = 'btree') {}

  /** A new empty tree (a single empty leaf). */
  emptyRoot(): number {
    const b = this.tm.newBlock(nodeValidator);
    initNode(b, true, this.vt.size);
    return b.nr;
  }

  /** Reads a node, checking that a leaf carries this tree's value size. */
  async node(nr: number): Promise<Block> {
    const b = this.tm.bm.cached(nr, nodeValidator) ?? (await this.tm.bm.read(nr, nodeValidator));
    if (isLeaf(b) && valueSize(b) !== this.vt.size) {
      throw new CorruptionError(`Cannot read ${this.name} leaf ${nr}: value size ${valueSize(b)}, expected ${this.vt.size}`, { block: nr, kind: 'btree node', reason: 'value size' });
    }
    return b;
  }

  /** The value stored under `key`, or undefined. */
  async lookup(root: number, key: Key): Promise<V | undefined> {
    const [hi, lo] = splitKey(key);
    let b = await this.node(root);
    for (let depth = 0; ; depth++) {
      if (isLeaf(b)) {
        const i = lowerBound(b, hi, lo);
        return keyEquals(b, i, hi, lo) ? this.vt.unpack(b.view, valueOffset(b, i)) : undefined;
      }
      if (depth > MAX_TREE_DEPTH) tooDeep(`look up a key in ${this.name}`, b.nr);
      const i = lastAtOrBelow(b, hi, lo);
      if (i < 0) return undefined;
      b = await this.node(childAt(b, i));
    }
  }

  /**
   * {@link lookup} from cached blocks only, synchronously: the value, undefined when absent, or
   * {@link NOT_CACHED} when a node on the path is not in memory. The caller must know no change is
   * half-done (it holds the metadata lock, or the lock is free).
   */
  lookupCached(root: number, key: Key): V | undefined | typeof NOT_CACHED {
    let hi: number;
    let lo: number;
    if (typeof key === 'number') {
      hi = Math.floor(key / 4294967296);
      lo = key >>> 0;
    } else {
      [hi, lo] = splitKey(key);
    }
    const bm = this.tm.bm;
    let b = bm.cached(root, nodeValidator);
    for (let depth = 0; ; depth++) {
      if (b === undefined || depth > MAX_TREE_DEPTH) return NOT_CACHED; // too deep: the locked lookup says why
      if (isLeaf(b)) {
        if (valueSize(b) !== this.vt.size) return NOT_CACHED;
        const i = lowerBound(b, hi, lo);
        return keyEquals(b, i, hi, lo) ? this.vt.unpack(b.view, valueOffset(b, i)) : undefined;
      }
      const i = lastAtOrBelow(b, hi, lo);
      if (i < 0) return undefined;
      b = bm.cached(childAt(b, i), nodeValidator);
    }
  }

  /** The first entry with key >= `key`, or undefined. */
  async lowerBound(root: number, key: Key): Promise<{ key: Key; value: V } | undefined> {
    let found: { key: Key; value: V } | undefined;
    await this.walk(root, (k, v) => {
      found = { key: k, value: v };
      return false;
    }, key);
    return found;
  }

  /** The highest key in the tree, or undefined when it is empty. */
  async lastKey(root: number): Promise<Key | undefined> {
    let b = await this.node(root);
    for (let depth = 0; ; depth++) {
      const n = nrEntries(b);
      if (n === 0) return undefined;
      if (isLeaf(b)) return keyAt(b, n - 1);
      if (depth > MAX_TREE_DEPTH) tooDeep(`find the last key of ${this.name}`, b.nr);
      b = await this.node(childAt(b, n - 1));
    }
  }

  /** Inserts or overwrites `key`. An overwritten different value is dropped (`dec`). */
  insert(root: number, key: Key, value: V): Promise<InsertResult<V>> {
    return this.upsert(root, key, () => value, true);
  }

  /**
   * Shadows the path to `key` and stores `make(old)` there; `old` is not dropped. Used for nested
   * trees, where the new value is the new root of a subtree that replaced `old`.
   */
  update(root: number, key: Key, make: (old: V | undefined) => V | Promise<V>): Promise<InsertResult<V>> {
    return this.upsert(root, key, make, false);
  }

  private async upsert(root: number, key: Key, make: (old: V | undefined) => V | Promise<V>, dropOld: boolean): Promise<InsertResult<V>> {
    const [hi, lo] = splitKey(key);
    let node = await this.shadowNode(root);
    const newRoot = node.nr;
    if (nrEntries(node) === maxEntries(node)) await this.splitBeneath(node);
    for (let depth = 0; ; depth++) {
      if (depth > MAX_TREE_DEPTH) tooDeep(`insert into ${this.name}`, node.nr);
      if (isLeaf(node)) {
        const i = lowerBound(node, hi, lo);
        if (keyEquals(node, i, hi, lo)) {
          const off = valueOffset(node, i);
          const old = this.vt.unpack(node.view, off);
          const v = await make(old);
          if (dropOld && this.vt.dec && !this.vt.equal!(old, v)) await this.vt.dec(old);
          this.vt.pack(node.view, valueOffset(node, i), v);
          return { root: newRoot, added: false, old };
        }
        const v = await make(undefined);
        insertGap(node, i);
        setKey(node, i, hi, lo);
        this.vt.pack(node.view, valueOffset(node, i), v);
        return { root: newRoot, added: true };
      }
      let i = lastAtOrBelow(node, hi, lo);
      if (i < 0) {
        i = 0;
        setKey(node, 0, hi, lo);
      }
      let child = await this.shadowChild(node, i);
      if (nrEntries(child) === maxEntries(child)) {
        const right = this.splitChild(node, i, child);
        if (!(keyHi(right, 0) > hi || (keyHi(right, 0) === hi && keyLo(right, 0) > lo))) child = right;
      }
      node = child;
    }
  }

  /** Removes `key`; the removed value is dropped (`dec`) and returned. */
  async remove(root: number, key: Key): Promise<RemoveResult<V>> {
    const old = await this.lookup(root, key);
    if (old === undefined) return { root, value: undefined };
    const [hi, lo] = splitKey(key);
    const { root: newRoot, leaf, path } = await this.descendForRemoval(root, hi, lo);
    const i = lowerBound(leaf, hi, lo);
    removeSlots(leaf, i, i + 1);
    if (this.vt.dec) await this.vt.dec(old);
    if (i === 0) this.fixLowKeys(path, leaf);
    return { root: await this.collapseRoot(newRoot), value: old };
  }

  /**
   * Removes every key in `[from, to)`; removed values are dropped. Works a leaf at a time.
   * @returns the new root and the number of entries removed.
   */
  async removeRange(root: number, from: Key, to: Key): Promise<{ root: number; removed: number }> {
    const [thi, tlo] = splitKey(to);
    const below = (b: Block, i: number) => keyHi(b, i) < thi || (keyHi(b, i) === thi && keyLo(b, i) < tlo);
    let removed = 0;
    let cur = root;
    for (;;) {
      const first = await this.lowerBound(cur, from);
      if (!first) break;
      const [hi, lo] = splitKey(first.key);
      if (!(hi < thi || (hi === thi && lo < tlo))) break;
      const { root: newRoot, leaf, path } = await this.descendForRemoval(cur, hi, lo);
      const i = lowerBound(leaf, hi, lo);
      const nr = nrEntries(leaf);
      const limit = path.length === 0 ? nr : nr - Math.floor(maxEntries(leaf) / 3);
      let j = i;
      while (j < nr && j - i < limit && below(leaf, j)) j++;
      if (this.vt.dec) {
        for (let k = i; k < j; k++) await this.vt.dec(this.vt.unpack(leaf.view, valueOffset(leaf, k)));
      }
      removeSlots(leaf, i, j);
      removed += j - i;
      if (i === 0) this.fixLowKeys(path, leaf);
      cur = await this.collapseRoot(newRoot);
    }
    return { root: cur, removed };
  }

  /**
   * Visits entries in key order (from `from`, before `to` when given). The visitor returns
   * `false` to stop, or a promise (awaited before the next entry: back-pressure for writers).
   * Stale slots past `nr_entries` are never visited.
   */
  async walk(root: number, visit: (key: Key, value: V) => unknown, from?: Key, to?: Key): Promise<void> {
    const [fhi, flo] = from === undefined ? [0, 0] : splitKey(from);
    const [thi, tlo] = to === undefined ? [0xffffffff, 0xffffffff] : splitKey(to);
    const unbounded = to === undefined;
    const go = async (nr: number, depth: number): Promise<boolean> => {
      if (depth > MAX_TREE_DEPTH) tooDeep(`walk ${this.name}`, nr);
      const b = await this.node(nr);
      const n = nrEntries(b);
      if (isLeaf(b)) {
        for (let i = from === undefined ? 0 : lowerBound(b, fhi, flo); i < n; i++) {
          const h = keyHi(b, i);
          if (!unbounded && (h > thi || (h === thi && keyLo(b, i) >= tlo))) return false;
          let r = visit(keyAt(b, i), this.vt.unpack(b.view, valueOffset(b, i)));
          if (r instanceof Promise) r = await r;
          if (r === false) return false;
        }
        return true;
      }
      let i = from === undefined ? 0 : Math.max(0, lastAtOrBelow(b, fhi, flo));
      for (; i < n; i++) {
        if (!unbounded && i > 0) {
          const h = keyHi(b, i);
          if (h > thi || (h === thi && keyLo(b, i) >= tlo)) return false;
        }
        if (!(await go(childAt(b, i), depth + 1))) return false;
      }
      return true;
    };
    await go(root, 0);
  }

  /** Number of entries (walks every leaf). */
  async count(root: number): Promise<number> {
    let n = 0;
    const go = async (nr: number, depth: number): Promise<void> => {
      if (depth > MAX_TREE_DEPTH) tooDeep(`count ${this.name}`, nr);
      const b = await this.node(nr);
      if (isLeaf(b)) n += nrEntries(b);
      else for (let i = 0; i < nrEntries(b); i++) await go(childAt(b, i), depth + 1);
    };
    await go(root, 0);
    return n;
  }

  /** Shares the whole tree: O(1). Both owners see the same nodes until one of them writes. */
  clone(root: number): number {
    this.tm.inc(root);
    return root;
  }

  /** Drops one reference to the tree; nodes (and values) no one else holds are freed. */
  async del(root: number): Promise<void> {
    const stack = [root];
    while (stack.length) {
      const nr = stack.pop()!;
      if (this.tm.sm.count(nr) > 1) {
        this.tm.dec(nr);
        continue;
      }
      const b = await this.node(nr);
      const n = nrEntries(b);
      if (isLeaf(b)) {
        if (this.vt.dec) for (let i = 0; i < n; i++) await this.vt.dec(this.vt.unpack(b.view, valueOffset(b, i)));
      } else {
        for (let i = n - 1; i >= 0; i--) stack.push(childAt(b, i));
      }
      this.tm.dec(nr);
    }
  }

  private async shadowNode(nr: number): Promise<WritableBlock> {
    const { block, shared } = await this.tm.shadow(nr, nodeValidator);
    if (shared) await this.incChildren(block);
    return block;
  }

  private async shadowChild(parent: WritableBlock, i: number): Promise<WritableBlock> {
    const old = childAt(parent, i);
    const child = await this.shadowNode(old);
    if (child.nr !== old) setChild(parent, i, child.nr);
    return child;
  }

  private async incChildren(b: Block): Promise<void> {
    const n = nrEntries(b);
    if (!isLeaf(b)) {
      for (let i = 0; i < n; i++) this.tm.inc(childAt(b, i));
    } else if (this.vt.inc) {
      for (let i = 0; i < n; i++) await this.vt.inc(this.vt.unpack(b.view, valueOffset(b, i)));
    }
  }

  /** A full root keeps its block and becomes internal over two new halves. */
  private async splitBeneath(root: WritableBlock): Promise<void> {
    const nr = nrEntries(root);
    const leaf = isLeaf(root);
    const vs = valueSize(root);
    const half = nr >>> 1;
    const left = this.tm.newBlock(nodeValidator);
    const right = this.tm.newBlock(nodeValidator);
    initNode(left, leaf, vs);
    initNode(right, leaf, vs);
    copySlots(left, 0, root, 0, half);
    setNrEntries(left, half);
    copySlots(right, 0, root, half, nr - half);
    setNrEntries(right, nr - half);
    const lk = [keyHi(left, 0), keyLo(left, 0)] as const;
    const rk = [keyHi(right, 0), keyLo(right, 0)] as const;
    initNode(root, false, 8);
    setNrEntries(root, 2);
    setKey(root, 0, lk[0], lk[1]);
    setChild(root, 0, left.nr);
    setKey(root, 1, rk[0], rk[1]);
    setChild(root, 1, right.nr);
  }

  /** Splits full `child` (slot `i` of `parent`, which has room): the right half moves to a new node. */
  private splitChild(parent: WritableBlock, i: number, child: WritableBlock): WritableBlock {
    const nr = nrEntries(child);
    const half = nr >>> 1;
    const right = this.tm.newBlock(nodeValidator);
    initNode(right, isLeaf(child), valueSize(child));
    copySlots(right, 0, child, half, nr - half);
    setNrEntries(right, nr - half);
    setNrEntries(child, half);
    insertGap(parent, i + 1);
    setKey(parent, i + 1, keyHi(right, 0), keyLo(right, 0));
    setChild(parent, i + 1, right.nr);
    return right;
  }

  /**
   * Shadows the path to the leaf holding (hi, lo), making sure on the way that each child has
   * more than the minimum number of entries, so removing from it cannot underfill it.
   */
  private async descendForRemoval(root: number, hi: number, lo: number): Promise<{ root: number; leaf: WritableBlock; path: PathStep[] }> {
    let node = await this.shadowNode(root);
    const newRoot = node.nr;
    const path: PathStep[] = [];
    while (!isLeaf(node)) {
      if (path.length > MAX_TREE_DEPTH) tooDeep(`remove from ${this.name}`, node.nr);
      if (path.length === 0 && nrEntries(node) === 1) {
        await this.pullUp(node);
        continue;
      }
      let i = Math.max(0, lastAtOrBelow(node, hi, lo));
      i = await this.rebalance(node, i, hi, lo);
      if (path.length === 0 && nrEntries(node) === 1) {
        await this.pullUp(node);
        continue;
      }
      const child = await this.shadowChild(node, i);
      path.push({ node, index: i });
      node = child;
    }
    return { root: newRoot, leaf: node, path };
  }

  /** Gives child `i` of `parent` more than the minimum, merging with or borrowing from a sibling. */
  private async rebalance(parent: WritableBlock, i: number, hi: number, lo: number): Promise<number> {
    const n = nrEntries(parent);
    if (n < 2) return i;
    const c = await this.node(childAt(parent, i));
    if (nrEntries(c) > Math.floor(maxEntries(c) / 3)) return i;
    const li = i + 1 < n ? i : i - 1;
    const ri = li + 1;
    const left = await this.shadowChild(parent, li);
    const right = await this.shadowChild(parent, ri);
    const nl = nrEntries(left);
    const nr = nrEntries(right);
    const total = nl + nr;
    if (total <= maxEntries(left)) {
      copySlots(left, nl, right, 0, nr);
      setNrEntries(left, total);
      removeSlots(parent, ri, ri + 1);
      this.tm.dec(right.nr);
      return li;
    }
    const wantLeft = total >>> 1;
    if (nl < wantLeft) {
      const k = wantLeft - nl;
      copySlots(left, nl, right, 0, k);
      setNrEntries(left, wantLeft);
      moveSlots(right, 0, k, nr - k);
      setNrEntries(right, nr - k);
    } else if (nl > wantLeft) {
      const k = nl - wantLeft;
      moveSlots(right, k, 0, nr);
      copySlots(right, 0, left, wantLeft, k);
      setNrEntries(right, nr + k);
      setNrEntries(left, wantLeft);
    }
    setKey(parent, ri, keyHi(right, 0), keyLo(right, 0));
    const rh = keyHi(right, 0);
    return rh < hi || (rh === hi && keyLo(right, 0) <= lo) ? ri : li;
  }

  /** A root with one child takes the child's contents; the child's block is freed. */
  private async pullUp(root: WritableBlock): Promise<void> {
    const child = await this.shadowNode(childAt(root, 0));
    const nr = root.nr;
    root.data.set(child.data);
    writeU64(root.view, 8, nr);
    this.tm.dec(child.nr);
  }

  private async collapseRoot(root: number): Promise<number> {
    const b = this.tm.bm.dirtyBlock(root);
    if (b && !isLeaf(b) && nrEntries(b) === 1) {
      while (!isLeaf(b) && nrEntries(b) === 1) await this.pullUp(b);
    }
    return root;
  }

  /** After the lowest key of `leaf` changed, parents whose first child it is follow. */
  private fixLowKeys(path: PathStep[], leaf: WritableBlock): void {
    if (nrEntries(leaf) === 0) return;
    let hi = keyHi(leaf, 0);
    let lo = keyLo(leaf, 0);
    for (let d = path.length - 1; d >= 0; d--) {
      const { node, index } = path[d]!;
      setKey(node, index, hi, lo);
      if (index !== 0) return;
      hi = keyHi(node, 0);
      lo = keyLo(node, 0);
    }
  }
}
