/**
 * `thinpool serve --listen` with TLS: `--tls-psk FILE` and `--tls-cert/--tls-key` make every TCP
 * client use TLS (the ready line shows nbds:// and says so); nbdcopy and qemu-io copy data into a
 * thin device over TLS that reads back byte-identical through the plain unix socket; a plain TCP
 * client is refused. `--listen` without TLS warns in its ready line that anyone on the host can
 * read and write the exports; incomplete TLS options are usage errors (exit 2).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { randomFillSync } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cliHasServe, daemonRefuses, makePool, startDaemon, until } from '../support/daemon.js';
import { haveTools, run, testIf } from '../support/oracles.js';
import { makeTlsFiles } from '../support/tls-credentials.js';
import { tempDir } from '../support/tmp.js';

const M = 1024 * 1024;
const ok = cliHasServe() && haveTools('openssl', 'nbdcopy', 'nbdinfo');
const tlsTest = testIf(test, ok, 'the CLI has no serve, or openssl/nbdcopy/nbdinfo missing');
const qemuTest = testIf(test, ok && haveTools('qemu-io'), 'the CLI has no serve, or openssl/qemu-io missing');

async function must(cmd: string, args: string[]): Promise<string> {
  const r = await run(cmd, args, { timeoutMs: 120_000 });
  assert.is(r.code, 0, `${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

tlsTest('serve --tls-psk: nbds:// in the ready line, nbdcopy over TLS-PSK byte-identical via the unix socket, plain TCP refused', async () => {
  const f = await makeTlsFiles();
  const dir = await makePool({ devices: [{ name: 'vol', size: 32 * M }] });
  const work = tempDir('thinpool-serve-tls-');
  const d = await startDaemon({ dir, listen: ['127.0.0.1:0'], extraArgs: ['--tls-psk', f.pskFile] });
  try {
    const ready = d.stdout();
    assert.match(ready, `nbds://127.0.0.1:${d.tcpPorts[0]}/DEVICE`);
    assert.match(ready, 'TCP requires TLS (psk)');
    assert.not.match(ready, 'WARNING');
    const data = Buffer.alloc(20 * M);
    randomFillSync(data, 0, 6 * M);
    randomFillSync(data, 13 * M, 3 * M);
    const src = join(work, 'src.img');
    writeFileSync(src, data);
    const uri = `nbds://${f.pskUser}@127.0.0.1:${d.tcpPorts[0]}/vol?tls-psk-file=${f.pskDir}/keys.psk`;
    await must('nbdcopy', ['--connections=2', src, uri]);
    const out = join(work, 'out.img');
    await must('nbdcopy', [d.uri('vol'), out]);
    assert.ok(readFileSync(out).subarray(0, data.length).equals(data), 'what went in over TLS reads back through the unix socket');
    const plain = await run('nbdinfo', [`nbd://127.0.0.1:${d.tcpPorts[0]}/vol`], { timeoutMs: 30_000 });
    assert.is.not(plain.code, 0, 'plain TCP must be refused');
    const wrong = await run('nbdinfo', [`nbds://${f.pskUser}@127.0.0.1:${d.tcpPorts[0]}/vol?tls-psk-file=${f.wrongPskFile}`], { timeoutMs: 30_000 });
    assert.is.not(wrong.code, 0, 'a wrong key must be refused');
    await until(() => /TLS handshake failed/.test(d.log()), 5000, 'the failed handshake logged');
    assert.ok(d.alive());
  } finally {
    await d.stop();
  }
});

qemuTest('serve --tls-cert/--tls-key: qemu-io writes over TLS, nbdinfo verifies the server certificate', async () => {
  const f = await makeTlsFiles();
  const dir = await makePool({ devices: [{ name: 'vol', size: 16 * M }] });
  const d = await startDaemon({ dir, listen: ['127.0.0.1:0'], extraArgs: ['--tls-cert', f.serverCert, '--tls-key', f.serverKey] });
  try {
    assert.match(d.stdout(), 'TCP requires TLS (x509)');
    const img = ['--object', `tls-creds-x509,id=tls0,endpoint=client,dir=${f.clientDir}`, '--image-opts', `driver=nbd,host=127.0.0.1,port=${d.tcpPorts[0]},export=vol,tls-creds=tls0`];
    await must('qemu-io', [...img, '-c', 'write -P 0xa7 3M 256k', '-c', 'flush']);
    const r = await must('qemu-io', ['-f', 'raw', d.uri('vol'), '-c', 'read -P 0xa7 3M 256k']);
    assert.not.match(r, 'Pattern verification failed');
    assert.match(await must('nbdinfo', [`nbds://127.0.0.1:${d.tcpPorts[0]}/vol?tls-certificates=${f.clientDir}`]), 'with TLS');
    const wrongCa = await run('nbdinfo', [`nbds://127.0.0.1:${d.tcpPorts[0]}/vol?tls-certificates=${f.wrongCaDir}`], { timeoutMs: 30_000 });
    assert.is.not(wrongCa.code, 0);
  } finally {
    await d.stop();
  }
});

tlsTest('--listen without TLS warns in the ready line; incomplete TLS options are usage errors', async () => {
  const f = await makeTlsFiles();
  const dir = await makePool({ devices: [{ name: 'vol', size: 16 * M }] });
  const d = await startDaemon({ dir, listen: ['127.0.0.1:0'], via: 'cli' });
  try {
    assert.match(d.stdout(), `nbd://127.0.0.1:${d.tcpPorts[0]}/DEVICE`);
    assert.match(d.stdout(), 'WARNING: TCP without TLS: anyone on this host can read and write the exports');
  } finally {
    await d.stop();
  }
  const unixOnly = await startDaemon({ dir, via: 'cli' });
  try {
    assert.not.match(unixOnly.stdout(), 'WARNING', 'the unix socket alone needs no warning');
  } finally {
    await unixOnly.stop();
  }
  for (const [args, msg] of [
    [['--listen', '127.0.0.1:0', '--tls-cert', f.serverCert], 'go together'],
    [['--listen', '127.0.0.1:0', '--tls-psk', f.pskFile, '--tls-cert', f.serverCert, '--tls-key', f.serverKey], 'goes alone'],
    [['--tls-psk', f.pskFile], 'without --listen'],
    [['--listen', '127.0.0.1:0', '--tls-psk', join(f.dir, 'absent.psk')], 'ENOENT'],
    [['--listen', '127.0.0.1:0', '--tls-cert', f.serverKey, '--tls-key', f.serverCert], 'annot set up TLS: error'],
  ] as const) {
    const r = await daemonRefuses({ dir, extraArgs: [...args] });
    assert.is(r.exit.code, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, msg);
  }
});

test.run();
