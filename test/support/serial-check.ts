/**
 * Checks that the outcome of concurrent operations on one device equals some serial order of
 * them. Every write fills its range with its own id (in every 8 bytes), zeroing operations never
 * overlap each other and the device starts filled with id 1, so each 4 KiB sector names the
 * operation that wrote it last (zeros: the one zeroing op there). Each sector's last writer must
 * come after every other op covering it: edges of a graph. A snapshot shows, per sector, the op
 * it saw last (that op comes before it, the others covering the sector before that op or after
 * the snapshot). A topological order of the graph is then replayed serially and must give
 * exactly the final content and every snapshot's content: a found order proves the claim; a
 * cycle or a mismatch is a failure, reported with the sector.
 */
export const SECTOR = 4096;
export const INIT_ID = 1;

export type ConcOp =
  | { kind: 'write'; id: number; off: number; len: number }
  | { kind: 'zero' | 'discard'; id: number; off: number; len: number }
  | { kind: 'snapshot'; id: number; name: string };

/** Whole-sector ops (4 KiB aligned); `zero`/`discard` ranges never overlap each other. */
export function fill(id: number, len: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i += 8) b.writeUInt32LE(id, i);
  return b;
}

/** The id a sector holds (0 for zeros), or -1 when it is torn between ids. */
export function sectorId(buf: Buffer, s: number): number {
  const o = s * SECTOR;
  const id = buf.readUInt32LE(o);
  for (let i = o; i < o + SECTOR; i += 8) if (buf.readUInt32LE(i) !== id) return -1;
  return id;
}

function covers(op: ConcOp, s: number): boolean {
  if (op.kind === 'snapshot') return false;
  return s * SECTOR >= op.off && (s + 1) * SECTOR <= op.off + op.len;
}

/** What the op leaves in a sector it covers. */
const valueOf = (op: ConcOp) => (op.kind === 'write' ? op.id : 0);

/**
 * Returns undefined when `final` (the device's bytes) and `snaps` (each snapshot's bytes, by op
 * id) equal the outcome of one serial order of `ops` from a device filled with {@link INIT_ID};
 * else what is wrong.
 */
export function serialOrderProblem(ops: readonly ConcOp[], final: Buffer, snaps: ReadonlyMap<number, Buffer>): string | undefined {
  const sectors = final.length / SECTOR;
  const byId = new Map(ops.map((o) => [o.id, o]));
  const edges = new Map<number, Set<number>>(ops.map((o) => [o.id, new Set<number>()]));
  const edge = (a: number, b: number) => {
    if (a !== b) edges.get(a)!.add(b);
  };
  const covering: number[][] = Array.from({ length: sectors }, (_, s) => ops.filter((o) => covers(o, s)).map((o) => o.id));
  /** The op a sector's content names: an op covering it, INIT_ID for the start, or an error. */
  const shownBy = (buf: Buffer, s: number, where: string): number | string => {
    const v = sectorId(buf, s);
    if (v === -1) return `${where} sector ${s} is torn between ops`;
    const cands = covering[s]!.filter((id) => valueOf(byId.get(id)!) === v);
    if (v === INIT_ID && cands.length === 0) return INIT_ID;
    if (cands.length !== 1) return `${where} sector ${s} holds ${v}, which no single op covering it wrote (covering: ${covering[s]!.join(',') || 'none'})`;
    return cands[0]!;
  };
  // Final content: its op after all others covering the sector.
  for (let s = 0; s < sectors; s++) {
    const w = shownBy(final, s, 'final');
    if (typeof w === 'string') return w;
    if (w === INIT_ID) {
      if (covering[s]!.length) return `final sector ${s} still holds the start although ops ${covering[s]!.join(',')} covered it`;
      continue;
    }
    for (const o of covering[s]!) edge(o, w);
  }
  // Snapshots: what each shows came before it.
  const reach = (from: number, to: number): boolean => {
    const seenNodes = new Set<number>([from]);
    const stack = [from];
    while (stack.length) {
      const a = stack.pop()!;
      if (a === to) return true;
      for (const b of edges.get(a)!) if (!seenNodes.has(b)) (seenNodes.add(b), stack.push(b));
    }
    return false;
  };
  for (const [sid, buf] of snaps) {
    const seen = new Set<number>();
    const shown: number[] = [];
    for (let s = 0; s < sectors; s++) {
      const v = shownBy(buf, s, `snapshot ${sid}`);
      if (typeof v === 'string') return v;
      shown.push(v);
      if (v !== INIT_ID) {
        seen.add(v);
        edge(v, sid);
      }
    }
    // An op seen elsewhere came before the snapshot, so before what the snapshot shows here.
    const unseen = new Set<number>();
    for (let s = 0; s < sectors; s++) {
      const v = shown[s]!;
      for (const o of covering[s]!) {
        if (o === v) continue;
        if (!seen.has(o)) unseen.add(o);
        else if (v === INIT_ID) return `snapshot ${sid} shows op ${o} elsewhere but the start in sector ${s}, which ${o} covers`;
        else edge(o, v);
      }
    }
    // An op it does not show came after it, or before it and hidden everywhere by ops it shows.
    for (const o of unseen) {
      const op = byId.get(o)!;
      if (op.kind === 'snapshot') continue;
      const mustPrecedeSeen = [...seen].some((w) => reach(o, w));
      if (!mustPrecedeSeen) {
        edge(sid, o);
        continue;
      }
      for (let s = op.off / SECTOR; s < (op.off + op.len) / SECTOR; s++) {
        const v = shown[s]!;
        if (v === INIT_ID) return `snapshot ${sid} shows the start in sector ${s}, but op ${o} that covers it must come before ops it shows`;
        edge(o, v);
      }
      edge(o, sid);
    }
  }
  // A topological order (Kahn), then a serial replay of it.
  const indeg = new Map<number, number>(ops.map((o) => [o.id, 0]));
  for (const [, outs] of edges) for (const b of outs) indeg.set(b, indeg.get(b)! + 1);
  const ready = ops.filter((o) => indeg.get(o.id) === 0).map((o) => o.id);
  const order: number[] = [];
  while (ready.length) {
    const a = ready.shift()!;
    order.push(a);
    for (const b of edges.get(a)!) {
      indeg.set(b, indeg.get(b)! - 1);
      if (indeg.get(b) === 0) ready.push(b);
    }
  }
  if (order.length !== ops.length) return `no serial order: the ops ${ops.filter((o) => indeg.get(o.id)! > 0).map((o) => o.id).join(',')} form a cycle of must-come-before`;
  const state = new Array<number>(sectors).fill(INIT_ID);
  for (const id of order) {
    const op = byId.get(id)!;
    if (op.kind === 'snapshot') {
      const buf = snaps.get(id);
      if (!buf) continue;
      for (let s = 0; s < sectors; s++) if (sectorId(buf, s) !== state[s]) return `snapshot ${id} sector ${s} holds ${sectorId(buf, s)}, the serial order gives ${state[s]}`;
      continue;
    }
    for (let s = op.off / SECTOR; s < (op.off + op.len) / SECTOR; s++) state[s] = valueOf(op);
  }
  for (let s = 0; s < sectors; s++) if (sectorId(final, s) !== state[s]) return `final sector ${s} holds ${sectorId(final, s)}, the serial order gives ${state[s]}`;
  return undefined;
}
