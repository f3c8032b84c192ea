/**
 * TLS credentials made for a test with openssl: a CA, a server certificate for localhost and
 * 127.0.0.1 signed by it, a client certificate, a second unrelated CA, and psktool-format key
 * files. Files are laid out as GnuTLS clients (libnbd's tls-certificates, qemu's tls-creds-x509
 * dir) expect them: ca-cert.pem, client-cert.pem, client-key.pem; keys.psk for tls-creds-psk.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { run } from './oracles.js';
import { tempDir } from './tmp.js';

export interface TestTlsFiles {
  dir: string;
  /** Server certificate and key (PEM). */
  serverCert: string;
  serverKey: string;
  /** The CA that signed the server's and the client's certificates. */
  caCert: string;
  /** Client directory with ca-cert.pem only (server verification, no client certificate). */
  clientDir: string;
  /** Client directory with ca-cert.pem, client-cert.pem and client-key.pem. */
  clientDirWithCert: string;
  /** Client directory whose ca-cert.pem is an unrelated CA (verification must fail). */
  wrongCaDir: string;
  /** PSK: the server's file, a client dir with keys.psk (qemu), the username and a file with a wrong key. */
  pskFile: string;
  pskDir: string;
  pskUser: string;
  wrongPskFile: string;
}

async function openssl(args: string[], cwd: string): Promise<void> {
  const r = await run('openssl', args, { cwd, timeoutMs: 30_000 });
  if (r.code !== 0) throw new Error(`openssl ${args.join(' ')} failed: ${r.stderr}`);
}

async function keyAndCsr(cwd: string, name: string, cn: string): Promise<void> {
  await openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', `/CN=${cn}`, '-keyout', `${name}-key.pem`, '-out', `${name}.csr`], cwd);
}

async function selfSignedCa(cwd: string, name: string): Promise<void> {
  await openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2', '-subj', `/CN=${name}`, '-keyout', `${name}-key.pem`, '-out', `${name}-cert.pem`], cwd);
}

async function sign(cwd: string, name: string, ext: string): Promise<void> {
  writeFileSync(join(cwd, `${name}.ext`), ext);
  await openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca-cert.pem', '-CAkey', 'ca-key.pem', '-CAcreateserial', '-days', '2', '-extfile', `${name}.ext`, '-out', `${name}-cert.pem`], cwd);
}

/** Makes every file above in a fresh temp dir (needs `openssl`). */
export async function makeTlsFiles(): Promise<TestTlsFiles> {
  const dir = tempDir('thinpool-tls-');
  await selfSignedCa(dir, 'ca');
  await selfSignedCa(dir, 'other-ca');
  await keyAndCsr(dir, 'server', 'localhost');
  await sign(dir, 'server', 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  await keyAndCsr(dir, 'client', 'thinpool-test-client');
  await sign(dir, 'client', 'extendedKeyUsage=clientAuth\n');
  const read = (f: string) => readFile(join(dir, f));
  const mk = (name: string, files: Record<string, string>) => {
    const d = join(dir, name);
    mkdirSync(d);
    for (const [f, text] of Object.entries(files)) writeFileSync(join(d, f), text, { mode: 0o600 });
    return d;
  };
  const pskUser = 'alice';
  const psk = `${pskUser}:${randomBytes(32).toString('hex')}\n`;
  const pskFile = join(dir, 'server-keys.psk');
  writeFileSync(pskFile, `# made by the test\nbob:${randomBytes(32).toString('hex')}\n${psk}`, { mode: 0o600 });
  const wrongPskFile = join(dir, 'wrong-keys.psk');
  writeFileSync(wrongPskFile, `${pskUser}:${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
  return {
    dir,
    serverCert: join(dir, 'server-cert.pem'),
    serverKey: join(dir, 'server-key.pem'),
    caCert: join(dir, 'ca-cert.pem'),
    clientDir: mk('client', { 'ca-cert.pem': read('ca-cert.pem') }),
    clientDirWithCert: mk('client-cert', { 'ca-cert.pem': read('ca-cert.pem'), 'client-cert.pem': read('client-cert.pem'), 'client-key.pem': read('client-key.pem') }),
    wrongCaDir: mk('wrong-ca', { 'ca-cert.pem': read('other-ca-cert.pem') }),
    pskFile,
    pskDir: mk('psk', { 'keys.psk': psk }),
    pskUser,
    wrongPskFile,
  };
}

function readFile(p: string): string {
  return readFileSync(p, 'utf8');
}
