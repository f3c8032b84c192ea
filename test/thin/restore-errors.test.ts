/**
 * restoreXml on bad input: malformed or inconsistent XML fails naming the line and leaves no
 * valid superblock; metadata too small is a NoSpaceError naming the line; an empty output file
 * without a size is a usage error; multi-byte characters split across chunks decode; a block
 * mapped twice counts once. Split from restore.test.ts.
 */
import { writeFileSync } from 'node:fs';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { NoSpaceError, UsageError } from '../../src/errors.js';
import { FileBlockFile } from '../../src/io/block-file.js';
import { ThinMetadata } from '../../src/thin/metadata.js';
import { haveTools, run, tool09 } from '../support/oracles.js';
import { assertChecks, blockZeroIsZero, chunks, newPath, ourDump, restoreTo, strip } from '../support/restore-harness.js';
import { readFixture } from '../support/vectors.js';

const have09 = haveTools('thin_restore', 'thin_dump', 'thin_check');

// ---- failures ----------------------------------------------------------------------------------

const SB = '<superblock uuid="" time="1" transaction="1" flags="0" version="2" data_block_size="128" nr_data_blocks="100">';
const DEV = (id = 1) => `<device dev_id="${id}" mapped_blocks="0" transaction="0" creation_time="0" snap_time="0">`;
const bad: Array<[string, string[], RegExp]> = [
  ['a data block past nr_data_blocks', [SB, DEV(), '<single_mapping origin_block="0" data_block="100" time="0"/>', '</device>', '</superblock>'], /line 3: data block 100 past the end/],
  ['a range running past nr_data_blocks', [SB, DEV(), '<range_mapping origin_begin="0" data_begin="95" length="6" time="0"/>', '</device>', '</superblock>'], /line 3: data blocks 95\.\.100 past/],
  ['a duplicate device', [SB, DEV(), '</device>', DEV(), '</device>', '</superblock>'], /line 4: device 1 appears twice \(first at line 2\)/],
  ['a data block size of 64 sectors', ['<superblock uuid="" time="1" transaction="1" data_block_size="64" nr_data_blocks="100">', '</superblock>'], /line 1: data_block_size 64/],
  ['an unknown element', [SB, DEV(), '<foo/>', '</device>', '</superblock>'], /line 3: unknown element <foo>/],
  ['an unknown attribute', [SB, DEV(), '<single_mapping origin_block="0" data_block="1" time="0" x="1"/>', '</device>', '</superblock>'], /line 3: unknown attribute 'x'/],
  ['a hex number', [SB, DEV(), '<single_mapping origin_block="0x1" data_block="1" time="0"/>', '</device>', '</superblock>'], /line 3: origin_block="0x1" is not a decimal number/],
  ['a negative number', [SB, DEV(), '<single_mapping origin_block="-1" data_block="1" time="0"/>', '</device>', '</superblock>'], /line 3: origin_block="-1"/],
  ['a number past 2^64', [SB, DEV(), '<single_mapping origin_block="18446744073709551616" data_block="1" time="0"/>', '</device>', '</superblock>'], /line 3: .*2\^64/],
  ['a mapping time past 24 bits', [SB, DEV(), '<single_mapping origin_block="0" data_block="1" time="16777216"/>', '</device>', '</superblock>'], /line 3: time="16777216" does not fit the 24 bits/],
  ['a missing attribute', [SB, DEV(), '<single_mapping origin_block="0" time="0"/>', '</device>', '</superblock>'], /line 3: <single_mapping> has no 'data_block'/],
  ['a mapping outside a device', [SB, '<single_mapping origin_block="0" data_block="1" time="0"/>', '</superblock>'], /line 2: a mapping outside/],
  ['a <ref> to an unknown <def>', [SB, DEV(), '<ref name="x"/>', '</device>', '</superblock>'], /line 3: <ref name="x"> names no <def>/],
  ['a device id above 2^24-1', [SB, DEV(16777216), '</device>', '</superblock>'], /line 2: dev_id 16777216/],
  ['text in a device', [SB, DEV(), 'hello', '</device>', '</superblock>'], /line 3: unexpected text/],
  ['a truncated document', [SB, DEV(), '<single_mapping origin_block="0" data_block="1" time="0"/>'], /line \d+: .*(ended|malformed)/],
  ['mismatched tags', [SB, DEV(), '</superblock>'], /line 3: malformed XML/],
  ['no superblock', [DEV(), '</device>'], /line 1: the document must start with <superblock>, not <device>/],
  ['an empty document', [''], /line \d+: (no <superblock>|malformed XML: document must contain a root element)/],
  ['a second superblock', [SB, SB, '</superblock>', '</superblock>'], /line 2: a second <superblock>/],
];
for (const [name, lines, msg] of bad) {
  test(`fails on ${name}, naming the line, and leaves no valid superblock`, async () => {
    const path = newPath('bad.bin');
    // a valid pool first, so the failure must really invalidate it
    await restoreTo(chunks(readFixture('02-one-thin.xml')), { nrMetadataBlocks: 64 }, path);
    try {
      await restoreTo(chunks(lines.join('\n') + '\n', 5), { nrMetadataBlocks: 64 }, path);
      assert.unreachable('restore succeeded');
    } catch (err) {
      if ((err as Error).name === 'Assertion') throw err;
      assert.instance(err, UsageError, String(err));
      assert.match((err as Error).message, msg);
      assert.match((err as Error).message, /^Cannot restore metadata: line \d+: /);
      assert.type((err as UsageError).data.line, 'number');
    }
    assert.ok(await blockZeroIsZero(path), 'block 0 zeroed');
    const f = await FileBlockFile.open(path, { readOnly: true });
    try {
      await ThinMetadata.open(f, { readOnly: true });
      assert.unreachable('opened');
    } catch (err) {
      if ((err as Error).name === 'Assertion') throw err;
    } finally {
      await f.close();
    }
    if (have09) assert.is.not((await run(tool09('thin_check')!, [path])).code, 0);
  });
}

test('metadata too small: NoSpaceError naming the line, superblock zeroed', async () => {
  const path = newPath('small.bin');
  let xml = SB.replace('nr_data_blocks="100"', 'nr_data_blocks="200000"') + '\n' + DEV() + '\n';
  for (let i = 0; i < 100_000; i++) xml += `<single_mapping origin_block="${i * 2}" data_block="${i}" time="0"/>\n`;
  xml += '</device>\n</superblock>\n';
  try {
    await restoreTo(chunks(xml, 65536), { nrMetadataBlocks: 32 }, path);
    assert.unreachable('fitted');
  } catch (err) {
    if ((err as Error).name === 'Assertion') throw err;
    assert.instance(err, NoSpaceError);
    assert.match((err as Error).message, /line \d+: the metadata device \(32 blocks\) is full/);
  }
  assert.ok(await blockZeroIsZero(path));
});

test('an empty output file without nrMetadataBlocks is a usage error', async () => {
  const path = newPath('empty.bin');
  writeFileSync(path, '');
  try {
    await restoreTo(chunks(readFixture('01-empty.xml')), {}, path);
    assert.unreachable('restored');
  } catch (err) {
    if ((err as Error).name === 'Assertion') throw err;
    assert.instance(err, UsageError);
    assert.match((err as Error).message, /line 1: the metadata would have 0 blocks/);
  }
});

test('bytes split inside a multi-byte character decode correctly', async () => {
  const xml = readFixture('02-one-thin.xml').toString().replace('<device', '<!-- é€😀 --><device');
  const { path } = await restoreTo(chunks(xml, 1));
  assert.fixture(strip(await ourDump(path)), strip(readFixture('02-one-thin.thin_dump.xml').toString()));
});

test('a block mapped twice counts once: the summary reports the mappings stored and the replaced element', async () => {
  // Regression: the summary counted mapping elements, so a duplicate origin block reported two
  // mappings while one was stored.
  const xml = readFixture('02-one-thin.xml').toString();
  const dup = xml.replace(/(<single_mapping origin_block="(\d+)"[^>]*>)/, '$1<single_mapping origin_block="$2" data_block="30" time="0"/>');
  assert.ok(dup !== xml, 'a duplicate was added');
  const { path, summary } = await restoreTo(chunks(dup));
  const dump = await ourDump(path);
  const stored = [...dump.matchAll(/<single_mapping/g)].length + [...dump.matchAll(/<range_mapping[^>]*length="(\d+)"/g)].reduce((n, m) => n + Number(m[1]), 0);
  assert.is(stored, 7, 'vector 02 maps 7 blocks; the duplicate replaced one');
  assert.is(summary.mappings, stored, 'the stored mappings');
  assert.is(summary.replaced, 1);
  assert.match(dump, /data_block="30"/, 'the later element wins');
  await assertChecks(path);
});


test.run();
