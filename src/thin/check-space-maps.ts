/**
 * The checker's space map checks: the metadata space map (index block, bitmaps, ref-count tree)
 * and the data space map (index tree, bitmaps, ref-count tree) are read, their index entries
 * checked, and every stored reference count compared with the one recomputed from what the
 * walk found reachable: a count of 1 with nothing referring is a leak, any other mismatch
 * damage (also 2 or more with nothing referring), and a mismatch that unreadable metadata could
 * explain only a warning.
 */
import type { BlockManager } from '../pdata/block-manager.js';
import { keyAt, valueOffset } from '../pdata/btree-node.js';
import {
  BITMAP_BYTES, BITMAP_HEADER_SIZE, ENTRIES_PER_BITMAP, FREE_IN_BYTE, INDEX_ENTRY_SIZE, type IndexEntry, bitmapValidator,
  getEntry, indexBlockValidator, unpackIndexEntry,
} from '../pdata/space-map-disk.js';
import { BAD, type CheckContext, Claim, type TreeSpec, validate } from './check-walk.js';
import type { Superblock } from './superblock.js';

export class SpaceMapChecks {
  /** Stored metadata bitmaps (undefined when unreadable), entry bytes only. */
  private metaBits: Array<Uint8Array | undefined> = [];
  private metaOverflow = new Map<number, number>();
  private metaOverflowOk = true;
  private dataOverflow = new Map<number, number>();
  private dataOverflowOk = true;

  constructor(private readonly c: CheckContext) {}

  /** Reads the metadata space map (index, bitmaps, ref-count tree), counting the references it makes. */
  async loadMetadataSpaceMap(bm: BlockManager, sb: Superblock, smNr: number): Promise<void> {
    const c = this.c;
    const w = c.walker;
    const idx = sb.metadataSm.bitmapRoot;
    const nrBitmaps = Math.ceil(smNr / ENTRIES_PER_BITMAP);
    this.metaBits = new Array(nrBitmaps).fill(undefined);
    if (!w.reference(idx, Claim.metadataIndex, 'metadata space map index', 'superblock metadata space map', 0)) {
      w.metaIncomplete = true;
    } else {
      const b = await bm.readRaw(idx);
      const bad = validate(b, indexBlockValidator, 'index');
      if (bad) {
        c.issues.damage(bad[0], bad[1], idx, 'metadata space map index');
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
            c.issues.damage('overflow-entry', `Cannot use metadata ref-count tree entry for block ${k}: past the end of the metadata space map, expected below ${smNr}`, node.nr, 'metadata ref-count tree');
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
    const c = this.c;
    if (!c.walker.reference(nr, claim, 'space map bitmap', where, from)) return undefined;
    const b = await bm.readRaw(nr);
    const bad = validate(b, bitmapValidator, 'bitmap');
    if (bad) {
      c.issues.damage(bad[0], bad[1], nr, where);
      return undefined;
    }
    return b.data.subarray(BITMAP_HEADER_SIZE, BITMAP_HEADER_SIZE + BITMAP_BYTES);
  }

  /** nr_free in either convention, none_free_before a lower bound, zero entries past the end. */
  private checkIndexEntry(e: IndexEntry, bits: Uint8Array, valid: number, where: string, block: number): void {
    const c = this.c;
    let freeAll = 0;
    for (let j = 0; j < BITMAP_BYTES; j++) freeAll += FREE_IN_BYTE[bits[j]!]!;
    let tail = 0;
    for (let i = valid; i < ENTRIES_PER_BITMAP; i++) if (getEntry(bits, i)) tail++;
    const freeValid = freeAll - (ENTRIES_PER_BITMAP - valid - tail);
    if (tail) c.issues.warning('bitmap-tail', `Bitmap ${e.blocknr} has ${tail} nonzero entries past the end of the space map (${valid} valid entries), expected 0`, e.blocknr, where);
    if (e.nrFree !== freeAll && e.nrFree !== freeValid) {
      c.issues.warning('index-nr-free', `Index entry for bitmap ${e.blocknr} says nr_free ${e.nrFree}, expected ${freeAll} (all entries) or ${freeValid} (valid entries)`, block, where);
    }
    let firstFree = -1;
    for (let i = 0; i < valid; i++) {
      if (getEntry(bits, i) === 0) {
        firstFree = i;
        break;
      }
    }
    if (firstFree >= 0 && e.noneFreeBefore > firstFree) {
      c.issues.warning('index-none-free-before', `Index entry for bitmap ${e.blocknr} says none_free_before ${e.noneFreeBefore}, but entry ${firstFree} is free, expected at most ${firstFree}`, block, where);
    }
  }

  /** Stored metadata counts against the references found by the walk (after every tree is walked). */
  compareMetadataCounts(smNr: number, sb: Superblock): void {
    const c = this.c;
    const w = c.walker;
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
            if (o < 3) c.issues.damage('overflow-entry', `Cannot use the metadata ref-count tree entry for block ${b}: count ${o}, expected at least 3 (its bitmap entry is 3)`, b, 'metadata ref-count tree');
            stored = o;
          } else {
            if (this.metaOverflowOk) c.issues.damage('overflow-entry', `Cannot find metadata block ${b} in the metadata ref-count tree: its bitmap entry says 3 or more, expected an entry`, b, 'metadata ref-count tree');
            atLeast = true;
          }
        } else if (this.metaOverflow.size && this.metaOverflow.has(b)) {
          c.issues.damage('overflow-entry', `Cannot use the metadata ref-count tree entry for block ${b} (count ${this.metaOverflow.get(b)}): its bitmap entry is ${stored}, expected 3`, b, 'metadata ref-count tree');
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
      c.issues.warning('counts-unverified', `${unverified} metadata block(s) have stored reference counts above those found (first: ${first.join(', ')}); part of the metadata could not be read, so they are not reported as damage or leaks`, undefined, 'metadata space map');
    }
    if (complete && storedNonzero !== sb.metadataSm.nrAllocated) {
      c.issues.warning('nr-allocated', `Metadata space map nr_allocated is ${sb.metadataSm.nrAllocated}, expected ${storedNonzero} (nonzero bitmap entries)`, 0, 'superblock metadata space map');
    }
  }

  /** The data space map (ref-count tree, index tree, bitmaps) against the mappings found. */
  async checkDataSpaceMap(bm: BlockManager, sb: Superblock): Promise<void> {
    const c = this.c;
    const w = c.walker;
    const nr = c.nrData;
    const refSpec: TreeSpec = {
      claim: Claim.dataRefCount, name: 'data ref-count tree', valueSize: 4, carriesData: false,
      leaf: (node, n, where) => {
        for (let i = 0; i < n; i++) {
          const k = keyAt(node, i);
          const v = node.view.getUint32(valueOffset(node, i), true);
          if (typeof k !== 'number' || k >= nr) {
            c.issues.damage('overflow-entry', `Cannot use data ref-count tree entry for data block ${k}: past the end of the pool, expected below ${nr}`, node.nr, where());
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
    if (extra) c.issues.damage('data-index-entries', `Cannot use ${extra} data space map index entries: keys at or past ${want}, expected keys 0..${want - 1} for ${nr} data blocks`, sb.dataSm.bitmapRoot, 'data space map index tree');
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
      c.issues.damage('data-index-entries', `Cannot find ${missing} data space map index entries (first: bitmap ${firstMissing}), expected keys 0..${want - 1} for ${nr} data blocks`, sb.dataSm.bitmapRoot, 'data space map index tree');
    }

    // Stream the bitmaps: compare stored counts with the recomputed ones.
    let storedNonzero = 0;
    let complete = missing === 0;
    let unverified = 0;
    const unverifiedFirst: number[] = [];
    const data = c.data;
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
                c.issues.damage('overflow-entry', `Cannot use the data ref-count tree entry for data block ${b}: count ${o}, expected at least 3 (its bitmap entry is 3)`, b, 'data ref-count tree');
              }
              stored = o;
            } else if (this.dataOverflowOk) {
              c.issues.damage('overflow-entry', `Cannot find data block ${b} in the data ref-count tree: its bitmap entry says 3 or more, expected an entry`, b, 'data ref-count tree');
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
        c.issues.damage('overflow-entry', `Cannot use the data ref-count tree entry for data block ${b} (count ${o}): its bitmap entry is not 3, expected 3`, b, 'data ref-count tree');
      }
    }
    if (unverified) {
      c.issues.warning('counts-unverified', `${unverified} data block(s) have stored reference counts above those found (first: ${unverifiedFirst.join(', ')}); part of the mapping trees could not be read, so they are not reported as damage or leaks`, undefined, 'data space map');
    }
    if (complete && storedNonzero !== sb.dataSm.nrAllocated) {
      c.issues.warning('nr-allocated', `Data space map nr_allocated is ${sb.dataSm.nrAllocated}, expected ${storedNonzero} (nonzero bitmap entries)`, 0, 'superblock data space map');
    }
  }

  private countMismatch(kind: 'data' | 'metadata', b: number, stored: number, found: number, incomplete: boolean, defer: (b: number) => void): void {
    const c = this.c;
    const unit = kind === 'data' ? 'data block' : 'metadata block';
    if (stored > found && incomplete) {
      defer(b);
      return;
    }
    // A leak is one reference to a block nothing uses (what a crash between the space map and
    // the tree update leaves). Any other over-count, e.g. 2 for an unused block, is damage: both
    // thin_checks fail it (1.x as fatal), and a count that high cannot come from a lost update.
    if (found === 0 && stored === 1) {
      if (kind === 'data') c.summary.leakedDataBlocks++;
      else c.summary.leakedMetadataBlocks++;
      c.issues.leak(kind === 'data' ? 'data-leak' : 'metadata-leak', `Cannot account for ${unit} ${b}: the space map counts ${stored} reference(s) but nothing refers to it, expected 0 (leaked)`, b, `${kind} space map`);
      return;
    }
    c.issues.damage(kind === 'data' ? 'data-count' : 'metadata-count', `Cannot account for ${unit} ${b}: the space map counts ${stored} reference(s), expected ${found} (found by walking the metadata)`, b, `${kind} space map`);
  }
}
