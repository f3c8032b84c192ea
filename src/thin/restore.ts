/**
 * Restores pool metadata from XML (`thin_restore`): the form thin_dump 0.9 writes, the 1.x form
 * with `<def>`/`<ref>` shared runs, and ours ({@link dumpXml}). The document is streamed: mappings
 * are inserted as they are parsed, so only the open transaction and the `<def>` runs (packed, 40
 * bytes per run) are held in memory, never the text.
 *
 * Validation follows thin_restore (the stricter of 0.9 and 1.x where they differ): unknown
 * elements or attributes, numbers that are not plain decimal or out of range, a data block past
 * `nr_data_blocks`, a device id used twice, a data block size the kernel refuses, a `<ref>` to an
 * unknown `<def>`, a mapping time of 2^24 or more (both tools let it spill into the data block
 * number) all fail with a {@link UsageError} naming the line. Unlike 1.x, mappings may come in
 * any order; a second mapping of the same virtual block replaces the first (0.9).
 * After any failure the output's superblock is zeroed, so the file never looks like valid metadata.
 */
import { SaxesParser, type SaxesTagPlain } from 'saxes';
import { NoSpaceError, ThinpoolError, UsageError } from '../errors.js';
import type { BlockFile } from '../io/block-file.js';
import { BLOCK_SIZE } from '../pdata/block-manager.js';
import { type Key, MAX_KEY, addKey, joinKey, splitKey } from '../pdata/btree-node.js';
import { MAX_DATA_BLOCK, TIME_MASK } from './block-time.js';
import { ThinMetadata } from './metadata.js';
import type { ThinDevice } from './thin-device.js';
import { MAX_DEVICE_ID, validDataBlockSize } from './superblock.js';

export interface RestoreOptions {
  /** Number of data blocks of the new pool, instead of the XML's `nr_data_blocks` (required when that is 0, as in a `thin_dump -m` of a metadata snapshot). */
  nrDataBlocks?: number;
  /** Metadata size in 4 KiB blocks (default: the file's size). */
  nrMetadataBlocks?: number;
  /**
   * Called once with the `<superblock>`'s data block size and `nr_data_blocks`, before anything
   * is written: the sizes it returns replace the options' (a pool restore sizes its files from
   * the XML this way; it may also refuse the XML by throwing).
   */
  size?(xml: { dataBlockSize: number; nrDataBlocks: number }): { nrDataBlocks?: number; nrMetadataBlocks?: number };
}

/** What a restore built. */
export interface RestoreSummary {
  devices: number;
  /** Mappings stored (ranges and `<ref>`s expanded; a block mapped twice counts once). */
  mappings: number;
  /** Mapping elements that mapped a block the same device had mapped already (the later one is kept). */
  replaced: number;
  /** `<def>` elements read. */
  defs: number;
  dataBlockSize: number;
  nrDataBlocks: number;
  nrMetadataBlocks: number;
  /** Metadata blocks in use after the commit. */
  metadataBlocksUsed: number;
}

/** XML input: text or bytes (UTF-8), e.g. a file read stream. */
export type XmlInput = AsyncIterable<string | Uint8Array> | NodeJS.ReadableStream;

const SLICE = 1 << 16;
const U32_MAX = 0xffffffff;
/** ThinMetadata.format's minimum. */
const MIN_METADATA_BLOCKS = 16;

type XmlEvent =
  | { t: 'open'; name: string; attrs: Record<string, string>; line: number }
  | { t: 'close'; name: string; line: number }
  | { t: 'text'; line: number };

/** Runs of a `<def>`, packed five numbers a run: virtual block (hi, lo 32 bits), data block, length, time. */
class DefRuns {
  private buf = new Float64Array(40);
  count = 0;
  constructor(readonly line: number) {}
  push(v: Key, d: number, len: number, time: number): void {
    if ((this.count + 1) * 5 > this.buf.length) {
      const next = new Float64Array(this.buf.length * 2);
      next.set(this.buf);
      this.buf = next;
    }
    const [hi, lo] = splitKey(v);
    const o = this.count++ * 5;
    this.buf[o] = hi;
    this.buf[o + 1] = lo;
    this.buf[o + 2] = d;
    this.buf[o + 3] = len;
    this.buf[o + 4] = time;
  }
  run(i: number): { v: Key; d: number; len: number; time: number } {
    const o = i * 5;
    const b = this.buf;
    return { v: joinKey(b[o]!, b[o + 1]!), d: b[o + 2]!, len: b[o + 3]!, time: b[o + 4]! };
  }
}

const ATTRS: Record<string, { required: string[]; optional: string[] }> = {
  superblock: { required: ['time', 'transaction', 'data_block_size', 'nr_data_blocks'], optional: ['uuid', 'flags', 'version', 'metadata_snap'] },
  device: { required: ['dev_id', 'transaction', 'creation_time', 'snap_time'], optional: ['mapped_blocks'] },
  def: { required: ['name'], optional: [] },
  ref: { required: ['name'], optional: [] },
  single_mapping: { required: ['origin_block', 'data_block', 'time'], optional: [] },
  range_mapping: { required: ['origin_begin', 'data_begin', 'length', 'time'], optional: [] },
};

const EMPTY_ELEMENTS = new Set(['single_mapping', 'range_mapping', 'ref']);

class Restorer {
  md: ThinMetadata | undefined;
  private state: 'start' | 'superblock' | 'device' | 'def' | 'done' = 'start';
  private leaf: string | undefined;
  /** The `<device>` being read. */
  private dev: ThinDevice | undefined;
  private def: DefRuns | undefined;
  private readonly defs = new Map<string, DefRuns>();
  private readonly deviceLines = new Map<number, number>();
  private sbAttrs = { time: 0, transaction: 0, flags: 0 };
  private nrData = 0;
  private dataBlockSize = 0;
  /** Mappings inserted, counting a block mapped twice twice. */
  mappings = 0;

  constructor(private readonly file: BlockFile, private readonly opts: RestoreOptions) {}

  get done(): boolean {
    return this.state === 'done';
  }

  summary(): RestoreSummary {
    const md = this.md!;
    let stored = 0;
    for (const id of this.deviceLines.keys()) stored += md.device(id).mappedBlocks;
    return {
      devices: this.deviceLines.size,
      mappings: stored,
      replaced: this.mappings - stored,
      defs: this.defs.size,
      dataBlockSize: this.dataBlockSize,
      nrDataBlocks: this.nrData,
      nrMetadataBlocks: md.nrMetadataBlocks,
      metadataBlocksUsed: md.usage.metadataBlocks.used,
    };
  }

  async event(e: XmlEvent): Promise<void> {
    if (e.t === 'text') throw bad(e.line, 'unexpected text between elements');
    if (e.t === 'close') return this.close(e.name, e.line);
    const { name, attrs, line } = e;
    if (this.leaf !== undefined) throw bad(line, `<${name}> inside <${this.leaf}>, which must be empty`);
    const spec = ATTRS[name];
    if (!spec) throw bad(line, `unknown element <${name}>`);
    checkAttrs(name, attrs, spec, line);
    if (EMPTY_ELEMENTS.has(name)) this.leaf = name;
    switch (name) {
      case 'superblock':
        return this.openSuperblock(attrs, line);
      case 'device':
        return this.openDevice(attrs, line);
      case 'def':
        return this.openDef(attrs, line);
      case 'ref':
        return this.ref(attrs, line);
      case 'single_mapping':
        return this.mapping(attrs.origin_block!, attrs.data_block!, '1', attrs.time!, line, 'origin_block', 'data_block');
      case 'range_mapping':
        return this.mapping(attrs.origin_begin!, attrs.data_begin!, attrs.length!, attrs.time!, line, 'origin_begin', 'data_begin');
    }
  }

  private async close(name: string, line: number): Promise<void> {
    if (this.leaf !== undefined) {
      this.leaf = undefined;
      return;
    }
    if (name === 'device' && this.state === 'device') this.state = 'superblock';
    else if (name === 'def' && this.state === 'def') {
      this.def = undefined;
      this.state = 'superblock';
    } else if (name === 'superblock' && this.state === 'superblock') {
      const md = this.md!;
      await md.setTime(this.sbAttrs.time);
      await md.setTransactionId(md.transactionId, this.sbAttrs.transaction);
      await md.setFlags(this.sbAttrs.flags);
      await md.commit();
      this.state = 'done';
    } else throw bad(line, `unexpected </${name}>`);
  }

  private async openSuperblock(a: Record<string, string>, line: number): Promise<void> {
    if (this.state !== 'start') throw bad(line, 'a second <superblock>');
    const time = u32(a.time!, 'time', line);
    const transaction = safe(a.transaction!, 'transaction', line);
    const flags = a.flags === undefined ? 0 : u32(a.flags, 'flags', line);
    if (a.version !== undefined) u32(a.version, 'version', line);
    if (a.metadata_snap !== undefined) u64(a.metadata_snap, 'metadata_snap', line);
    const dataBlockSize = u32(a.data_block_size!, 'data_block_size', line);
    if (!validDataBlockSize(dataBlockSize)) {
      throw bad(line, `data_block_size ${dataBlockSize} sectors is not a multiple of 128 in 128..2097152 (64 KiB..1 GiB)`);
    }
    let nrData = safe(a.nr_data_blocks!, 'nr_data_blocks', line);
    const sized = this.opts.size?.({ dataBlockSize, nrDataBlocks: nrData }) ?? {};
    const wantData = sized.nrDataBlocks ?? this.opts.nrDataBlocks;
    if (wantData !== undefined) nrData = wantData;
    if (!Number.isSafeInteger(nrData) || nrData < 1 || nrData > MAX_DATA_BLOCK + 1) {
      const hint = nrData === 0 ? ' (a dump of a metadata snapshot has 0: pass nrDataBlocks)' : '';
      throw bad(line, `nr_data_blocks ${nrData} is not in 1..2^40${hint}`);
    }
    let nrMeta = sized.nrMetadataBlocks ?? this.opts.nrMetadataBlocks;
    if (nrMeta === undefined) nrMeta = Math.floor((await this.file.size()) / BLOCK_SIZE);
    if (!(nrMeta >= MIN_METADATA_BLOCKS)) {
      throw bad(line, `the metadata would have ${nrMeta} blocks, at least ${MIN_METADATA_BLOCKS} are needed: give the file a size or pass nrMetadataBlocks`);
    }
    try {
      this.md = await ThinMetadata.format(this.file, { dataBlockSize, nrDataBlocks: nrData, nrMetadataBlocks: nrMeta });
    } catch (err) {
      if (err instanceof RangeError) throw bad(line, err.message);
      throw err;
    }
    await this.file.write(new Uint8Array(BLOCK_SIZE), 0);
    await this.file.sync();
    this.sbAttrs = { time, transaction, flags };
    this.nrData = nrData;
    this.dataBlockSize = dataBlockSize;
    this.state = 'superblock';
  }

  private async openDevice(a: Record<string, string>, line: number): Promise<void> {
    if (this.state === 'start') throw bad(line, `the document must start with <superblock>, not <device>`);
    if (this.state !== 'superblock') throw bad(line, `<device> must be directly inside <superblock>`);
    const id = u32(a.dev_id!, 'dev_id', line);
    if (id > MAX_DEVICE_ID) throw bad(line, `dev_id ${id} is above ${MAX_DEVICE_ID}, the kernel's limit`);
    const first = this.deviceLines.get(id);
    if (first !== undefined) throw bad(line, `device ${id} appears twice (first at line ${first})`);
    const transactionId = safe(a.transaction!, 'transaction', line);
    const creationTime = u32(a.creation_time!, 'creation_time', line);
    const snapshottedTime = u32(a.snap_time!, 'snap_time', line);
    if (a.mapped_blocks !== undefined) u64(a.mapped_blocks, 'mapped_blocks', line);
    const md = this.md!;
    await md.createThin(id);
    await md.setDeviceDetails(id, { transactionId, creationTime, snapshottedTime });
    this.deviceLines.set(id, line);
    this.dev = md.openDevice(id);
    this.state = 'device';
  }

  private async openDef(a: Record<string, string>, line: number): Promise<void> {
    if (this.state === 'start') throw bad(line, `the document must start with <superblock>, not <def>`);
    if (this.state !== 'superblock') throw bad(line, `<def> must be directly inside <superblock>`);
    const name = a.name!;
    const first = this.defs.get(name);
    if (first) throw bad(line, `<def name="${name}"> appears twice (first at line ${first.line})`);
    this.def = new DefRuns(line);
    this.defs.set(name, this.def);
    this.state = 'def';
  }

  private async ref(a: Record<string, string>, line: number): Promise<void> {
    if (this.state !== 'device') throw bad(line, '<ref> outside a <device>');
    const def = this.defs.get(a.name!);
    if (!def) throw bad(line, `<ref name="${a.name}"> names no <def> defined before it`);
    for (let i = 0; i < def.count; i++) {
      const r = def.run(i);
      await this.insertRun(r.v, r.d, r.len, r.time);
    }
  }

  private async mapping(vs: string, ds: string, lens: string, ts: string, line: number, vName: string, dName: string): Promise<void> {
    if (this.state !== 'device' && this.state !== 'def') throw bad(line, 'a mapping outside a <device> or <def>');
    const v = u64(vs, vName, line);
    const d = safe(ds, dName, line);
    const len = safe(lens, 'length', line);
    const time = u32(ts, 'time', line);
    if (time > TIME_MASK) throw bad(line, `time="${ts}" does not fit the 24 bits a mapping stores`);
    if (len === 0) return;
    if (d + len > this.nrData) {
      const what = len === 1 ? `data block ${d}` : `data blocks ${d}..${d + len - 1}`;
      throw bad(line, `${what} past the end of the data device (nr_data_blocks ${this.nrData})`);
    }
    if (BigInt(v) + BigInt(len) - 1n > MAX_KEY) throw bad(line, `virtual blocks ${v}+${len} pass 2^64`);
    if (this.state === 'def') this.def!.push(v, d, len, time);
    else await this.insertRun(v, d, len, time);
  }

  private async insertRun(v: Key, d: number, len: number, time: number): Promise<void> {
    const md = this.md!;
    const dev = this.dev!;
    if (typeof v === 'number' && v + len - 1 <= Number.MAX_SAFE_INTEGER) {
      for (let i = 0; i < len; i++) {
        await md.incDataBlock(d + i);
        await dev.insert(v + i, d + i, time);
      }
    } else {
      for (let i = 0; i < len; i++) {
        await md.incDataBlock(d + i);
        await dev.insert(addKey(v, i), d + i, time);
      }
    }
    this.mappings += len;
  }
}

function bad(line: number, what: string): UsageError {
  return new UsageError(`Cannot restore metadata: line ${line}: ${what}`, { line });
}

function checkAttrs(name: string, attrs: Record<string, string>, spec: { required: string[]; optional: string[] }, line: number): void {
  for (const k of Object.keys(attrs)) {
    if (!spec.required.includes(k) && !spec.optional.includes(k)) throw bad(line, `unknown attribute '${k}' on <${name}>`);
  }
  for (const k of spec.required) if (attrs[k] === undefined) throw bad(line, `<${name}> has no '${k}' attribute`);
}

/** A plain decimal u64: a number below 2^53, else a bigint. */
function u64(s: string, what: string, line: number): Key {
  const len = s.length;
  if (len > 0 && len <= 15) {
    let v = 0;
    for (let i = 0; i < len; i++) {
      const c = s.charCodeAt(i) - 48;
      if (c < 0 || c > 9) throw bad(line, `${what}="${s}" is not a decimal number`);
      v = v * 10 + c;
    }
    return v;
  }
  if (!/^[0-9]{1,20}$/.test(s)) throw bad(line, `${what}="${s}" is not a decimal number`);
  const n = BigInt(s);
  if (n > MAX_KEY) throw bad(line, `${what}="${s}" is larger than 2^64-1`);
  return n <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(n) : n;
}

/** A u64 attribute that must be below 2^53. */
function safe(s: string, what: string, line: number): number {
  const n = u64(s, what, line);
  if (typeof n !== 'number') throw bad(line, `${what}="${s}" is larger than 2^53-1`);
  return n;
}

function u32(s: string, what: string, line: number): number {
  const n = u64(s, what, line);
  if (typeof n !== 'number' || n > U32_MAX) throw bad(line, `${what}="${s}" is larger than 2^32-1`);
  return n;
}

async function* textOf(input: XmlInput): AsyncGenerator<string> {
  const dec = new TextDecoder('utf-8', { fatal: true });
  for await (const c of input as AsyncIterable<string | Uint8Array>) {
    const s = typeof c === 'string' ? c : dec.decode(c, { stream: true });
    for (let i = 0; i < s.length; i += SLICE) yield s.slice(i, i + SLICE);
  }
  const tail = dec.decode();
  if (tail) yield tail;
}

/**
 * Restores the XML `input` into `file` as new metadata and commits it once: the pool from
 * `<superblock>` (data block size, `nr_data_blocks`, time, transaction, flags), every device with
 * its id and details, and every mapping (the data block's count is raised, then the mapping is
 * inserted with the XML's time). `mapped_blocks` is computed; the XML value is ignored. The
 * metadata size is the file's size unless `opts.nrMetadataBlocks` is given.
 *
 * @throws UsageError (with `data.line`) for malformed or invalid XML; NoSpaceError when the
 * metadata does not fit. The output's superblock is zeroed after any failure.
 * @example
 * const file = await FileBlockFile.open('meta', { create: true });
 * await file.truncate(16 << 20);
 * const s = await restoreXml(createReadStream('pool.xml'), file);
 */
export async function restoreXml(input: XmlInput, file: BlockFile, opts: RestoreOptions = {}): Promise<RestoreSummary> {
  const r = new Restorer(file, opts);
  const parser = new SaxesParser<{ xmlns: false; position: true }>({ xmlns: false, position: true });
  let queue: XmlEvent[] = [];
  let tagLine = 1;
  parser.on('opentagstart', () => {
    tagLine = parser.line;
  });
  parser.on('opentag', (tag: SaxesTagPlain) => {
    queue.push({ t: 'open', name: tag.name, attrs: tag.attributes, line: tagLine });
    if (tag.isSelfClosing) queue.push({ t: 'close', name: tag.name, line: tagLine });
  });
  parser.on('closetag', (tag: SaxesTagPlain) => {
    if (!tag.isSelfClosing) queue.push({ t: 'close', name: tag.name, line: parser.line });
  });
  parser.on('text', (text: string) => {
    const at = text.search(/\S/);
    if (at >= 0) queue.push({ t: 'text', line: parser.line - newlines(text, 0, text.length) + newlines(text, 0, at) });
  });
  parser.on('cdata', () => {
    queue.push({ t: 'text', line: parser.line });
  });
  let line = 1;
  const drain = async () => {
    const q = queue;
    queue = [];
    for (const e of q) {
      line = e.line;
      await r.event(e);
    }
  };
  try {
    for await (const chunk of textOf(input)) {
      try {
        parser.write(chunk);
      } catch (err) {
        await drain();
        throw syntax(err, parser.line);
      }
      await drain();
    }
    try {
      parser.close();
    } catch (err) {
      await drain();
      throw syntax(err, parser.line);
    }
    await drain();
    if (!r.done) throw bad(parser.line, r.md ? 'the input ended before </superblock>' : 'no <superblock> element');
    return r.summary();
  } catch (err) {
    await invalidate(file);
    if (err instanceof NoSpaceError) {
      throw new NoSpaceError(`Cannot restore metadata: line ${line}: the metadata device (${r.md?.nrMetadataBlocks ?? '?'} blocks) is full: ${err.message}`, { line });
    }
    if (err instanceof TypeError && /decode|encoded/i.test(err.message)) throw bad(line, 'the input is not valid UTF-8');
    if (err instanceof ThinpoolError && err.data.line === undefined) err.data.line = line;
    throw err;
  }
}

function newlines(s: string, from: number, to: number): number {
  let n = 0;
  for (let i = s.indexOf('\n', from); i >= 0 && i < to; i = s.indexOf('\n', i + 1)) n++;
  return n;
}

function syntax(err: unknown, line: number): UsageError {
  const msg = err instanceof Error ? err.message.replace(/^(?:[^:]*:)?\d+:\d+: /, '') : String(err);
  return bad(line, `malformed XML: ${msg}`);
}

async function invalidate(file: BlockFile): Promise<void> {
  try {
    if ((await file.size()) >= BLOCK_SIZE) {
      await file.write(new Uint8Array(BLOCK_SIZE), 0);
      await file.sync();
    }
  } catch {
    // the original error matters more
  }
}
