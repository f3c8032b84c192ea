/**
 * NBD over TLS (NBD_OPT_STARTTLS): a server with credentials refuses every option but STARTTLS
 * and ABORT before the upgrade (ERR_TLS_REQD; EXPORT_NAME closes), forgets what was negotiated
 * before it, refuses a second STARTTLS, drops a client that sends before the STARTTLS reply and
 * one with a wrong key; a server without credentials answers ERR_UNSUP. Real clients over TLS:
 * nbdinfo and nbdcopy (libnbd, GnuTLS) and qemu-img/qemu-io (tls-creds-x509, tls-creds-psk), with
 * certificates and PSK files made by the test; a wrong CA, a wrong key, a missing client
 * certificate and a plain client all fail. The psktool key file parser.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { randomFillSync } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { connect as tcpConnect, type Socket } from 'node:net';
import { join } from 'node:path';
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import { UsageError } from '../../src/errors.js';
import { MemoryExport } from '../../src/nbd/memory-export.js';
import { Opt, Rep } from '../../src/nbd/protocol.js';
import { NbdServer } from '../../src/nbd/server.js';
import { StaticExportProvider } from '../../src/nbd/static-export-provider.js';
import { NbdTls, parsePskFile, readTlsCredentials, type NbdTlsCredentials } from '../../src/nbd/tls.js';
import { ConnectionClosed, NbdClient, dialUnix } from '../support/nbd-client.js';
import { waitFor } from '../support/nbd-harness.js';
import { haveTools, run, testIf } from '../support/oracles.js';
import { makeTlsFiles, type TestTlsFiles } from '../support/tls-credentials.js';
import { tempDir } from '../support/tmp.js';

const MiB = 1024 * 1024;
const haveOpenssl = haveTools('openssl');
const tlsTest = testIf(test, haveOpenssl, 'openssl not installed');
const libnbdTest = testIf(test, haveOpenssl && haveTools('nbdinfo', 'nbdcopy'), 'openssl, nbdinfo or nbdcopy not installed');
const qemuTest = testIf(test, haveOpenssl && haveTools('qemu-img', 'qemu-io'), 'openssl or qemu-utils not installed');

let files: TestTlsFiles | undefined;
async function tlsFiles(): Promise<TestTlsFiles> {
  files ??= await makeTlsFiles();
  return files;
}

interface TlsServer {
  server: NbdServer;
  port: number;
  sock: string;
  disk: MemoryExport;
  logs: string[];
  close(): Promise<void>;
}

async function startTlsServer(creds: NbdTlsCredentials | undefined, size = 16 * MiB): Promise<TlsServer> {
  const disk = new MemoryExport({ name: 'disk', size });
  const logs: string[] = [];
  const server = new NbdServer({
    provider: new StaticExportProvider([disk], { defaultExport: 'disk' }),
    log: (m) => logs.push(m),
    handshakeTimeoutMs: 10_000,
    ...(creds ? { tls: new NbdTls(creds) } : {}),
  });
  const port = await server.listenTcp('127.0.0.1', 0);
  const sock = join(tempDir('thinpool-tls-sock-'), 'nbd.sock');
  await server.listenUnix(sock);
  return { server, port, sock, disk, logs, close: () => server.close() };
}

async function x509(withCa = false): Promise<NbdTlsCredentials> {
  const f = await tlsFiles();
  return { kind: 'x509', cert: readFileSync(f.serverCert), key: readFileSync(f.serverKey), ...(withCa ? { ca: readFileSync(f.caCert) } : {}) };
}

async function psk(): Promise<NbdTlsCredentials> {
  const f = await tlsFiles();
  return { kind: 'psk', keys: parsePskFile(readFileSync(f.pskFile, 'utf8'), f.pskFile) };
}

function dialTcp(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = tcpConnect({ host: '127.0.0.1', port, allowHalfOpen: true }, () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
}

/** Greeting and client flags over TCP, then NBD_OPT_STARTTLS and a TLS client with `opts`. */
async function startTls(port: number, opts: ConnectionOptions): Promise<{ plain: NbdClient; secure: TLSSocket }> {
  const raw = await dialTcp(port);
  const plain = await NbdClient.open(raw);
  plain.sendClientFlags(3);
  const ack = await plain.option(Opt.STARTTLS);
  assert.is(ack[ack.length - 1]!.type, Rep.ACK, 'STARTTLS acknowledged');
  const secure = await new Promise<TLSSocket>((resolve, reject) => {
    const s = tlsConnect({ socket: raw, ...opts }, () => resolve(s));
    s.once('error', reject);
  });
  return { plain, secure };
}

/** The bytes of `exp` in a range, holes as zeros. */
async function contents(exp: MemoryExport, offset: number, length: number): Promise<Buffer> {
  const out = Buffer.alloc(length);
  for (const seg of await exp.read(offset, length)) if (seg.data) out.set(seg.data, seg.offset - offset);
  return out;
}

const lastType = (r: { type: number }[]) => r[r.length - 1]!.type;

tlsTest('psktool key files: parsed, and malformed ones refused naming the line', () => {
  const keys = parsePskFile('# comment\n\nalice:00ff10\r\nbob:ABCDEF01\n', 'k.psk');
  assert.equal([...keys.keys()], ['alice', 'bob']);
  assert.equal(keys.get('alice'), Buffer.from([0, 0xff, 0x10]));
  for (const [text, line] of [['alice:0g', 1], ['alice\n', 1], [':00', 1], ['a:00\nb:123\n', 2], ['a:00\na:11\n', 2], ['a b:00', 1]] as const) {
    try {
      parsePskFile(text, 'k.psk');
      assert.unreachable(`accepted ${JSON.stringify(text)}`);
    } catch (err) {
      assert.instance(err, UsageError, String(err));
      assert.match((err as Error).message, `line ${line}`);
    }
  }
  assert.throws(() => parsePskFile('# nothing\n', 'k.psk'), /holds no username:hexkey/);
  assert.throws(() => readTlsCredentials({ cert: '/x' }), /go together/);
  assert.throws(() => readTlsCredentials({ psk: '/x', cert: '/y', key: '/z' }), /goes alone/);
  assert.throws(() => readTlsCredentials({ ca: '/x' }), /--tls-ca without/);
  assert.throws(() => readTlsCredentials({ psk: join(tempDir(), 'absent.psk') }), /Cannot read TLS PSK file .*ENOENT/);
  assert.is(readTlsCredentials({}), undefined);
  assert.throws(() => new NbdTls({ kind: 'x509', cert: 'not a pem', key: 'not a pem' }), (e: unknown) => e instanceof UsageError);
});

tlsTest('TLS required: only STARTTLS and ABORT before it; EXPORT_NAME closes; the unix socket stays plain', async () => {
  const s = await startTlsServer(await x509());
  try {
    const c = await NbdClient.open(await dialTcp(s.port));
    c.sendClientFlags(3);
    for (const opt of [Opt.STRUCTURED_REPLY, Opt.LIST, Opt.INFO, Opt.GO, Opt.SET_META_CONTEXT, Opt.LIST_META_CONTEXT, 4, 11, 99]) {
      const r = await c.option(opt, opt === Opt.LIST || opt === Opt.STRUCTURED_REPLY ? Buffer.alloc(0) : Buffer.from([0, 0, 0, 4, 100, 105, 115, 107, 0, 0]));
      assert.is(lastType(r), Rep.ERR_TLS_REQD, `option ${opt} before STARTTLS`);
    }
    const abort = await c.option(Opt.ABORT);
    assert.is(lastType(abort), Rep.ACK);
    await c.closed;

    const e = await NbdClient.open(await dialTcp(s.port));
    e.sendClientFlags(3);
    try {
      await e.exportName('disk');
      assert.unreachable('EXPORT_NAME before STARTTLS got an answer');
    } catch (err) {
      assert.instance(err, ConnectionClosed);
    }
    await waitFor(() => s.logs.some((l) => /EXPORT_NAME before NBD_OPT_STARTTLS/.test(l)), 5000, 'logged');

    // the unix socket (file mode 0600) needs no TLS: plain clients work there
    const u = await NbdClient.connect(await dialUnix(s.sock), { exportName: 'disk' });
    await u.write(0, Buffer.alloc(4096, 7));
    assert.ok((await u.read(0, 4096)).equals(Buffer.alloc(4096, 7)));
    await u.disconnect();
  } finally {
    await s.close();
  }
});

tlsTest('STARTTLS: upgrade, a fresh negotiation over TLS, a second STARTTLS invalid, I/O over TLS; no credentials: ERR_UNSUP', async () => {
  const f = await tlsFiles();
  const s = await startTlsServer(await x509());
  try {
    const { secure } = await startTls(s.port, { ca: readFileSync(f.caCert), servername: 'localhost' });
    assert.is(secure.authorized, true, 'server certificate verified by the CA');
    const c = NbdClient.resume(secure);
    // SET_META_CONTEXT needs structured replies: refused until they are negotiated over TLS
    const meta = await c.option(Opt.SET_META_CONTEXT, Buffer.from([0, 0, 0, 4, 100, 105, 115, 107, 0, 0, 0, 0]));
    assert.is(lastType(meta), Rep.ERR_INVALID, 'no structured replies yet on the TLS session');
    assert.is(lastType(await c.option(Opt.STARTTLS)), Rep.ERR_INVALID, 'second STARTTLS');
    assert.is(lastType(await c.option(Opt.STRUCTURED_REPLY)), Rep.ACK);
    c.structured = true;
    await c.setMetaContext('disk', ['base:allocation']);
    await c.go('disk');
    const data = Buffer.alloc(3 * MiB);
    randomFillSync(data);
    await c.write(MiB, data);
    assert.ok((await c.read(MiB, data.length)).equals(data), 'read back over TLS');
    assert.ok((await contents(s.disk, MiB, data.length)).equals(data), 'the export holds it');
    await c.disconnect();
  } finally {
    await s.close();
  }
  const plain = await startTlsServer(undefined);
  try {
    const c = await NbdClient.open(await dialTcp(plain.port));
    c.sendClientFlags(3);
    assert.is(lastType(await c.option(Opt.STARTTLS)), Rep.ERR_UNSUP, 'no TLS configured');
    assert.is(lastType(await c.option(Opt.STRUCTURED_REPLY)), Rep.ACK, 'haggling goes on in clear');
    c.destroy();
  } finally {
    await plain.close();
  }
});

tlsTest('bytes sent before the STARTTLS reply, a wrong PSK, an untrusted client: dropped and logged, the server goes on', async () => {
  const s = await startTlsServer(await psk());
  try {
    const raw = await dialTcp(s.port);
    const c = await NbdClient.open(raw);
    c.sendClientFlags(3);
    // STARTTLS and a fake ClientHello in one write, without waiting for the reply
    raw.write(Buffer.concat([Buffer.from('49484156454f5054000000050000000016030100', 'hex')]));
    await c.closed;
    await waitFor(() => s.logs.some((l) => /data before the STARTTLS reply/.test(l)), 5000, 'logged');

    const f = await tlsFiles();
    const wrong = parsePskFile(readFileSync(f.wrongPskFile, 'utf8'), 'wrong');
    const failed = await startTls(s.port, { pskCallback: () => ({ identity: f.pskUser, psk: wrong.get(f.pskUser)! }), ciphers: 'PSK-AES128-GCM-SHA256', maxVersion: 'TLSv1.2', checkServerIdentity: () => undefined }).then(
      () => 'handshake succeeded',
      (err: Error) => err,
    );
    assert.instance(failed, Error, 'a wrong PSK must not complete the handshake');
    await waitFor(() => s.logs.some((l) => /TLS handshake failed/.test(l)), 5000, 'handshake failure logged');
    const right = parsePskFile(readFileSync(f.pskFile, 'utf8'), 'right');
    const { secure } = await startTls(s.port, { pskCallback: () => ({ identity: f.pskUser, psk: right.get(f.pskUser)! }), ciphers: 'PSK-AES128-GCM-SHA256', maxVersion: 'TLSv1.2', checkServerIdentity: () => undefined });
    const ok = NbdClient.resume(secure);
    await ok.go('disk');
    await ok.write(0, Buffer.alloc(512, 3));
    assert.ok((await ok.read(0, 512)).equals(Buffer.alloc(512, 3)));
    await ok.disconnect();
  } finally {
    await s.close();
  }
});

async function expectFail(cmd: string, args: string[], what: string): Promise<string> {
  const r = await run(cmd, args, { timeoutMs: 60_000 });
  assert.is.not(r.code, 0, `${what} should fail: ${r.stdout}`);
  return r.stderr;
}

async function expectOk(cmd: string, args: string[]): Promise<string> {
  const r = await run(cmd, args, { timeoutMs: 120_000 });
  assert.is(r.code, 0, `${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

libnbdTest('nbdinfo and nbdcopy over TLS: X.509 (with and without client certificates) and PSK; wrong CA, key, no certificate, plain: refused', async () => {
  const f = await tlsFiles();
  const dir = tempDir('thinpool-tls-copy-');
  const src = join(dir, 'src.img');
  const out = join(dir, 'out.img');
  const data = Buffer.alloc(24 * MiB);
  randomFillSync(data);
  data.fill(0, 5 * MiB, 9 * MiB);
  writeFileSync(src, data);
  const s = await startTlsServer(await x509(), 24 * MiB);
  try {
    const uri = (q: string) => `nbds://127.0.0.1:${s.port}/disk?${q}`;
    const info = await expectOk('nbdinfo', [uri(`tls-certificates=${f.clientDir}`)]);
    assert.match(info, 'newstyle-fixed with TLS, using structured packets');
    await expectOk('nbdcopy', ['--connections=4', src, uri(`tls-certificates=${f.clientDir}`)]);
    await expectOk('nbdcopy', [uri(`tls-certificates=${f.clientDir}`), out]);
    assert.ok(readFileSync(out).equals(data), 'nbdcopy in and out over TLS: byte-identical');
    assert.ok((await contents(s.disk, 0, data.length)).equals(data));
    await expectFail('nbdinfo', [uri(`tls-certificates=${f.wrongCaDir}`)], 'a CA that did not sign the server certificate');
    await expectFail('nbdinfo', [`nbd://127.0.0.1:${s.port}/disk`], 'a plain client');
    await waitFor(() => s.logs.some((l) => /TLS handshake failed/.test(l)), 10_000, 'the refused handshake logged');
  } finally {
    await s.close();
  }
  const mutual = await startTlsServer(await x509(true));
  try {
    const uri = (d: string) => `nbds://127.0.0.1:${mutual.port}/disk?tls-certificates=${d}`;
    assert.match(await expectOk('nbdinfo', ['--size', uri(f.clientDirWithCert)]), String(16 * MiB));
    await expectFail('nbdinfo', ['--size', uri(f.clientDir)], 'no client certificate');
  } finally {
    await mutual.close();
  }
  const p = await startTlsServer(await psk());
  try {
    const uri = (file: string) => `nbds://${f.pskUser}@127.0.0.1:${p.port}/disk?tls-psk-file=${file}`;
    const src16 = join(dir, 'src16.img');
    writeFileSync(src16, data.subarray(0, 16 * MiB));
    await expectOk('nbdcopy', [src16, uri(f.pskDir + '/keys.psk')]);
    assert.ok((await contents(p.disk, 0, 16 * MiB)).equals(data.subarray(0, 16 * MiB)), 'the export holds it');
    const back = join(dir, 'back.img');
    await expectOk('nbdcopy', [uri(f.pskDir + '/keys.psk'), back]);
    assert.ok(readFileSync(back).equals(data.subarray(0, 16 * MiB)), 'PSK: copied in and out');
    await expectFail('nbdinfo', [uri(f.wrongPskFile)], 'a wrong pre-shared key');
    await expectFail('nbdinfo', [`nbds://mallory@127.0.0.1:${p.port}/disk?tls-psk-file=${f.pskDir}/keys.psk`], 'an unknown username');
  } finally {
    await p.close();
  }
});

qemuTest('qemu-img and qemu-io over TLS: tls-creds-x509 and tls-creds-psk; a wrong CA refused', async () => {
  const f = await tlsFiles();
  const opts = (port: number, creds: string) => ['--object', creds, '--image-opts', `driver=nbd,host=127.0.0.1,port=${port},export=disk,tls-creds=tls0`];
  const s = await startTlsServer(await x509());
  try {
    const creds = `tls-creds-x509,id=tls0,endpoint=client,dir=${f.clientDir}`;
    await expectOk('qemu-io', [...opts(s.port, creds), '-c', 'write -P 0x5a 1M 64k', '-c', 'flush']);
    const r = await expectOk('qemu-io', [...opts(s.port, creds), '-c', 'read -P 0x5a 1M 64k', '-c', 'read -P 0 0 1M']);
    assert.not.match(r, /Pattern verification failed/);
    assert.ok((await contents(s.disk, MiB, 65536)).equals(Buffer.alloc(65536, 0x5a)));
    const info = await expectOk('qemu-img', ['info', '--output=json', ...opts(s.port, creds)]);
    assert.is((JSON.parse(info) as { 'virtual-size': number })['virtual-size'], 16 * MiB);
    await expectFail('qemu-img', ['info', ...opts(s.port, `tls-creds-x509,id=tls0,endpoint=client,dir=${f.wrongCaDir}`)], 'a wrong CA');
  } finally {
    await s.close();
  }
  const p = await startTlsServer(await psk());
  try {
    const creds = `tls-creds-psk,id=tls0,endpoint=client,dir=${f.pskDir},username=${f.pskUser}`;
    await expectOk('qemu-io', [...opts(p.port, creds), '-c', 'write -P 0x33 2M 128k']);
    const r = await expectOk('qemu-io', [...opts(p.port, creds), '-c', 'read -P 0x33 2M 128k']);
    assert.not.match(r, /Pattern verification failed/);
    assert.ok((await contents(p.disk, 2 * MiB, 131072)).equals(Buffer.alloc(131072, 0x33)));
  } finally {
    await p.close();
  }
});

test.run();
