/**
 * The project's containerd snapshots API definition (proto/) is containerd 1.6's: every message,
 * field (name, number, type, label), enum value and service method equals what proto-loader
 * reads from containerd's own .proto files in Debian's Go sources (gogoproto options stripped;
 * skipped when the sources are missing). The loader finds proto/ from dist/, decodes with the
 * documented options (camelCase, defaults, enum names, int64 as numbers), and `npm pack` ships
 * the proto directory.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import * as protoLoader from '@grpc/proto-loader';
import { findProtoDir, loadSnapshotsApi, PROTO_LOADER_OPTIONS, SNAPSHOTS_PROTO, SNAPSHOTS_SERVICE } from '../../../src/serve/snapshotter/snapshots-api.js';
import { NotFoundError } from '../../../src/errors.js';
import { run } from '../../support/oracles.js';
import { tempDir } from '../../support/tmp.js';
import { CONTAINERD_GO_SOURCES, REPO_ROOT } from '../../support/go-programs.js';

const UPSTREAM = {
  snapshots: join(CONTAINERD_GO_SOURCES, 'api/services/snapshots/v1/snapshots.proto'),
  mount: join(CONTAINERD_GO_SOURCES, 'api/types/mount.proto'),
};
const haveUpstream = existsSync(UPSTREAM.snapshots) && existsSync(UPSTREAM.mount);

/** containerd's .proto text without the gogoproto import and options (Go code generation only). */
function stripGogo(text: string): string {
  return text
    .replace(/^\s*import weak "gogoproto\/gogo\.proto";\s*$/m, '')
    .replace(/^\s*option \(gogoproto\.[^;]*;\s*$/gm, '')
    .replace(/\s*\[[^\]]*gogoproto[^\]]*\]/g, '');
}

/** A definition with options dropped, for structural comparison. */
function shape(def: protoLoader.PackageDefinition): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const clean = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(clean);
    if (v && typeof v === 'object') {
      const o: Record<string, unknown> = {};
      for (const [k, x] of Object.entries(v)) if (k !== 'options' && k !== 'fileDescriptorProtos' && k !== 'jsonName') o[k] = clean(x);
      return o;
    }
    return v;
  };
  for (const [name, d] of Object.entries(def)) {
    if (name.startsWith('google.')) continue;
    if ('format' in d) out[name] = clean(d.type);
    else {
      out[name] = Object.fromEntries(
        Object.entries(d).map(([m, md]) => [m, { path: md.path, requestStream: md.requestStream, responseStream: md.responseStream, request: (md.requestType.type as { name: string }).name, response: (md.responseType.type as { name: string }).name }]),
      );
    }
  }
  return out;
}

const upstreamTest = haveUpstream ? test : test.skip;
upstreamTest(`every message, field, enum value and method equals containerd 1.6's definition${haveUpstream ? '' : ' [skipped: containerd Go sources missing]'}`, () => {
  const dir = tempDir('thinpool-proto-');
  const snapshotsRel = 'github.com/containerd/containerd/api/services/snapshots/v1/snapshots.proto';
  const mountRel = 'github.com/containerd/containerd/api/types/mount.proto';
  for (const [rel, src] of [[snapshotsRel, UPSTREAM.snapshots], [mountRel, UPSTREAM.mount]] as const) {
    mkdirSync(dirname(join(dir, rel)), { recursive: true });
    writeFileSync(join(dir, rel), stripGogo(readFileSync(src, 'utf8')));
  }
  // keepCase: compare the .proto names themselves (created_at), not their camelCase forms.
  const theirs = shape(protoLoader.loadSync(snapshotsRel, { ...PROTO_LOADER_OPTIONS, keepCase: true, includeDirs: [dir] }));
  const ours = shape(protoLoader.loadSync(SNAPSHOTS_PROTO, { ...PROTO_LOADER_OPTIONS, keepCase: true, includeDirs: [findProtoDir()] }));
  assert.equal(Object.keys(ours).sort(), Object.keys(theirs).sort());
  for (const k of Object.keys(theirs)) assert.equal(ours[k], theirs[k], k);
  // The comparison is not vacuous: the fields are there.
  const info = ours['containerd.services.snapshots.v1.Info'] as { field: { name: string; number: number }[] };
  assert.equal(info.field.map((f) => `${f.name}=${f.number}`), ['name=1', 'parent=2', 'kind=3', 'created_at=4', 'updated_at=5', 'labels=6']);
});

test('the service has containerd 1.6 methods; List streams its answers', () => {
  const api = loadSnapshotsApi();
  assert.equal(Object.keys(api.service), ['Prepare', 'View', 'Mounts', 'Commit', 'Remove', 'Stat', 'Update', 'List', 'Usage', 'Cleanup']);
  assert.is(api.service.List!.path, `/${SNAPSHOTS_SERVICE}/List`);
  assert.ok(api.service.List!.responseStream);
  assert.not.ok(api.service.Prepare!.responseStream);
  assert.is(api.protoDir, join(REPO_ROOT, 'proto'));
});

test('messages decode with the documented options', () => {
  const s = loadSnapshotsApi().service;
  // A request without a parent or labels reads '' and {}.
  const prep = s.Prepare!.requestDeserialize(s.Prepare!.requestSerialize({ snapshotter: 'thinpool', key: 'k/1' })) as Record<string, unknown>;
  assert.equal(prep, { snapshotter: 'thinpool', key: 'k/1', parent: '', labels: {} });
  const upd = { snapshotter: 'x', info: { name: 'n', parent: 'p', kind: 'COMMITTED', createdAt: { seconds: -62135596800, nanos: 0 }, updatedAt: { seconds: 1700000000, nanos: 5 }, labels: { a: 'b' } }, updateMask: { paths: ['labels.a'] } };
  assert.equal(s.Update!.requestDeserialize(s.Update!.requestSerialize(upd)), upd);
  // int64 beyond 32 bits comes back as an exact number.
  const usage = s.Usage!.responseDeserialize(s.Usage!.responseSerialize({ size: 2 ** 40 + 3, inodes: 7 })) as { size: number; inodes: number };
  assert.equal(usage, { size: 2 ** 40 + 3, inodes: 7 });
});

test('the proto directory is found from dist/ and its absence is a NotFoundError', () => {
  assert.is(findProtoDir(), join(REPO_ROOT, 'proto'));
  assert.ok(existsSync(join(findProtoDir(), SNAPSHOTS_PROTO)));
  assert.throws(() => findProtoDir('/'), (e: unknown) => e instanceof NotFoundError && /Cannot load the containerd snapshots API/.test(e.message));
});

test('npm pack ships the proto files', async () => {
  const r = await run('npm', ['pack', '--dry-run', '--json', '--ignore-scripts', REPO_ROOT], { timeoutMs: 120_000 });
  assert.is(r.code, 0, r.stderr);
  const files = (JSON.parse(r.stdout) as { files: { path: string }[] }[])[0]!.files.map((f) => f.path);
  assert.ok(files.includes('proto/containerd/services/snapshots/v1/snapshots.proto'));
  assert.ok(files.includes('proto/containerd/types/mount.proto'));
});

test.run();
