/**
 * Every vector opens, and its devices, details and mappings equal the
 * real thin_dump of it (stored outputs for 01-11, the installed thin_dump for kernel/).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { dumpFile } from '../../src/thin/dump.js';
import { fixtureCopy, kernelVectors, readFixture, topVectors } from '../support/vectors.js';
import { haveTools, run, testIf } from '../support/oracles.js';

function ourDump(path: string, metadataSnap = false): Promise<string> {
  return dumpFile(path, { metadataSnap });
}

/** thin_dump 0.9 prints uuid="" always; nothing else is normalised. */
const normalise = (xml: string) => xml.replace(/\nexit=\d+\s*$/, '').trim();

for (const v of topVectors()) {
  test(`vector ${v}: our dump equals thin_dump`, async () => {
    const path = fixtureCopy(`${v}.bin`);
    const want = readFixture(`${v}.thin_dump.xml`).toString();
    assert.fixture(normalise(await ourDump(path)), normalise(want));
  });
}

test('vector 08: the held metadata snapshot dumps like thin_dump -m', async () => {
  const path = fixtureCopy('08-metadata-snap.bin');
  const want = readFixture('08-metadata-snap.thin_dump-m.xml').toString();
  assert.fixture(normalise(await ourDump(path, true)), normalise(want));
});

const oracle = testIf(test, haveTools('thin_dump'), 'thin_dump (thin-provisioning-tools) missing');
for (const v of kernelVectors()) {
  oracle(`kernel vector ${v}: our dump equals thin_dump`, async () => {
    const path = fixtureCopy(v);
    const real = await run('thin_dump', [path]);
    assert.is(real.code, 0, real.stderr);
    assert.fixture(normalise(await ourDump(path)), normalise(real.stdout));
  });
}

test.run();
