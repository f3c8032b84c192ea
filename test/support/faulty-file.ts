/**
 * An in-memory {@link BlockFile} that simulates a power cut: it remembers which writes were made
 * durable by a completed `sync`, can be told to die after N more operations (every later call
 * fails, like a process that lost power), and produces the image a disk would hold after the cut:
 * the durable bytes, optionally with one unsynced write torn at a 512-byte boundary.
 */
import type { BlockFile, WriteRun } from '../../src/io/block-file.js';
import { IoError } from '../../src/errors.js';
import type { Rng } from './rng.js';

interface PendingWrite {
  pos: number;
  data: Uint8Array;
}

export class PowerCut extends IoError {
  constructor() {
    super('Cannot complete the operation: power cut (injected)', {});
  }
}

/**
 * The power supply of one or more faulty files: a cut (now, or after N more operations on any
 * of them) kills them all at once, as a machine losing power would.
 */
export class Power {
  /** Operations (writes and syncs) done so far on every file of this supply. */
  ops = 0;
  private budget = Infinity;
  private deadValue = false;

  /** After `n` more writes or syncs on any file, every call fails with {@link PowerCut}. */
  failAfter(n: number): void {
    this.budget = this.ops + n;
  }

  /** Cuts the power now. */
  cut(): void {
    this.deadValue = true;
  }

  get dead(): boolean {
    return this.deadValue;
  }

  step(): void {
    if (this.deadValue || this.ops >= this.budget) {
      this.deadValue = true;
      throw new PowerCut();
    }
    this.ops++;
  }
}

export class FaultyBlockFile implements BlockFile {
  private current: Uint8Array;
  private durable: Uint8Array;
  private pending: PendingWrite[] = [];
  private sizeValue = 0;
  private durableSize = 0;
  /** Operations (writes and syncs) done so far on this file. */
  ops = 0;
  /** Writes completed so far (see BlockFile.completedWrites). */
  completedWrites = 0;
  /** Syncs completed so far (writeDurable counts one). */
  syncs = 0;

  /** `power` is shared by files that lose power together (each file has its own by default). */
  constructor(readonly path: string, image: Uint8Array = new Uint8Array(0), readonly power: Power = new Power()) {
    // Copies (a Buffer's slice() would share the bytes).
    this.current = new Uint8Array(image);
    this.durable = new Uint8Array(image);
    this.sizeValue = image.length;
    this.durableSize = image.length;
  }

  /** After `n` more writes or syncs (on any file of this file's supply), every call fails with {@link PowerCut}. */
  failAfter(n: number): void {
    this.power.failAfter(n);
  }

  get isDead(): boolean {
    return this.power.dead;
  }

  private get dead(): boolean {
    return this.power.dead;
  }

  private step(): void {
    this.power.step();
    this.ops++;
  }

  private static grow(buf: Uint8Array, size: number): Uint8Array {
    if (buf.length >= size) return buf;
    const n = new Uint8Array(Math.max(size, buf.length * 2));
    n.set(buf);
    return n;
  }

  async read(buf: Uint8Array, position: number): Promise<void> {
    if (this.dead) throw new PowerCut();
    buf.fill(0);
    const end = Math.min(this.sizeValue, position + buf.length);
    if (end > position) buf.set(this.current.subarray(position, end));
  }

  /** Reads what the file holds now (an in-memory file is always "cached"). */
  readCached(buf: Uint8Array, position: number): boolean {
    if (this.dead) return false;
    buf.fill(0);
    const end = Math.min(this.sizeValue, position + buf.length);
    if (end > position) buf.set(this.current.subarray(position, end));
    return true;
  }

  async write(buf: Uint8Array, position: number): Promise<void> {
    this.step();
    this.completedWrites++;
    this.current = FaultyBlockFile.grow(this.current, position + buf.length);
    this.current.set(buf, position);
    this.sizeValue = Math.max(this.sizeValue, position + buf.length);
    this.pending.push({ pos: position, data: new Uint8Array(buf) });
  }

  async writev(bufs: readonly Uint8Array[], position: number): Promise<void> {
    let pos = position;
    for (const b of bufs) {
      await this.write(b, pos);
      pos += b.length;
    }
  }

  /** The writes, then the sync: a power cut can fall between any two of them. */
  async writeDurable(runs: readonly WriteRun[]): Promise<void> {
    for (const r of runs) await this.writev(r.bufs, r.position);
    await this.sync();
  }

  async sync(): Promise<void> {
    this.step();
    this.syncs++;
    this.durable = FaultyBlockFile.grow(this.durable, this.current.length);
    for (const w of this.pending) this.durable.set(w.data, w.pos);
    this.pending = [];
    this.durableSize = this.sizeValue;
  }

  async size(): Promise<number> {
    return this.sizeValue;
  }

  async truncate(size: number): Promise<void> {
    this.step();
    this.completedWrites++;
    this.current = FaultyBlockFile.grow(this.current, size);
    if (size < this.sizeValue) this.current.fill(0, size);
    this.sizeValue = size;
    // Size changes are metadata the file system journals; treat them as durable at once.
    this.durable = FaultyBlockFile.grow(this.durable, size);
    if (size < this.durableSize) this.durable.fill(0, size);
    this.durableSize = size;
  }

  async punchHole(offset: number, length: number): Promise<void> {
    const zero = new Uint8Array(Math.min(length, Math.max(0, this.sizeValue - offset)));
    await this.write(zero, offset);
  }

  async close(): Promise<void> {}

  /** Unsynced writes since the last completed sync. */
  get unsynced(): number {
    return this.pending.length;
  }

  /**
   * The bytes on "disk" after a power cut now: every synced write, and with `tear` one of the
   * unsynced writes cut at a random 512-byte boundary (the rest of it and all other unsynced
   * writes are lost).
   */
  crashImage(rng?: Rng, tear = false): Uint8Array {
    const img = new Uint8Array(this.durable.subarray(0, Math.max(this.durableSize, 0)));
    if (tear && rng && this.pending.length) {
      const w = this.pending[rng.int(this.pending.length)]!;
      const sectors = Math.floor(w.data.length / 512);
      if (sectors > 1) {
        const keep = rng.range(1, sectors - 1) * 512;
        img.set(w.data.subarray(0, Math.min(keep, img.length - w.pos)), w.pos);
      }
    }
    return img;
  }

  /** The current contents (as a process that did not crash would read them). */
  image(): Uint8Array {
    return this.current.slice(0, this.sizeValue);
  }
}

/**
 * A directory of faulty files on one power supply, for code that opens files by name (a pool's
 * `files` option, the catalog's files). Opening a name twice gives the same file; {@link crashed}
 * gives the directory a power cut now would leave.
 */
export class FaultyFiles {
  readonly power: Power;
  readonly files = new Map<string, FaultyBlockFile>();

  constructor(images: ReadonlyMap<string, Uint8Array> = new Map(), power = new Power()) {
    this.power = power;
    for (const [name, img] of images) this.files.set(name, new FaultyBlockFile(name, img, power));
  }

  async open(name: string): Promise<FaultyBlockFile> {
    let f = this.files.get(name);
    if (!f) {
      if (this.power.dead) throw new PowerCut();
      f = new FaultyBlockFile(name, new Uint8Array(0), this.power);
      this.files.set(name, f);
    }
    return f;
  }

  /** New files here are durable once created (the model keeps directory entries durable). */
  async syncDirectory(): Promise<void> {}

  get(name: string): FaultyBlockFile {
    const f = this.files.get(name);
    if (!f) throw new Error(`no faulty file ${name}`);
    return f;
  }

  /**
   * The files after a power cut now, on a fresh supply: each keeps its synced writes; with
   * `tear`, one unsynced write (of one file, picked by `rng`) survives in part.
   */
  crashed(rng?: Rng, tear = false): FaultyFiles {
    const names = [...this.files.keys()];
    const torn = tear && rng ? names.filter((n) => this.files.get(n)!.unsynced > 0) : [];
    const tearIn = torn.length ? torn[rng!.int(torn.length)] : undefined;
    const images = new Map(names.map((n) => [n, this.files.get(n)!.crashImage(rng, n === tearIn)] as const));
    return new FaultyFiles(images);
  }
}
