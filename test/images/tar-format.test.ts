/**
 * The tar format layer over tar-stream: PAX records keep binary xattr values byte for byte in
 * both directions (tar-stream alone would decode them as UTF-8), malformed PAX records are
 * errors, PAX times convert to and from nanoseconds, and tars written by GNU tar (PAX with
 * xattrs and nanosecond mtimes, GNU long names and long link names, hard links) decode to the
 * right entries. GNU sparse files (old GNU and PAX forms) are refused with an error naming
 * the entry rather than unpacked wrong.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { link, lstat, mkdir, readFile, symlink, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { BadImageError } from '../../src/errors.js';
import { applyLayer } from '../../src/images/layer-apply.js';
import { type TarEntry, decodeEntry, decodePaxRecords, encodePaxRecords, feedTar, formatPaxTime, parsePaxTime, tarStream } from '../../src/images/tar-format.js';
import { lsetxattr } from '../../src/io/native.js';
import { run, testIf, which } from '../support/oracles.js';
import { buildTar } from '../support/tar-build.js';
import { tempDir } from '../support/tmp.js';

async function entries(tar: Buffer): Promise<TarEntry[]> {
  const extract = tarStream().extract();
  const feeding = feedTar(Readable.from([tar]), extract);
  const out: TarEntry[] = [];
  for await (const e of extract as AsyncIterable<Readable & { header: import('tar-stream').Header }>) {
    out.push(decodeEntry(e.header));
    for await (const _ of e);
  }
  await feeding;
  return out;
}

const BINARY = Buffer.from([0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0xff, 0xc3, 0x28, 0x0a, 0x3d]);

test('PAX records: binary xattr values survive both ways; lengths count bytes', () => {
  const enc = encodePaxRecords({ name: 'dïr/fîle', pax: { 'SCHILY.xattr.security.capability': BINARY, mtime: '1700000000.5' } });
  const dec = decodePaxRecords(enc);
  assert.is(dec.path, 'dïr/fîle');
  assert.is(dec.mtime, '1700000000.5');
  assert.ok(Buffer.isBuffer(dec['SCHILY.xattr.security.capability']));
  assert.ok((dec['SCHILY.xattr.security.capability'] as Buffer).equals(BINARY));
  for (const len of [7, 8, 9, 98, 99, 100, 101, 998, 999, 1000]) {
    const rec = encodePaxRecords({ pax: { k: 'v'.repeat(len) } });
    assert.is(Number(rec.toString('latin1').split(' ')[0]), rec.length, `record of a ${len}-byte value`);
  }
  assert.throws(() => decodePaxRecords(Buffer.from('99 path=x\n')), /malformed record/);
  assert.throws(() => decodePaxRecords(Buffer.from('9 pathxy\n')), /no '='/);
});

test('PAX times to and from nanoseconds', () => {
  assert.is(parsePaxTime('1700000000'), 1_700_000_000_000_000_000n);
  assert.is(parsePaxTime('1700000000.123456789123'), 1_700_000_000_123_456_789n);
  assert.is(parsePaxTime('1.5'), 1_500_000_000n);
  assert.is(parsePaxTime('-1.25'), -1_250_000_000n);
  assert.is(parsePaxTime('x'), undefined);
  assert.is(formatPaxTime(1_700_000_000_000_000_001n), '1700000000.000000001');
  assert.is(formatPaxTime(1_500_000_000n), '1.5');
  assert.is(formatPaxTime(-1_250_000_000n), '-1.25');
  assert.is(formatPaxTime(3_000_000_000n), '3');
});

test('our tars decode to what was written: binary xattrs, ns mtimes, big ids, long and non-ASCII names', async () => {
  const long = 'd/' + 'x'.repeat(150);
  const es = await entries(await buildTar([
    { name: 'f', content: 'x', xattrs: { 'security.capability': BINARY, 'user.t': 'text' }, mtimeNs: 1_700_000_000_000_000_007n },
    { name: long, content: 'y', uid: 3_000_000, gid: 4_000_000 },
    { name: 'ünï', type: 'symlink', linkname: 'l'.repeat(120) },
    { name: 'late', content: 'z', mtimeNs: 4_000_000_000_000_000_000n },
  ]));
  assert.equal(es.map((e) => e.name), ['f', long, 'ünï', 'late']);
  assert.ok(es[0]!.xattrs.get('security.capability')!.equals(BINARY));
  assert.is(es[0]!.xattrs.get('user.t')!.toString(), 'text');
  assert.is(es[0]!.mtimeNs, 1_700_000_000_000_000_007n);
  assert.equal([es[1]!.uid, es[1]!.gid], [3_000_000, 4_000_000]);
  assert.is(es[2]!.linkname, 'l'.repeat(120));
  assert.is(es[3]!.mtimeNs, 4_000_000_000_000_000_000n, 'after 2038');
});

const gnuTar = testIf(test, which('tar') !== null, 'needs GNU tar');

gnuTar('GNU tar archives decode: PAX xattrs and ns times, GNU long names and links, hard links', async () => {
  const d = tempDir();
  const src = join(d, 'src');
  const longDir = join(src, 'a'.repeat(80), 'b'.repeat(80));
  await mkdir(longDir, { recursive: true });
  await writeFile(join(longDir, 'file'), 'deep\n');
  await symlink('t'.repeat(150), join(src, 'longlink'));
  await writeFile(join(src, 'f'), 'f\n');
  await link(join(src, 'f'), join(src, 'hard'));
  await lsetxattr(join(src, 'f'), 'user.k', Buffer.from('v'));
  for (const format of ['pax', 'gnu']) {
    const tarFile = join(d, `${format}.tar`);
    const xattrs = format === 'pax' ? ['--xattrs', '--xattrs-include=user.*'] : [];
    const r = await run('tar', [`--format=${format}`, ...xattrs, '-C', src, '-cf', tarFile, '.']);
    assert.is(r.code, 0, r.stderr);
    const es = await entries(await readFile(tarFile));
    const by = new Map(es.map((e) => [e.name.replace(/^\.\//, ''), e]));
    assert.is(by.get(`${'a'.repeat(80)}/${'b'.repeat(80)}/file`)?.type, 'file', format);
    assert.is(by.get('longlink')?.linkname, 't'.repeat(150), format);
    const links = es.filter((e) => e.type === 'link').map((e) => `${e.name.replace(/^\.\//, '')} -> ${e.linkname.replace(/^\.\//, '')}`);
    assert.ok(links.length === 1 && ['hard -> f', 'f -> hard'].includes(links[0]!), `${format}: ${links}`);
    const f = [by.get('f')!, by.get('hard')!].find((e) => e.type === 'file')!;
    if (format === 'pax') {
      assert.is(f.xattrs.get('user.k')?.toString(), 'v');
      assert.is(f.mtimeNs, (await lstat(join(src, 'f'), { bigint: true })).mtimeNs, 'nanosecond mtime from PAX');
    } else {
      assert.is(f.mtimeNs % 1_000_000_000n, 0n, 'the gnu format has whole seconds');
    }
  }
});

gnuTar('GNU sparse files (old GNU and PAX forms) are refused, naming the entry', async () => {
  const d = tempDir();
  const src = join(d, 'src');
  await mkdir(src);
  await writeFile(join(src, 'sparse'), 'data');
  await truncate(join(src, 'sparse'), 64 * 1024 * 1024);
  for (const format of ['gnu', 'pax']) {
    const tarFile = join(d, `${format}.tar`);
    const r = await run('tar', [`--format=${format}`, '--sparse', '-C', src, '-cf', tarFile, 'sparse']);
    assert.is(r.code, 0, r.stderr);
    const root = join(d, `out-${format}`);
    await mkdir(root);
    const err = await applyLayer(root, Readable.from([await readFile(tarFile)])).then(() => null, (e: unknown) => e);
    assert.instance(err, BadImageError, format);
    assert.match((err as Error).message, /Cannot apply entry ".*sparse".*(not supported)/);
  }
});

test.run();
