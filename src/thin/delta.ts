/**
 * Differences between two thin devices, like `thin_delta --snap1 A --snap2 B [--verbose]`.
 *
 * Each device's mappings are read in virtual-block order, in bounded chunks, and grouped into
 * runs of consecutive virtual blocks mapped to consecutive data blocks (times are ignored, as
 * thin_delta does). The two run streams are merged in one pass: where only the left device maps a
 * block it is `left_only`, only the right `right_only`, both to the same data block `same`, to
 * different ones `different`. A range ends where either side's run ends, which is what
 * `--verbose` shows; the plain form merges neighbouring ranges of one kind.
 */
import { NotFoundError } from '../errors.js';
import { type Key, MAX_KEY, addKey, keyGap, sameKey } from '../pdata/btree-node.js';
import type { TextSink } from '../io/text-sink.js';
import type { MetadataView, ThinMetadata } from './metadata.js';

export interface DeltaOptions {
  /** Compare within the held metadata snapshot instead of the live metadata (`thin_delta -m`). */
  metadataSnap?: boolean;
}

export type DeltaKind = 'same' | 'different' | 'left_only' | 'right_only';

/** A range of virtual blocks `[begin, begin + length)` with one kind of difference. */
export type DeltaRange =
  | { kind: 'same'; begin: Key; length: number; dataBegin: number }
  | { kind: 'different'; begin: Key; length: number; leftDataBegin: number; rightDataBegin: number }
  | { kind: 'left_only' | 'right_only'; begin: Key; length: number; dataBegin: number };

/** The `<superblock>` and `<diff>` attributes of thin_delta's output. */
export interface DeltaHeader {
  time: number;
  transactionId: number;
  dataBlockSize: number;
  nrDataBlocks: number;
  /** Held metadata snapshot block, printed by thin_delta 0.9 when reading live metadata that has one. */
  metadataSnap?: number;
  left: number;
  right: number;
}

const CHUNK = 4096;

interface Run {
  v: Key;
  d: number;
  len: number;
}

/** Runs of one device, read `CHUNK` mappings at a time. */
class RunReader {
  private buf: { v: Key; d: number }[] = [];
  private i = 0;
  private from: Key = 0;
  private ended = false;
  private pending: { v: Key; d: number } | undefined;

  constructor(private readonly view: MetadataView, private readonly id: number) {}

  private async mapping(): Promise<{ v: Key; d: number } | undefined> {
    if (this.i < this.buf.length) return this.buf[this.i++];
    if (this.ended) return undefined;
    const buf: { v: Key; d: number }[] = [];
    await this.view.walk(this.id, (v, m) => {
      buf.push({ v, d: m.block });
      return buf.length < CHUNK;
    }, this.from);
    this.buf = buf;
    this.i = 0;
    if (buf.length < CHUNK) this.ended = true;
    if (buf.length) {
      const last = buf[buf.length - 1]!.v;
      if (BigInt(last) === MAX_KEY) this.ended = true;
      else this.from = addKey(last, 1);
    }
    return this.i < buf.length ? buf[this.i++] : undefined;
  }

  async next(): Promise<Run | undefined> {
    const first = this.pending ?? (await this.mapping());
    this.pending = undefined;
    if (!first) return undefined;
    const run: Run = { v: first.v, d: first.d, len: 1 };
    for (;;) {
      const m = await this.mapping();
      if (!m) break;
      if (m.d === run.d + run.len && sameKey(m.v, addKey(run.v, run.len))) {
        run.len++;
        continue;
      }
      this.pending = m;
      break;
    }
    return run;
  }
}

function consume(r: Run, n: number): void {
  r.v = addKey(r.v, n);
  r.d += n;
  r.len -= n;
}

/**
 * Yields the ranges of `left` versus `right` in virtual-block order, split where either side's
 * run ends (the granularity of `thin_delta --verbose`).
 * @throws NotFoundError when a device is not in the view.
 */
export async function* deltaRanges(view: MetadataView, left: number, right: number): AsyncGenerator<DeltaRange> {
  for (const id of [left, right]) {
    if (!view.devices.some((d) => d.id === id)) throw new NotFoundError(`Cannot diff thin devices ${left} and ${right}: no device ${id}`, { id });
  }
  const lr = new RunReader(view, left);
  const rr = new RunReader(view, right);
  let l = await lr.next();
  let r = await rr.next();
  while (l && r) {
    if (l.v < r.v) {
      const n = Math.min(l.len, keyGap(l.v, r.v));
      yield { kind: 'left_only', begin: l.v, length: n, dataBegin: l.d };
      consume(l, n);
    } else if (r.v < l.v) {
      const n = Math.min(r.len, keyGap(r.v, l.v));
      yield { kind: 'right_only', begin: r.v, length: n, dataBegin: r.d };
      consume(r, n);
    } else {
      const n = Math.min(l.len, r.len);
      if (l.d === r.d) yield { kind: 'same', begin: l.v, length: n, dataBegin: l.d };
      else yield { kind: 'different', begin: l.v, length: n, leftDataBegin: l.d, rightDataBegin: r.d };
      consume(l, n);
      consume(r, n);
    }
    if (l.len === 0) l = await lr.next();
    if (r.len === 0) r = await rr.next();
  }
  for (; l; l = await lr.next()) yield { kind: 'left_only', begin: l.v, length: l.len, dataBegin: l.d };
  for (; r; r = await rr.next()) yield { kind: 'right_only', begin: r.v, length: r.len, dataBegin: r.d };
}

/**
 * The ranges where devices `a` and `b` differ or agree, in virtual-block order.
 * @example const ranges = await deltaDevices(md, 1, 2);
 */
export async function deltaDevices(md: ThinMetadata, a: number, b: number, opts: DeltaOptions = {}): Promise<DeltaRange[]> {
  const view = await md.view(!!opts.metadataSnap);
  const out: DeltaRange[] = [];
  for await (const r of deltaRanges(view, a, b)) out.push(r);
  return out;
}

/** The header thin_delta prints for `a` and `b` of this view. */
export function deltaHeaderOf(view: MetadataView, a: number, b: number): DeltaHeader {
  const sb = view.superblock;
  const h: DeltaHeader = { time: sb.time, transactionId: sb.transactionId, dataBlockSize: sb.dataBlockSize, nrDataBlocks: view.nrDataBlocks, left: a, right: b };
  if (sb.heldRoot) h.metadataSnap = sb.heldRoot;
  return h;
}

/** Writes thin_delta's XML a range at a time. */
class DeltaXmlWriter {
  private text = '';
  private cur: { kind: DeltaKind; begin: Key; end: Key } | undefined;
  private open: DeltaKind | undefined;

  constructor(header: DeltaHeader, private readonly verbose: boolean) {
    const snap = header.metadataSnap === undefined ? '' : ` metadata_snap="${header.metadataSnap}"`;
    this.text = `<superblock uuid="" time="${header.time}" transaction="${header.transactionId}" data_block_size="${header.dataBlockSize}" nr_data_blocks="${header.nrDataBlocks}"${snap}>\n`
      + `  <diff left="${header.left}" right="${header.right}">\n`;
  }

  push(r: DeltaRange): void {
    if (this.verbose) {
      if (this.open !== r.kind) {
        if (this.open) this.text += `    </${this.open}>\n`;
        this.text += `    <${r.kind}>\n`;
        this.open = r.kind;
      }
      this.text += r.kind === 'different'
        ? `      <range begin="${r.begin}" left_data_begin="${r.leftDataBegin}" right_data_begin="${r.rightDataBegin}" length="${r.length}"/>\n`
        : `      <range begin="${r.begin}" data_begin="${r.dataBegin}" length="${r.length}"/>\n`;
      return;
    }
    const c = this.cur;
    if (c && c.kind === r.kind && sameKey(c.end, r.begin)) {
      c.end = addKey(c.end, r.length);
      return;
    }
    this.flushRange();
    this.cur = { kind: r.kind, begin: r.begin, end: addKey(r.begin, r.length) };
  }

  private flushRange(): void {
    const c = this.cur;
    if (!c) return;
    this.text += `    <${c.kind} begin="${c.begin}" length="${keyGap(c.begin, c.end)}"/>\n`;
    this.cur = undefined;
  }

  /** Text ready to write. */
  take(): string {
    const t = this.text;
    this.text = '';
    return t;
  }

  end(): string {
    if (this.verbose) {
      if (this.open) this.text += `    </${this.open}>\n`;
    } else this.flushRange();
    this.text += '  </diff>\n</superblock>\n';
    return this.take();
  }
}

/**
 * thin_delta 0.9's XML for `ranges` (as from {@link deltaDevices}): `<same>`, `<different>`,
 * `<left_only>`, `<right_only>` elements with `begin` and `length`, or with `verbose` the same
 * kinds as containers of `<range>` elements carrying the data blocks.
 * @example formatDeltaXml(deltaHeaderOf(await md.view(), 1, 2), await deltaDevices(md, 1, 2), { verbose: true });
 */
export function formatDeltaXml(header: DeltaHeader, ranges: Iterable<DeltaRange>, opts: { verbose?: boolean } = {}): string {
  const w = new DeltaXmlWriter(header, !!opts.verbose);
  let text = '';
  for (const r of ranges) w.push(r);
  text += w.take();
  return text + w.end();
}

/**
 * Streams thin_delta's XML for devices `a` and `b` of `md` to `out`, without collecting the ranges.
 * @example await writeDeltaXml(md, 1, 2, (s) => process.stdout.write(s), { verbose: true });
 */
export async function writeDeltaXml(md: ThinMetadata, a: number, b: number, out: TextSink, opts: DeltaOptions & { verbose?: boolean } = {}): Promise<void> {
  const view = await md.view(!!opts.metadataSnap);
  const gen = deltaRanges(view, a, b);
  const first = await gen.next();
  const w = new DeltaXmlWriter(deltaHeaderOf(view, a, b), !!opts.verbose);
  if (!first.done) {
    w.push(first.value);
    let n = 0;
    for await (const r of gen) {
      w.push(r);
      if (++n % 4096 === 0) await out(w.take());
    }
  }
  await out(w.take());
  await out(w.end());
}
