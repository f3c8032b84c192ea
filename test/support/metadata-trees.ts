/**
 * Reads the trees of a metadata image directly (no validation, no space maps), for tests that
 * damage images on purpose: the leaves under a root, each device's bottom root, mapping counts.
 */
import { BLOCK_SIZE, newBlock } from '../../src/pdata/block-manager.js';
import { childAt, isLeaf, keyAt, nrEntries, valueOffset } from '../../src/pdata/btree-node.js';
import { unpackSuperblock } from '../../src/thin/superblock.js';

export const imageBlock = (img: Uint8Array, nr: number) => newBlock(nr, img.slice(nr * BLOCK_SIZE, (nr + 1) * BLOCK_SIZE));
export const imageSuperblock = (img: Uint8Array) => unpackSuperblock(imageBlock(img, 0));

/** The leaves under `root`: leaf block -> its [key, u64 value] entries. */
export function leavesOf(img: Uint8Array, root: number): Map<number, Array<[string, bigint]>> {
  const out = new Map<number, Array<[string, bigint]>>();
  const stack = [root];
  while (stack.length) {
    const nr = stack.pop()!;
    const b = imageBlock(img, nr);
    const n = nrEntries(b);
    if (isLeaf(b)) out.set(nr, Array.from({ length: n }, (_, i) => [String(keyAt(b, i)), b.view.getBigUint64(valueOffset(b, i), true)]));
    else for (let i = 0; i < n; i++) stack.push(childAt(b, i));
  }
  return out;
}

/** Device id -> root of its bottom-level mapping tree. */
export function devRoots(img: Uint8Array): Map<number, number> {
  const out = new Map<number, number>();
  for (const entries of leavesOf(img, imageSuperblock(img).dataMappingRoot).values()) for (const [k, v] of entries) out.set(Number(k), Number(v));
  return out;
}
