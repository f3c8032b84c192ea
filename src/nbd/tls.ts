/**
 * TLS for NBD connections (NBD_OPT_STARTTLS): the server's credentials, either an X.509
 * certificate and key (optionally a CA whose certificates clients must present) or pre-shared keys
 * in psktool's `username:hexkey` format, as qemu-nbd's `tls-creds-x509`/`tls-creds-psk` and
 * nbdkit's `--tls-certificates`/`--tls-psk` take them. Node's `tls` module (OpenSSL) does the
 * crypto; a connection's stream is upgraded in place after the STARTTLS reply.
 */
import { createSecureContext, TLSSocket, type SecureContext } from 'node:tls';
import { readFileSync } from 'node:fs';
import type { Duplex } from 'node:stream';
import { UsageError } from '../errors.js';

/** X.509 credentials (PEM). With `ca`, a client must present a certificate it signed. */
export interface NbdTlsX509 {
  kind: 'x509';
  cert: string | Buffer;
  key: string | Buffer;
  ca?: string | Buffer;
}

/** Pre-shared keys by username (the TLS PSK identity). */
export interface NbdTlsPsk {
  kind: 'psk';
  keys: ReadonlyMap<string, Buffer>;
}

export type NbdTlsCredentials = NbdTlsX509 | NbdTlsPsk;

/**
 * TLS 1.2 PSK cipher suites (OpenSSL names). Node does not offer TLS 1.3 external PSKs through
 * `pskCallback`, so PSK sessions are TLS 1.2. GnuTLS clients (libnbd, qemu) offer ECDHE-PSK and
 * plain PSK with these ciphers; the ECDHE ones (forward secrecy) come first.
 */
const PSK_CIPHERS = [
  'ECDHE-PSK-CHACHA20-POLY1305',
  'ECDHE-PSK-AES256-CBC-SHA384',
  'ECDHE-PSK-AES128-CBC-SHA256',
  'DHE-PSK-AES256-GCM-SHA384',
  'DHE-PSK-AES128-GCM-SHA256',
  'PSK-AES256-GCM-SHA384',
  'PSK-AES128-GCM-SHA256',
].join(':');

const USERNAME = /^[^:\s]{1,256}$/;

/**
 * Parses a psktool key file: one `username:hexkey` per line (blank lines and `#` comments
 * ignored). A malformed line, an empty or odd-length key, or a repeated username is a
 * {@link UsageError} naming the line.
 * @example parsePskFile('alice:0123456789abcdef\n', 'keys.psk').get('alice')
 */
export function parsePskFile(text: string, file: string): Map<string, Buffer> {
  const keys = new Map<string, Buffer>();
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line === '' || line.startsWith('#')) continue;
    const colon = line.lastIndexOf(':');
    const user = line.slice(0, colon);
    const hex = line.slice(colon + 1);
    if (colon <= 0 || !USERNAME.test(user) || !/^(?:[0-9a-fA-F]{2})+$/.test(hex)) {
      throw new UsageError(`Cannot read PSK file ${file}: line ${i + 1} is not username:hexkey (psktool format)`, { file, line: i + 1 });
    }
    if (keys.has(user)) throw new UsageError(`Cannot read PSK file ${file}: username '${user}' appears twice (line ${i + 1})`, { file, line: i + 1 });
    keys.set(user, Buffer.from(hex, 'hex'));
  }
  if (keys.size === 0) throw new UsageError(`Cannot read PSK file ${file}: it holds no username:hexkey line`, { file });
  return keys;
}

/**
 * The server side of NBD over TLS: builds one secure context and upgrades connections with it.
 *
 * @example
 * const tls = new NbdTls({ kind: 'x509', cert: readFileSync('server-cert.pem'), key: readFileSync('server-key.pem') });
 * new NbdServer({ provider, tls });
 */
export class NbdTls {
  private readonly context: SecureContext;

  constructor(readonly credentials: NbdTlsCredentials) {
    try {
      if (credentials.kind === 'x509') {
        this.context = createSecureContext({
          cert: credentials.cert,
          key: credentials.key,
          ...(credentials.ca !== undefined ? { ca: credentials.ca } : {}),
          minVersion: 'TLSv1.2',
        });
      } else {
        if (credentials.keys.size === 0) throw new Error('no keys');
        this.context = createSecureContext({ ciphers: PSK_CIPHERS, minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2' });
      }
    } catch (err) {
      if (err instanceof UsageError) throw err;
      throw new UsageError(`Cannot set up TLS: ${(err as Error).message}, expected a PEM certificate and its private key`);
    }
  }

  /** What clients must use, for the ready line: `x509`, `x509 (client certificates required)` or `psk`. */
  describe(): string {
    const c = this.credentials;
    if (c.kind === 'psk') return 'psk';
    return c.ca !== undefined ? 'x509 (client certificates required)' : 'x509';
  }

  /**
   * Starts the server side of a TLS handshake on `stream` (whose earlier writes go out first, in
   * clear). The returned socket carries the rest of the connection.
   */
  wrap(stream: Duplex): TLSSocket {
    const c = this.credentials;
    return new TLSSocket(stream, {
      isServer: true,
      secureContext: this.context,
      ...(c.kind === 'x509' && c.ca !== undefined ? { requestCert: true, rejectUnauthorized: true } : {}),
      ...(c.kind === 'psk' ? { pskCallback: (_socket: TLSSocket, identity: string) => c.keys.get(identity) ?? null } : {}),
    } as ConstructorParameters<typeof TLSSocket>[1]);
  }
}

/** The files behind TLS credentials, as `thinpool serve` takes them. */
export interface NbdTlsFiles {
  cert?: string;
  key?: string;
  ca?: string;
  psk?: string;
}

/**
 * Reads TLS credentials from files: `cert` and `key` together (with an optional `ca` for client
 * certificates), or `psk` alone; undefined when none is given. Missing or unreadable files and
 * incomplete combinations are {@link UsageError}s.
 * @example readTlsCredentials({ psk: '/etc/thinpool/keys.psk' })
 */
export function readTlsCredentials(files: NbdTlsFiles): NbdTlsCredentials | undefined {
  const { cert, key, ca, psk } = files;
  if (psk !== undefined) {
    if (cert !== undefined || key !== undefined || ca !== undefined) throw new UsageError('Cannot set up TLS: --tls-psk goes alone, expected either --tls-psk or --tls-cert with --tls-key');
    return { kind: 'psk', keys: parsePskFile(readText(psk, 'PSK file'), psk) };
  }
  if (cert === undefined && key === undefined) {
    if (ca !== undefined) throw new UsageError('Cannot set up TLS: --tls-ca without --tls-cert and --tls-key');
    return undefined;
  }
  if (cert === undefined || key === undefined) throw new UsageError('Cannot set up TLS: --tls-cert and --tls-key go together');
  return { kind: 'x509', cert: readText(cert, 'certificate'), key: readText(key, 'private key'), ...(ca !== undefined ? { ca: readText(ca, 'CA certificate') } : {}) };
}

function readText(file: string, what: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw new UsageError(`Cannot read TLS ${what} ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { file });
  }
}
