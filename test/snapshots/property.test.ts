/**
 * Random Prepare/View/Commit/Remove/Update sequences (keys with `/`, `:` and spaces, labels)
 * against an in-memory model of containerd's semantics (storage/bolt.go): every call succeeds
 * or fails with the same error class as the model, the listing matches the model after every
 * call, the pool is closed and reopened now and then, and the devices carry the data: each active
 * snapshot writes a marker into its own slot, and every snapshot reads exactly the markers its
 * chain wrote before it was made (copy-on-write through the model). After each sequence the
 * records and the devices agree one to one and the checker finds the metadata clean.
 *
 * THINPOOL_SNAPSHOT_RUNS sets the number of sequences (default 4), THINPOOL_SNAPSHOT_OPS their
 * length (default 120); THINPOOL_SEED replays one.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { ExistsError, NotFoundError, PreconditionError, UsageError } from '../../src/errors.js';
import { BASE_DEVICE } from '../../src/snapshots/base-device.js';
import { SnapshotStore } from '../../src/snapshots/snapshot-store.js';
import { checkMetadata } from '../../src/thin/check.js';
import { Pool } from '../../src/pool/pool.js';
import { MiB } from '../../src/units.js';
import { testIf, which } from '../support/oracles.js';
import { Rng, testSeed } from '../support/rng.js';
import { tempDir } from '../support/tmp.js';

const RUNS = Number(process.env.THINPOOL_SNAPSHOT_RUNS || 4);
const OPS = Number(process.env.THINPOOL_SNAPSHOT_OPS || 120);
const BASE = 64 * MiB;
/** Markers live past the base file system's metadata, one 4 KiB slot per active snapshot. */
const SLOT0 = 32 * MiB;
const SLOT = 4096;
const SLOTS = 64;

type Kind = 'active' | 'view' | 'committed';
interface ModelSnap {
  kind: Kind;
  parent: string;
  labels: Record<string, string>;
  /** slot -> marker this snapshot's device must read there. */
  data: Map<number, string>;
}
type ErrClass = 'NotFound' | 'AlreadyExists' | 'FailedPrecondition' | 'InvalidArgument';

class ModelError extends Error {
  constructor(readonly cls: ErrClass) {
    super(cls);
  }
}

/** containerd's semantics, as bolt.go implements them. */
class Model {
  snaps = new Map<string, ModelSnap>();

  private children(key: string): number {
    let n = 0;
    for (const s of this.snaps.values()) if (s.parent === key) n++;
    return n;
  }

  create(kind: 'active' | 'view', key: string, parent: string, labels: Record<string, string>): void {
    if (key === '') throw new ModelError('InvalidArgument');
    if (parent) {
      const p = this.snaps.get(parent);
      if (!p) throw new ModelError('NotFound');
      if (p.kind !== 'committed') throw new ModelError('InvalidArgument');
    }
    if (this.snaps.has(key)) throw new ModelError('AlreadyExists');
    const data = parent ? new Map(this.snaps.get(parent)!.data) : new Map<number, string>();
    this.snaps.set(key, { kind, parent, labels: clean(labels), data });
  }

  commit(name: string, key: string, labels: Record<string, string>): void {
    if (this.snaps.has(name)) throw new ModelError('AlreadyExists');
    const s = this.snaps.get(key);
    if (!s) throw new ModelError('NotFound');
    if (s.kind !== 'active') throw new ModelError('FailedPrecondition');
    this.snaps.delete(key);
    this.snaps.set(name, { ...s, kind: 'committed', labels: clean(labels) });
    for (const c of this.snaps.values()) if (c.parent === key) c.parent = name;
  }

  remove(key: string): void {
    if (!this.snaps.has(key)) throw new ModelError('NotFound');
    if (this.children(key)) throw new ModelError('FailedPrecondition');
    this.snaps.delete(key);
  }

  update(key: string, labels: Record<string, string>, paths: string[]): void {
    const s = this.snaps.get(key);
    if (!s) throw new ModelError('NotFound');
    let next = { ...s.labels };
    if (!paths.length) next = { ...labels };
    for (const p of paths) {
      if (p === 'labels') next = { ...labels };
      else if (p.startsWith('labels.')) {
        const k = p.slice(7);
        if (labels[k] !== undefined) next[k] = labels[k]!;
        else delete next[k];
      } else throw new ModelError('InvalidArgument');
    }
    s.labels = clean(next);
  }
}

function clean(l: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(l).filter(([, v]) => v !== ''));
}

function classOf(err: unknown): ErrClass | string {
  if (err instanceof NotFoundError) return 'NotFound';
  if (err instanceof ExistsError) return 'AlreadyExists';
  if (err instanceof PreconditionError) return 'FailedPrecondition';
  if (err instanceof UsageError) return 'InvalidArgument';
  return `unexpected ${(err as Error)?.name}: ${(err as Error)?.message}`;
}

const KEY_PARTS = ['default/1/', 'k8s.io/22/', 'extract-1 sha256:', 'sha256:', 'a', 'b', 'c/d', 'e:f', ' x'];

async function runSequence(seed: number): Promise<void> {
  const rng = new Rng(seed);
  const dir = tempDir('thinpool-snapprop-');
  let pool = await Pool.create({ dir, dataSize: 1024 * MiB });
  let store = new SnapshotStore(pool, { baseSize: BASE });
  const model = new Model();
  let nextSlot = 0;
  const log: string[] = [];
  const outcomes: Record<string, number> = {};
  let fresh = 0;
  const newKey = () => rng.pick(KEY_PARTS) + rng.pick(KEY_PARTS) + fresh++;
  /** An existing key mostly, else a new one (NotFound). */
  const keyOf = () => (model.snaps.size && rng.chance(0.85) ? rng.pick([...model.snaps.keys()]) : newKey());
  const labelsOf = (): Record<string, string> => {
    const out: Record<string, string> = {};
    for (let i = rng.int(3); i > 0; i--) out[rng.pick(['l', 'containerd.io/gc.root', 'x.y', 'z'])] = rng.chance(0.15) ? '' : rng.pick(['1', '2', 'v:w/x']);
    return out;
  };
  const committed = () => [...model.snaps].filter(([, s]) => s.kind === 'committed').map(([k]) => k);
  try {
    for (let step = 0; step < OPS; step++) {
      // Few snapshots: mostly make some (and commit them) before the rest can do anything.
      const r = model.snaps.size < 4 ? rng.float() * 0.5 : rng.float();
      let desc: string;
      let act: () => Promise<unknown>;
      let mod: () => void;
      if (r < 0.3) {
        const kind = rng.chance(0.75) ? 'active' : 'view';
        const key = rng.chance(0.03) ? '' : rng.chance(0.9) ? newKey() : keyOf();
        const parent = rng.chance(0.2) ? '' : rng.chance(0.85) && committed().length ? rng.pick(committed()) : keyOf();
        const labels = labelsOf();
        desc = `${kind} ${JSON.stringify(key)} on ${JSON.stringify(parent)}`;
        act = () => store.create(kind, key, parent, labels);
        mod = () => model.create(kind, key, parent, labels);
      } else if (r < 0.5) {
        const actives = [...model.snaps].filter(([, s]) => s.kind === 'active').map(([k]) => k);
        const key = actives.length && rng.chance(0.85) ? rng.pick(actives) : keyOf();
        const name = rng.chance(0.1) ? keyOf() : newKey();
        const labels = labelsOf();
        desc = `commit ${JSON.stringify(key)} as ${JSON.stringify(name)}`;
        act = () => store.commit(name, key, labels);
        mod = () => model.commit(name, key, labels);
      } else if (r < 0.7) {
        const key = keyOf();
        desc = `remove ${JSON.stringify(key)}`;
        act = () => store.remove(key);
        mod = () => model.remove(key);
      } else if (r < 0.8) {
        const key = keyOf();
        const labels = labelsOf();
        const paths = rng.chance(0.3) ? [] : Array.from({ length: rng.range(1, 3) }, () => rng.pick(['labels', 'labels.l', 'labels.z', 'labels.x.y', 'parent', 'kind']));
        desc = `update ${JSON.stringify(key)} ${JSON.stringify(labels)} ${paths.join(',')}`;
        act = () => store.update({ name: key, labels }, paths);
        mod = () => model.update(key, labels, paths);
      } else if (r < 0.95) {
        // An active snapshot writes a marker into a fresh slot of its device.
        const actives = [...model.snaps].filter(([, s]) => s.kind === 'active').map(([k]) => k);
        if (!actives.length || nextSlot >= SLOTS) continue;
        const key = rng.pick(actives);
        const slot = nextSlot++;
        const marker = `${seed}:${step}:${key}`;
        desc = `write ${JSON.stringify(marker)} into ${JSON.stringify(key)} slot ${slot}`;
        act = () => pool.volume(store.record(key).name!).write(SLOT0 + slot * SLOT, Buffer.from(marker.padEnd(SLOT, '\0')));
        mod = () => model.snaps.get(key)!.data.set(slot, marker);
      } else {
        desc = 'close and reopen the pool';
        act = async () => {
          await pool.close();
          pool = await Pool.open(dir);
          store = new SnapshotStore(pool, { baseSize: BASE });
        };
        mod = () => undefined;
      }
      log.push(desc);
      let want: string = 'ok';
      try {
        mod();
      } catch (e) {
        want = (e as ModelError).cls;
      }
      let got = 'ok';
      try {
        await act();
      } catch (e) {
        got = classOf(e);
      }
      assert.is(got, want, `step ${step}: ${desc}`);
      outcomes[want === "ok" ? desc.split(" ")[0]! : want] = (outcomes[want === "ok" ? desc.split(" ")[0]! : want] ?? 0) + 1;
      const listed = store.list().map((i) => [i.name, i.kind, i.parent, i.labels]);
      const expected = [...model.snaps.keys()].sort().map((k) => {
        const s = model.snaps.get(k)!;
        return [k, s.kind, s.parent, s.labels];
      });
      assert.equal(listed, expected, `listing after step ${step}: ${desc}`);
    }
    console.log(`seed ${seed}: ${JSON.stringify(outcomes)}`);
    // Every snapshot's device reads exactly its chain's markers.
    for (const [key, s] of model.snaps) {
      const vol = pool.volume(store.record(key).name!);
      for (let slot = 0; slot < nextSlot; slot++) {
        const b = await vol.read(SLOT0 + slot * SLOT, SLOT);
        const text = b.toString().replace(/\0+$/, '');
        assert.is(text, s.data.get(slot) ?? '', `${key} slot ${slot}`);
      }
    }
    // Records and devices agree one to one; parents point at their parent's device.
    const devs = pool.catalog.devices;
    assert.equal(pool.md.deviceIds(), devs.map((d) => d.id).sort((a, b) => a - b));
    assert.is(devs.filter((d) => d.snapshot).length, model.snaps.size);
    assert.ok(devs.every((d) => d.snapshot || d.name === BASE_DEVICE), 'no device without a record');
    for (const d of devs) {
      if (!d.snapshot) continue;
      const origin = d.snapshot.parent ? store.record(d.snapshot.parent).id : pool.record(BASE_DEVICE).id;
      assert.is(d.origin, origin, `${d.snapshot.key} is a snapshot of its parent's device`);
    }
    await pool.commit();
    const report = await checkMetadata(pool.metadataFile);
    assert.ok(report.ok, JSON.stringify(report.issues?.slice(0, 5)));
  } catch (err) {
    console.log(`seed ${seed} failed after:\n  ${log.slice(-15).join('\n  ')}`);
    throw err;
  } finally {
    await pool.close();
  }
}

const it = testIf(test, which('mkfs.ext4') !== null && which('debugfs') !== null, 'mkfs.ext4/debugfs missing (e2fsprogs)');
const seed = testSeed();
for (let i = 0; i < RUNS; i++) {
  it(`random snapshot sequence ${i + 1}/${RUNS} agrees with containerd's model (seed ${seed + i})`, () => runSequence((seed + i) >>> 0));
}

test.run();
