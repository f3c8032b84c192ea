/**
 * Byte-level model of thin devices for tests: sparse blocks, dm-thin's discard rule (only whole
 * blocks inside the range are unmapped; partial ends keep their bytes), snapshots as copies,
 * resizes that drop what lies past the new end.
 */
export class VolumeModel {
  readonly devices = new Map<string, { size: number; blocks: Map<number, Buffer> }>();

  constructor(readonly blockSize: number) {}

  create(name: string, size: number): void {
    this.devices.set(name, { size, blocks: new Map() });
  }

  snapshot(origin: string, name: string): void {
    const o = this.devices.get(origin)!;
    // blocks are copied when either side writes them (see write)
    this.devices.set(name, { size: o.size, blocks: new Map(o.blocks) });
  }

  remove(name: string): void {
    this.devices.delete(name);
  }

  rename(from: string, to: string): void {
    const d = this.devices.get(from)!;
    this.devices.delete(from);
    this.devices.set(to, d);
  }

  private block(name: string, b: number): Buffer {
    const d = this.devices.get(name)!;
    const cur = d.blocks.get(b);
    const copy = cur ? Buffer.from(cur) : Buffer.alloc(this.blockSize);
    d.blocks.set(b, copy);
    return copy;
  }

  write(name: string, offset: number, data: Uint8Array): void {
    const bs = this.blockSize;
    for (let pos = offset; pos < offset + data.length; ) {
      const b = Math.floor(pos / bs);
      const inBlock = pos - b * bs;
      const n = Math.min(bs - inBlock, offset + data.length - pos);
      this.block(name, b).set(data.subarray(pos - offset, pos - offset + n), inBlock);
      pos += n;
    }
  }

  /** Whole blocks inside the range become unmapped; partial ends are untouched. */
  discard(name: string, offset: number, length: number): void {
    const bs = this.blockSize;
    const d = this.devices.get(name)!;
    for (let b = Math.ceil(offset / bs); b < Math.floor((offset + length) / bs); b++) d.blocks.delete(b);
  }

  resize(name: string, size: number): void {
    const d = this.devices.get(name)!;
    const bs = this.blockSize;
    if (size < d.size) {
      for (const b of [...d.blocks.keys()]) if (b * bs >= size) d.blocks.delete(b);
      const tail = Math.floor(size / bs);
      if (size % bs && d.blocks.has(tail)) this.block(name, tail).fill(0, size % bs);
    }
    d.size = size;
  }

  read(name: string, offset: number, length: number): Buffer {
    const bs = this.blockSize;
    const d = this.devices.get(name)!;
    const out = Buffer.alloc(length);
    for (let pos = offset; pos < offset + length; ) {
      const b = Math.floor(pos / bs);
      const inBlock = pos - b * bs;
      const n = Math.min(bs - inBlock, offset + length - pos);
      const blk = d.blocks.get(b);
      if (blk) blk.copy(out, pos - offset, inBlock, inBlock + n);
      pos += n;
    }
    return out;
  }
}
