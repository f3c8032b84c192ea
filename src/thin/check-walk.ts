/**
 * The B-tree walker of the metadata checker: visits every node of a tree once (shared subtrees
 * are summarised once and reused), with an explicit stack so a deep or looping tree cannot
 * exhaust the call stack, and reports what is wrong with each node as an issue. Used only by
 * the checker (check*.ts).
 *
 * Per node it checks: the pointer is inside the metadata device, no other kind of structure
 * claims the block, checksum / block number / flags / max_entries / nr_entries (the node
 * validator), the leaf value size of the tree type, strictly increasing keys, at least a third
 * full unless it is a root, every leaf at one depth, each child's keys inside its slot of the
 * parent (internal key = lowest key below: lower is a warning, higher is damage), no cycles.
 * It also counts every reference to a node into the recomputed metadata reference counts.
 */
import { CorruptionError } from '../errors.js';
import type { Block, BlockManager, Validator } from '../pdata/block-manager.js';
import {
  childAt, isLeaf, joinKey, keyHi, keyLo, maxEntries, nodeValidator, nrEntries, valueSize,
} from '../pdata/btree-node.js';
import { bitmapValidator, indexBlockValidator } from '../pdata/space-map-disk.js';
import type { CheckSummary, IssueList } from './check-issues.js';
import { superblockValidator } from './superblock.js';

/** What a block was found to be, so one block serving two purposes is caught. */
export const Claim = {
  none: 0,
  superblock: 1,
  metadataIndex: 2,
  metadataBitmap: 3,
  dataBitmap: 4,
  topLevel: 10,
  bottomLevel: 11,
  details: 12,
  dataIndex: 13,
  dataRefCount: 14,
  metadataRefCount: 15,
} as const;

export const CLAIM_NAMES: Record<number, string> = {
  [Claim.superblock]: 'a superblock',
  [Claim.metadataIndex]: 'the metadata space map index',
  [Claim.metadataBitmap]: 'a metadata space map bitmap',
  [Claim.dataBitmap]: 'a data space map bitmap',
  [Claim.topLevel]: 'a top-level mapping tree node',
  [Claim.bottomLevel]: 'a bottom-level mapping tree node',
  [Claim.details]: 'a device details tree node',
  [Claim.dataIndex]: 'a data space map index tree node',
  [Claim.dataRefCount]: 'a data ref-count tree node',
  [Claim.metadataRefCount]: 'a metadata ref-count tree node',
};

/** The issue sink the walker reports to (the checker's). */
export interface IssueSink {
  damage(code: string, message: string, block?: number, where?: string): void;
  warning(code: string, message: string, block?: number, where?: string): void;
}

/** What the parts of one check share (check.ts builds it). */
export interface CheckContext {
  readonly issues: IssueList;
  readonly walker: Walker;
  /** Data reference counts recomputed from the mappings found. */
  readonly data: DataCounts;
  /** Data blocks of the pool (the data space map's nr_blocks). */
  readonly nrData: number;
  readonly summary: CheckSummary;
}

/** One kind of tree. */
export interface TreeSpec {
  claim: number;
  /** For messages: `mapping tree of device 1`. */
  name: string;
  valueSize: number;
  /** True when the loss of a subtree loses data references (mapping trees). */
  carriesData: boolean;
  /** Called once per distinct readable leaf. `where` builds the location text on demand. */
  leaf(node: Block, n: number, where: () => string): void;
}

/** Result of walking a subtree: `BAD` when it could not be read. */
export const BAD = -1;
const PUSHED = -2;

const FLAG_PARTIAL = 1;
const FLAG_EMPTY = 2;
/** Fewer than max_entries / 3 entries: fine for a root only. */
const FLAG_SMALL = 4;
/** Underfull already reported. */
const FLAG_SMALL_REPORTED = 8;

interface Frame {
  nr: number;
  node: Block;
  n: number;
  i: number;
  childHeight: number;
  entries: number;
  flags: number;
  minHi: number;
  minLo: number;
  maxHi: number;
  maxLo: number;
  unbalanced: boolean;
  prefetch: Map<number, Promise<Block>>;
}

export function cmpKey(ah: number, al: number, bh: number, bl: number): number {
  if (ah !== bh) return ah < bh ? -1 : 1;
  return al === bl ? 0 : al < bl ? -1 : 1;
}

export function keyText(hi: number, lo: number): string {
  return String(joinKey(hi, lo));
}

/** Maps a validator's failure to an issue code. */
function codeOf(prefix: string, err: CorruptionError): string {
  const reason = String(err.data.reason ?? '');
  if (reason === 'checksum') return `${prefix}-checksum`;
  if (reason === 'blocknr') return `${prefix}-blocknr`;
  if (reason === 'magic') return `${prefix}-magic`;
  if (reason.startsWith('flags')) return `${prefix}-flags`;
  if (reason.startsWith('max_entries')) return `${prefix}-max-entries`;
  if (reason.startsWith('nr_entries')) return `${prefix}-nr-entries`;
  if (reason.startsWith('internal node with value size')) return `${prefix}-value-size`;
  return `${prefix}-invalid`;
}

const OTHER_TYPES: Array<[Validator, string]> = [
  [nodeValidator, 'a btree node'],
  [bitmapValidator, 'a space map bitmap'],
  [indexBlockValidator, 'a metadata space map index block'],
  [superblockValidator, 'a superblock'],
];

/**
 * Checks `b` with `v`. On failure returns [code, message]; a checksum failure says which other
 * block type's checksum the block carries, if any (the block is something else, not damaged bytes).
 */
export function validate(b: Block, v: Validator, prefix: string): [code: string, message: string] | undefined {
  try {
    v.check(b);
    return undefined;
  } catch (err) {
    if (!(err instanceof CorruptionError)) throw err;
    const code = codeOf(prefix, err);
    if (code.endsWith('-checksum')) {
      for (const [other, what] of OTHER_TYPES) {
        if (other === v) continue;
        try {
          other.check(b);
        } catch (e2) {
          if (!(e2 instanceof CorruptionError) || e2.data.reason === 'checksum') continue;
        }
        return ['wrong-block-type', `Cannot use block ${b.nr} as ${v.name}: its checksum is that of ${what}, expected ${v.name}`];
      }
    }
    return [code, err.message];
  }
}

/** Shared state of every walk of one check: counts, claims and node summaries, indexed by block. */
export class Walker {
  /** Recomputed metadata reference counts. */
  readonly refs: Uint32Array;
  readonly claims: Uint8Array;
  /** 0 unvisited, 1 being walked, 2 walked, 3 unreadable. */
  private readonly state: Uint8Array;
  private readonly height: Int32Array;
  private readonly entries: Float64Array;
  private readonly flags: Uint8Array;
  private readonly minHi: Uint32Array;
  private readonly minLo: Uint32Array;
  private readonly maxHi: Uint32Array;
  private readonly maxLo: Uint32Array;
  /** Some node's children could not be listed: stored counts above the recomputed ones are not provable damage. */
  metaIncomplete = false;
  /** Some mapping-tree subtree could not be read: data counts found are lower bounds. */
  dataIncomplete = false;
  nodes = 0;
  sharedRefs = 0;

  constructor(private readonly bm: BlockManager, readonly limit: number, private readonly sink: IssueSink) {
    this.refs = new Uint32Array(limit);
    this.claims = new Uint8Array(limit);
    this.state = new Uint8Array(limit);
    this.height = new Int32Array(limit);
    this.entries = new Float64Array(limit);
    this.flags = new Uint8Array(limit);
    this.minHi = new Uint32Array(limit);
    this.minLo = new Uint32Array(limit);
    this.maxHi = new Uint32Array(limit);
    this.maxLo = new Uint32Array(limit);
  }

  /**
   * Counts one reference to block `nr` of kind `claim`. Returns false (after reporting) when the
   * pointer is outside the device or the block already serves another purpose.
   */
  reference(nr: number, claim: number, what: string, where: string, from: number): boolean {
    if (!Number.isSafeInteger(nr) || nr <= 0 || nr >= this.limit) {
      this.sink.damage('block-range', `Cannot follow the pointer in block ${from} to ${what} ${nr}: it is outside the metadata device, expected 1..${this.limit - 1}`, from, where);
      return false;
    }
    this.refs[nr]!++;
    const c = this.claims[nr]!;
    if (c === Claim.none) {
      this.claims[nr] = claim;
    } else if (c !== claim) {
      this.sink.damage('block-reused', `Cannot use block ${nr} as ${CLAIM_NAMES[claim]}: it is already used as ${CLAIM_NAMES[c]}`, nr, where);
      return false;
    }
    return true;
  }

  /** Block `nr` read through the prefetch map if it is there. */
  private read(nr: number, prefetch?: Map<number, Promise<Block>>): Promise<Block> {
    const p = prefetch?.get(nr);
    if (p) {
      prefetch!.delete(nr);
      return p;
    }
    return this.bm.readRaw(nr);
  }

  /** Entries under `nr` as last walked, or undefined when it was not walked or could not be read. */
  entriesOf(nr: number): { entries: number; partial: boolean } | undefined {
    if (nr < 0 || nr >= this.limit || this.state[nr] !== 2) return undefined;
    return { entries: this.entries[nr]!, partial: (this.flags[nr]! & FLAG_PARTIAL) !== 0 };
  }

  /**
   * Visits, in key order, every leaf under `root` that {@link walk} read as a node of kind `claim`
   * (again, even when shared with a tree walked earlier): for trees whose values each owner needs
   * (details and top-level trees of the live metadata and of the held snapshot). Counts nothing.
   */
  async leaves(root: number, claim: number, visit: (node: Block, n: number) => void): Promise<void> {
    const seen = new Set<number>();
    const stack = [root];
    while (stack.length) {
      const nr = stack.pop()!;
      if (!(nr > 0 && nr < this.limit) || seen.has(nr) || this.state[nr] !== 2 || this.claims[nr] !== claim) continue;
      seen.add(nr);
      const b = await this.bm.readRaw(nr);
      const n = nrEntries(b);
      if (isLeaf(b)) visit(b, n);
      else for (let i = n - 1; i >= 0; i--) stack.push(childAt(b, i));
    }
  }

  private lost(spec: TreeSpec): void {
    this.metaIncomplete = true;
    if (spec.carriesData) this.dataIncomplete = true;
  }

  /**
   * Walks the tree at `root` (counting the reference to the root). Returns `root` when it could
   * be read (its summary is then available through {@link entriesOf}) or {@link BAD}.
   */
  async walk(root: number, spec: TreeSpec, from: string, fromBlock: number): Promise<number> {
    const stack: Frame[] = [];
    const where = (extra?: number) => {
      const path = stack.map((f) => f.nr);
      if (extra !== undefined) path.push(extra);
      return `${spec.name}, path ${path.length ? path.join(' > ') : root}`;
    };
    let result = await this.begin(root, fromBlock, spec, true, stack, undefined, () => `${spec.name} (root, from ${from})`);
    if (result !== PUSHED) return result;
    while (stack.length) {
      const f = stack[stack.length - 1]!;
      if (f.i < f.n) {
        const c = childAt(f.node, f.i);
        const r = await this.begin(c, f.nr, spec, false, stack, f.prefetch, () => where(c));
        if (r === PUSHED) continue;
        this.childDone(f, r, spec, where);
        f.i++;
        continue;
      }
      stack.pop();
      const r = this.finish(f);
      if (stack.length) {
        const p = stack[stack.length - 1]!;
        this.childDone(p, r, spec, where);
        p.i++;
      } else {
        result = r;
      }
    }
    return result;
  }

  private async begin(nr: number, parent: number, spec: TreeSpec, isRoot: boolean, stack: Frame[], prefetch: Map<number, Promise<Block>> | undefined, where: () => string): Promise<number> {
    if (!this.reference(nr, spec.claim, 'btree node', where(), parent)) {
      this.lost(spec);
      return BAD;
    }
    const st = this.state[nr]!;
    if (st === 2) {
      this.sharedRefs++;
      // First met as a root, now as a child: the fill rule applies after all.
      if (!isRoot && (this.flags[nr]! & (FLAG_SMALL | FLAG_SMALL_REPORTED)) === FLAG_SMALL) {
        this.flags[nr]! |= FLAG_SMALL_REPORTED;
        this.sink.damage('node-underfull', `Cannot accept btree node ${nr} as a child: it is less than a third full (fine only for a root)`, nr, where());
      }
      return nr;
    }
    if (st === 1) {
      this.sink.damage('node-cycle', `Cannot walk ${spec.name}: node ${nr} is its own ancestor, expected a tree`, nr, where());
      this.lost(spec);
      return BAD;
    }
    if (st === 3) return BAD;
    const b = await this.read(nr, prefetch);
    const bad = validate(b, nodeValidator, 'node');
    if (bad) return this.unreadable(nr, spec, bad[0], bad[1], where);
    this.nodes++;
    const n = nrEntries(b);
    const max = maxEntries(b);
    const leaf = isLeaf(b);
    if (leaf && valueSize(b) !== spec.valueSize) {
      return this.unreadable(nr, spec, 'node-value-size', `Cannot read ${spec.name} leaf ${nr}: value size ${valueSize(b)}, expected ${spec.valueSize}`, where);
    }
    const small = n < Math.floor(max / 3) ? FLAG_SMALL | (isRoot ? 0 : FLAG_SMALL_REPORTED) : 0;
    if (!isRoot && small) {
      this.sink.damage('node-underfull', `Cannot accept btree node ${nr}: ${n} entries in a non-root node, expected at least ${Math.floor(max / 3)} (max_entries ${max} / 3)`, nr, where());
    }
    if (!leaf && n === 0) {
      this.sink.damage('node-underfull', `Cannot walk internal node ${nr}: it has no entries, expected at least one child`, nr, where());
    }
    // Keys: strictly increasing; min and max of the node.
    let minHi = 0, minLo = 0, maxHi = 0, maxLo = 0;
    if (n > 0) {
      let ph = keyHi(b, 0), pl = keyLo(b, 0);
      minHi = maxHi = ph;
      minLo = maxLo = pl;
      let reported = false;
      for (let i = 1; i < n; i++) {
        const h = keyHi(b, i), l = keyLo(b, i);
        if (cmpKey(h, l, ph, pl) <= 0 && !reported) {
          this.sink.damage('node-keys-order', `Cannot walk btree node ${nr}: key ${keyText(h, l)} at slot ${i} is not above key ${keyText(ph, pl)} at slot ${i - 1}, expected strictly increasing keys`, nr, where());
          reported = true;
        }
        if (cmpKey(h, l, minHi, minLo) < 0) { minHi = h; minLo = l; }
        if (cmpKey(h, l, maxHi, maxLo) > 0) { maxHi = h; maxLo = l; }
        ph = h;
        pl = l;
      }
    }
    if (leaf) {
      spec.leaf(b, n, where);
      this.store(nr, 0, n, (n === 0 ? FLAG_EMPTY : 0) | small, minHi, minLo, maxHi, maxLo);
      return nr;
    }
    this.state[nr] = 1;
    const pf = new Map<number, Promise<Block>>();
    for (let i = 0; i < n; i++) {
      const c = childAt(b, i);
      if (c > 0 && c < this.limit && this.state[c] === 0 && !pf.has(c)) {
        const p = this.bm.readRaw(c);
        p.catch(() => undefined);
        pf.set(c, p);
      }
    }
    stack.push({ nr, node: b, n, i: 0, childHeight: -1, entries: 0, flags: FLAG_EMPTY | small, minHi: 0, minLo: 0, maxHi: 0, maxLo: 0, unbalanced: false, prefetch: pf });
    return PUSHED;
  }

  private unreadable(nr: number, spec: TreeSpec, code: string, message: string, where: () => string): number {
    this.state[nr] = 3;
    this.sink.damage(code, message, nr, where());
    this.lost(spec);
    return BAD;
  }

  private store(nr: number, height: number, entries: number, flags: number, minHi: number, minLo: number, maxHi: number, maxLo: number): void {
    this.state[nr] = 2;
    this.height[nr] = height;
    this.entries[nr] = entries;
    this.flags[nr] = flags;
    this.minHi[nr] = minHi;
    this.minLo[nr] = minLo;
    this.maxHi[nr] = maxHi;
    this.maxLo[nr] = maxLo;
  }

  private childDone(f: Frame, r: number, spec: TreeSpec, where: (extra?: number) => string): void {
    if (r === BAD) {
      f.flags |= FLAG_PARTIAL;
      return;
    }
    f.entries += this.entries[r]!;
    const rf = this.flags[r]!;
    if (rf & FLAG_PARTIAL) f.flags |= FLAG_PARTIAL;
    const h = this.height[r]!;
    if (h >= 0) {
      if (f.childHeight < 0) f.childHeight = h;
      else if (h !== f.childHeight && !f.unbalanced) {
        f.unbalanced = true;
        this.sink.damage('tree-unbalanced', `Cannot accept ${spec.name} node ${f.nr}: child ${r} has leaves ${h} levels down and an earlier child ${f.childHeight}, expected all leaves at one depth`, f.nr, where());
      }
    }
    if (rf & FLAG_EMPTY) return;
    const kh = keyHi(f.node, f.i), kl = keyLo(f.node, f.i);
    const mh = this.minHi[r]!, ml = this.minLo[r]!;
    const c = cmpKey(kh, kl, mh, ml);
    if (c > 0) {
      this.sink.damage('internal-key-high', `Cannot accept key ${keyText(kh, kl)} of slot ${f.i} in node ${f.nr}: the lowest key below it (child ${r}) is ${keyText(mh, ml)}, expected at most that`, f.nr, where());
    } else if (c < 0 && !(rf & FLAG_PARTIAL)) {
      this.sink.warning('internal-key-low', `Key ${keyText(kh, kl)} of slot ${f.i} in node ${f.nr} is below the lowest key under child ${r} (${keyText(mh, ml)}), expected equal`, f.nr, where());
    }
    if (f.i + 1 < f.n) {
      const nh = keyHi(f.node, f.i + 1), nl = keyLo(f.node, f.i + 1);
      if (cmpKey(this.maxHi[r]!, this.maxLo[r]!, nh, nl) >= 0) {
        this.sink.damage('key-range', `Cannot accept child ${r} of node ${f.nr}: it holds key ${keyText(this.maxHi[r]!, this.maxLo[r]!)}, expected keys below ${keyText(nh, nl)} (the next slot's key)`, r, where(r));
      }
    }
    if (f.flags & FLAG_EMPTY) {
      f.flags &= ~FLAG_EMPTY;
      f.minHi = mh; f.minLo = ml; f.maxHi = this.maxHi[r]!; f.maxLo = this.maxLo[r]!;
    } else {
      if (cmpKey(mh, ml, f.minHi, f.minLo) < 0) { f.minHi = mh; f.minLo = ml; }
      if (cmpKey(this.maxHi[r]!, this.maxLo[r]!, f.maxHi, f.maxLo) > 0) { f.maxHi = this.maxHi[r]!; f.maxLo = this.maxLo[r]!; }
    }
  }

  private finish(f: Frame): number {
    const h = f.childHeight < 0 ? -1 : f.childHeight + 1;
    this.store(f.nr, h, f.entries, f.flags | (h < 0 && f.n > 0 ? FLAG_PARTIAL : 0), f.minHi, f.minLo, f.maxHi, f.maxLo);
    return f.nr;
  }
}

/** Recomputed data reference counts: 2 bytes per data block, in chunks of one bitmap, allocated when first used. */
export class DataCounts {
  static readonly CHUNK = 16320;
  private readonly chunks = new Map<number, Uint16Array>();
  private readonly big = new Map<number, number>();
  private lastK = -1;
  private last: Uint16Array | undefined;
  used = 0;

  inc(b: number): void {
    const k = Math.floor(b / DataCounts.CHUNK);
    let c = k === this.lastK ? this.last : this.chunks.get(k);
    if (!c) {
      c = new Uint16Array(DataCounts.CHUNK);
      this.chunks.set(k, c);
    }
    this.lastK = k;
    this.last = c;
    const i = b - k * DataCounts.CHUNK;
    const v = c[i]!;
    if (v === 0) this.used++;
    if (v === 0xffff) this.big.set(b, (this.big.get(b) ?? 0xffff) + 1);
    else c[i] = v + 1;
  }

  /** The chunk of bitmap `k`, or undefined when no block of it is referenced. */
  chunk(k: number): Uint16Array | undefined {
    return this.chunks.get(k);
  }

  get(b: number): number {
    const c = this.chunks.get(Math.floor(b / DataCounts.CHUNK));
    const v = c ? c[b % DataCounts.CHUNK]! : 0;
    return v === 0xffff ? this.big.get(b) ?? v : v;
  }

  /** Count at slot `i` of `chunk` of bitmap `k`. */
  at(chunk: Uint16Array, k: number, i: number): number {
    const v = chunk[i]!;
    return v === 0xffff ? this.big.get(k * DataCounts.CHUNK + i) ?? v : v;
  }

  /** Bitmaps with referenced blocks. */
  chunkIndexes(): number[] {
    return [...this.chunks.keys()];
  }
}
