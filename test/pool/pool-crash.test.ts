/**
 * A power cut at every point of a pool commit, on in-memory pool files that keep only synced
 * writes (or one unsynced write torn at a 512-byte boundary): for a device creation, a write
 * that maps a new block (a tag-only catalog entry), a write of both kinds followed by a removal,
 * a rename (a catalog-only commit), each with the catalog change as a log entry and as a
 * checkpoint. Reopened, the pool is the last committed state: the new one exactly when the cut
 * came after the superblock (or, for the rename, after its log entry), catalog and metadata
 * agree (in-sync), committed data reads back, and thin_check finds the metadata clean.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Pool } from '../../src/pool/pool.js';
import type { CommitPoint } from '../../src/pool/pool-lifecycle.js';
import { KiB, MiB } from '../../src/units.js';
import { FaultyFiles, PowerCut } from '../support/faulty-file.js';
import { Rng, testSeed } from '../support/rng.js';
import { tempDir } from '../support/tmp.js';
import { assertThinCheckClean, haveThinTools } from '../support/thin-oracle.js';

const seed = testSeed();
const POINTS: CommitPoint[] = ['data-synced', 'metadata-written', 'catalog-written', 'superblock-written'];
type Op = 'create' | 'write' | 'remove' | 'rename';

function imagesOf(dir: string): Map<string, Uint8Array> {
  return new Map(readdirSync(dir).filter((n) => n !== 'lock').map((n) => [n, readFileSync(join(dir, n))] as const));
}

/** What the reopened pool must show after `op` was cut at `point`: the new state or the old. */
function expectNew(op: Op, point: CommitPoint): boolean {
  if (op === 'rename') return point === 'catalog-written';
  return point === 'superblock-written';
}

/** Points an operation's commit reaches (a rename writes no metadata and no data). */
function reaches(op: Op, point: CommitPoint): boolean {
  if (op === 'rename') return point === 'catalog-written';
  if (op === 'create') return point !== 'data-synced';
  return true;
}

test(`a power cut at every commit point leaves the last committed state (seed ${seed})`, async () => {
  const rng = new Rng(seed);
  const dir = tempDir();
  let cases = 0;
  for (const checkpoint of [false, true]) {
    for (const op of ['create', 'write', 'remove', 'rename'] as const) {
      for (const point of POINTS) {
        if (!reaches(op, point)) continue;
        for (const tear of [false, true]) {
          const pdir = join(dir, `${op}-${point}-${checkpoint}-${tear}`);
          // A committed starting state: device 'keep' with 'kept' in its first block.
          const setup = await Pool.create({ dir: pdir, dataSize: 8 * MiB });
          await setup.createDevice('keep', MiB);
          await setup.volume('keep').write(0, Buffer.from('kept'));
          await setup.close();
          let files = new FaultyFiles(imagesOf(pdir));
          let armed = false;
          let fired = false;
          const pool = await Pool.open(pdir, {
            files,
            commitHook: (pt) => {
              if (armed && pt === point) {
                fired = true;
                files.power.cut();
              }
            },
          });
          if (checkpoint) pool.catalog.requestCheckpoint();
          armed = true;
          let err: unknown;
          try {
            if (op === 'create') await pool.createDevice('new', MiB);
            if (op === 'write') {
              await pool.volume('keep').write(5 * 64 * KiB, Buffer.from('fresh'));
              await pool.volume('keep').write(0, Buffer.from('KEPT'));
              await pool.volume('keep').flush();
            }
            if (op === 'remove') {
              await pool.volume('keep').write(3 * 64 * KiB, Buffer.from('more'));
              await pool.remove('keep');
            }
            if (op === 'rename') await pool.rename('keep', 'renamed');
          } catch (e) {
            err = e;
          }
          await pool.close().catch(() => undefined);
          const where = `${op} cut at ${point}${checkpoint ? ' (checkpoint)' : ''}${tear ? ', torn' : ''}`;
          assert.ok(fired, `${where}: the point was reached`);
          // The cut fails the commit (the pool reports it as its own I/O error, the cut as its
          // cause), unless nothing was left to write after the point.
          const cut = err instanceof PowerCut || (err as { cause?: unknown } | undefined)?.cause instanceof PowerCut;
          assert.ok(cut || (err === undefined && expectNew(op, point)), `${where}: ${String(err)}`);
          files = files.crashed(rng, tear);
          const crashImage = files.get('metadata').image();
          const again = await Pool.open(pdir, { files });
          try {
            const s = await again.status();
            assert.is(s.catalog, 'in-sync', where);
            const names = (await again.devices()).map((d) => d.name).sort();
            const fresh = expectNew(op, point);
            assert.equal(again.md.deviceIds(), again.deviceIds(), `${where}: the catalog and the metadata hold the same devices`);
            if (op === 'create') assert.equal(names, fresh ? ['keep', 'new'] : ['keep'], where);
            if (op === 'remove') assert.equal(names, fresh ? [] : ['keep'], where);
            if (op === 'rename') assert.equal(names, fresh ? ['renamed'] : ['keep'], where);
            if (op === 'write') {
              assert.equal(names, ['keep'], where);
              const v = again.volume('keep');
              assert.is((await v.read(5 * 64 * KiB, 5)).toString(), fresh ? 'fresh' : '\0\0\0\0\0', `${where}: the new block`);
              // The in-place write went to a provisioned block: its bytes may or may not have reached the disk.
              assert.ok(['kept', 'KEPT'].includes((await v.read(0, 4)).toString()), where);
            } else if (names.includes('keep') || names.includes('renamed')) {
              assert.is((await again.volume(names[0]!).read(0, 4)).toString(), 'kept', where);
            }
            // The pool keeps working after the cut.
            await again.createDevice('after', MiB);
            await again.volume('after').write(0, Buffer.from('after'));
            await again.commit();
          } finally {
            await again.close();
          }
          if (haveThinTools() && tear) {
            // What the cut left, and what the reopened pool wrote over it.
            const p = join(pdir, 'metadata-image');
            writeFileSync(p, crashImage);
            await assertThinCheckClean(p);
            if (!checkpoint) {
              writeFileSync(p, files.get('metadata').image());
              await assertThinCheckClean(p);
            }
          }
          cases++;
        }
      }
    }
  }
  assert.ok(cases >= 40, `${cases} cases`);
});

test.run();
