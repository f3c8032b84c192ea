/**
 * A plain in-memory model of dm-thin metadata semantics (devices, mappings with times, pool
 * time, snapshots as copies) used as the reference in tests: its XML is what `thin_dump` must
 * print for the same state, and its ls counts are what `thin_ls` must print.
 */
export interface ModelMapping {
  block: number;
  time: number;
}

export interface ModelDevice {
  mappings: Map<number, ModelMapping>;
  transactionId: number;
  creationTime: number;
  snapshottedTime: number;
}

export class ThinModel {
  time = 0;
  transactionId = 0;
  devices = new Map<number, ModelDevice>();

  constructor(readonly dataBlockSize: number, public nrDataBlocks: number) {}

  clone(): ThinModel {
    const m = new ThinModel(this.dataBlockSize, this.nrDataBlocks);
    m.time = this.time;
    m.transactionId = this.transactionId;
    for (const [id, d] of this.devices) m.devices.set(id, { ...d, mappings: new Map(d.mappings) });
    return m;
  }

  createThin(id: number): void {
    this.devices.set(id, { mappings: new Map(), transactionId: this.transactionId, creationTime: this.time, snapshottedTime: this.time });
  }

  createSnap(id: number, origin: number): void {
    const o = this.devices.get(origin)!;
    this.time++;
    o.snapshottedTime = this.time;
    this.devices.set(id, { mappings: new Map(o.mappings), transactionId: this.transactionId, creationTime: this.time, snapshottedTime: this.time });
  }

  delete(id: number): void {
    this.devices.delete(id);
  }

  insert(id: number, vblock: number, block: number): void {
    this.devices.get(id)!.mappings.set(vblock, { block, time: this.time });
  }

  remove(id: number, vblock: number): void {
    this.devices.get(id)!.mappings.delete(vblock);
  }

  removeRange(id: number, from: number, to: number): void {
    const m = this.devices.get(id)!.mappings;
    for (const k of [...m.keys()]) if (k >= from && k < to) m.delete(k);
  }

  /** True when a write to `vblock` of `id` must copy (the kernel's sharing rule). */
  isShared(id: number, vblock: number): boolean {
    const d = this.devices.get(id)!;
    const m = d.mappings.get(vblock);
    return !!m && m.time < d.snapshottedTime;
  }

  /** Data blocks referenced by any device. */
  usedBlocks(): Set<number> {
    const s = new Set<number>();
    for (const d of this.devices.values()) for (const m of d.mappings.values()) s.add(m.block);
    return s;
  }

  /** XML as thin_dump 0.9 prints it for this state. */
  toXml(): string {
    let out = `<superblock uuid="" time="${this.time}" transaction="${this.transactionId}" flags="0" version="2" data_block_size="${this.dataBlockSize}" nr_data_blocks="${this.nrDataBlocks}">\n`;
    for (const id of [...this.devices.keys()].sort((a, b) => a - b)) {
      const d = this.devices.get(id)!;
      out += `  <device dev_id="${id}" mapped_blocks="${d.mappings.size}" transaction="${d.transactionId}" creation_time="${d.creationTime}" snap_time="${d.snapshottedTime}">\n`;
      const keys = [...d.mappings.keys()].sort((a, b) => a - b);
      let i = 0;
      while (i < keys.length) {
        const v = keys[i]!;
        const m = d.mappings.get(v)!;
        let n = 1;
        while (i + n < keys.length && keys[i + n] === v + n) {
          const x = d.mappings.get(v + n)!;
          if (x.block !== m.block + n || x.time !== m.time) break;
          n++;
        }
        out += n === 1
          ? `    <single_mapping origin_block="${v}" data_block="${m.block}" time="${m.time}"/>\n`
          : `    <range_mapping origin_begin="${v}" data_begin="${m.block}" length="${n}" time="${m.time}"/>\n`;
        i += n;
      }
      out += '  </device>\n';
    }
    return out + '</superblock>\n';
  }

  /** thin_ls's MAPPED/EXCLUSIVE/SHARED per device: a block mapped by exactly one device is exclusive. */
  lsCounts(): Map<number, { mapped: number; exclusive: number; shared: number }> {
    const users = new Map<number, number>();
    for (const d of this.devices.values()) for (const m of d.mappings.values()) users.set(m.block, (users.get(m.block) ?? 0) + 1);
    const out = new Map<number, { mapped: number; exclusive: number; shared: number }>();
    for (const [id, d] of this.devices) {
      let exclusive = 0;
      for (const m of d.mappings.values()) if (users.get(m.block) === 1) exclusive++;
      out.set(id, { mapped: d.mappings.size, exclusive, shared: d.mappings.size - exclusive });
    }
    return out;
  }
}
