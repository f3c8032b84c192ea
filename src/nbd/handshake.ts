/**
 * The fixed-newstyle handshake of one connection (nbdkit's protocol-handshake-newstyle.c): the
 * client flags, then option haggling (STARTTLS, STRUCTURED_REPLY, LIST, INFO, GO, EXPORT_NAME,
 * ABORT, LIST/SET_META_CONTEXT) until GO or EXPORT_NAME hands the connection to a
 * {@link Transmission}. A connection with TLS credentials must upgrade first: other options get
 * ERR_TLS_REQD (EXPORT_NAME, which cannot be answered, closes it).
 * Option data is capped at {@link MAX_OPTION_DATA}; bad magic or unknown client flags end the
 * connection.
 */
import type { ConnectionHost } from './connection-host.js';
import type { NbdExport } from './export.js';
import {
  BASE_ALLOCATION, ClientFlag, Info, MAX_STRING, Opt, Rep, TxFlag, clientFlagsAcceptable, packExportNameReply, packInfoBlockSize,
  packInfoExport, packInfoString, packMetaContext, packOptionReply, packServerEntry, parseInfoRequest, parseMetaContextRequest,
  parseOptionHeader,
} from './protocol.js';
import { BASE_ALLOCATION_ID } from './replies.js';
import { Transmission, messageOf } from './transmission.js';

/** Largest option data accepted; a longer option ends the connection. */
export const MAX_OPTION_DATA = 64 * 1024;
/** Preferred block size advertised in NBD_INFO_BLOCK_SIZE. */
export const PREFERRED_BLOCK_SIZE = 4096;

const S_CLIENT_FLAGS = 0;
const S_OPT_HEADER = 1;
const S_OPT_DATA = 2;

export class Handshake {
  private state = S_CLIENT_FLAGS;
  private noZeroes = false;
  private structured = false;
  private metaExportName: string | undefined;
  private optCode = 0;
  private optLength = 0;
  /** TLS was negotiated on this connection (NBD_OPT_STARTTLS succeeded). */
  private secure = false;

  constructor(private readonly host: ConnectionHost) {}

  /** Parses what the receive buffer holds; false when it needs more bytes (or the connection left the handshake). */
  step(): boolean {
    const host = this.host;
    const rx = host.rx;
    switch (this.state) {
      case S_CLIENT_FLAGS: {
        if (rx.length < 4) return false;
        const flags = rx.take(4).readUInt32BE(0);
        if (!clientFlagsAcceptable(flags)) {
          host.log(`client flags 0x${flags.toString(16)} not supported, closing`);
          host.abort();
          return false;
        }
        this.noZeroes = (flags & ClientFlag.NO_ZEROES) !== 0;
        this.state = S_OPT_HEADER;
        return true;
      }
      case S_OPT_HEADER: {
        if (host.writeBacklogged()) return host.block();
        if (rx.length < 16) return false;
        const h = parseOptionHeader(rx.take(16));
        if (!h.magicOk) {
          host.log('bad option magic, closing');
          host.abort();
          return false;
        }
        if (h.length > MAX_OPTION_DATA) {
          host.log(`option ${h.option} data of ${h.length} bytes exceeds ${MAX_OPTION_DATA}, closing`);
          host.abort();
          return false;
        }
        this.optCode = h.option;
        this.optLength = h.length;
        this.state = S_OPT_DATA;
        return true;
      }
      default: {
        if (rx.length < this.optLength) return false;
        const data = rx.take(this.optLength);
        this.state = S_OPT_HEADER;
        this.handleOption(this.optCode, data);
        return true;
      }
    }
  }

  private handleOption(code: number, data: Buffer): void {
    const tls = this.host.ctx.tls;
    if (code === Opt.STARTTLS) return this.optStartTls(data);
    if (tls && !this.secure) {
      // TLS required (the spec's FORCEDTLS): only ABORT, or STARTTLS above, before the upgrade.
      if (code === Opt.ABORT) {
        this.host.send([packOptionReply(code, Rep.ACK)]);
        return this.host.beginClose();
      }
      if (code === Opt.EXPORT_NAME) {
        this.host.log('NBD_OPT_EXPORT_NAME before NBD_OPT_STARTTLS on a TLS-only server, closing');
        return this.host.abort();
      }
      return this.optError(code, Rep.ERR_TLS_REQD, 'TLS is required: send NBD_OPT_STARTTLS first');
    }
    switch (code) {
      case Opt.EXPORT_NAME:
        return this.optExportName(data);
      case Opt.ABORT:
        this.host.send([packOptionReply(code, Rep.ACK)]);
        return this.host.beginClose();
      case Opt.LIST:
        return this.optList(data);
      case Opt.INFO:
      case Opt.GO:
        return this.optInfo(code, data);
      case Opt.STRUCTURED_REPLY:
        if (data.length !== 0) return this.optError(code, Rep.ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data');
        this.structured = true;
        return this.host.send([packOptionReply(code, Rep.ACK)]);
      case Opt.LIST_META_CONTEXT:
      case Opt.SET_META_CONTEXT:
        return this.optMetaContext(code, data);
      default:
        return this.optError(code, Rep.ERR_UNSUP, `option ${code} is not supported`);
    }
  }

  /**
   * NBD_OPT_STARTTLS: unsupported without credentials; once TLS is up, a second one is invalid;
   * else ACK, the TLS handshake, and everything negotiated before it is forgotten.
   */
  private optStartTls(data: Buffer): void {
    const code = Opt.STARTTLS;
    if (!this.host.ctx.tls) return this.optError(code, Rep.ERR_UNSUP, 'TLS is not configured on this server');
    if (data.length !== 0) return this.optError(code, Rep.ERR_INVALID, 'NBD_OPT_STARTTLS takes no data');
    if (this.secure) return this.optError(code, Rep.ERR_INVALID, 'TLS is already negotiated');
    this.secure = true;
    this.structured = false;
    this.metaExportName = undefined;
    this.host.startTls(packOptionReply(code, Rep.ACK));
  }

  private optError(code: number, type: number, message: string): void {
    this.host.send([packOptionReply(code, type, Buffer.from(message, 'utf8'))]);
  }

  private lookup(name: string): NbdExport | undefined {
    try {
      return this.host.ctx.provider.get(name);
    } catch (err) {
      this.host.log(`export lookup of ${JSON.stringify(name.slice(0, 256))} failed: ${messageOf(err)}`);
      return undefined;
    }
  }

  private attach(exp: NbdExport): { ok: boolean; detach?: () => void } {
    try {
      return { ok: true, detach: this.host.ctx.provider.attach?.(exp) };
    } catch (err) {
      this.host.log(`attaching export ${JSON.stringify(exp.name)} failed: ${messageOf(err)}`);
      return { ok: false };
    }
  }

  private sizeOf(exp: NbdExport): number | undefined {
    const size = exp.size;
    if (Number.isSafeInteger(size) && size >= 0) return size;
    this.host.log(`export ${JSON.stringify(exp.name)} has an invalid size ${size}`);
    return undefined;
  }

  private transmissionFlags(exp: NbdExport): number {
    let flags = TxFlag.HAS_FLAGS | TxFlag.SEND_FLUSH | TxFlag.SEND_CACHE | TxFlag.CAN_MULTI_CONN;
    if (this.structured) flags |= TxFlag.SEND_DF;
    if (exp.readOnly) flags |= TxFlag.READ_ONLY;
    else flags |= TxFlag.SEND_FUA | TxFlag.SEND_TRIM | TxFlag.SEND_WRITE_ZEROES | TxFlag.SEND_FAST_ZERO;
    return flags;
  }

  private optExportName(data: Buffer): void {
    const name = data.toString('utf8');
    const exp = data.length <= MAX_STRING ? this.lookup(name) : undefined;
    if (!exp) {
      this.host.log(`NBD_OPT_EXPORT_NAME for unknown export ${JSON.stringify(name.slice(0, 256))}, closing`);
      return this.host.abort();
    }
    const size = this.sizeOf(exp);
    if (size === undefined) return this.host.abort();
    const flags = this.transmissionFlags(exp);
    const a = this.attach(exp);
    if (!a.ok) return this.host.abort();
    this.host.send([packExportNameReply(size, flags, this.noZeroes)]);
    this.enterTransmission(exp, name, size, a.detach);
  }

  private optList(data: Buffer): void {
    if (data.length !== 0) return this.optError(Opt.LIST, Rep.ERR_INVALID, 'NBD_OPT_LIST takes no data');
    let names: string[];
    try {
      names = this.host.ctx.provider.list();
    } catch (err) {
      this.host.log(`listing exports failed: ${messageOf(err)}`);
      return this.optError(Opt.LIST, Rep.ERR_SHUTDOWN, 'cannot list exports');
    }
    const out: Buffer[] = [];
    for (const name of names) out.push(packOptionReply(Opt.LIST, Rep.SERVER, packServerEntry(name, this.lookup(name)?.description)));
    out.push(packOptionReply(Opt.LIST, Rep.ACK));
    this.host.send(out);
  }

  private optInfo(code: number, data: Buffer): void {
    const req = parseInfoRequest(data);
    if (!req) return this.optError(code, Rep.ERR_INVALID, 'malformed NBD_OPT_INFO/NBD_OPT_GO data');
    if (req.nameBytes > MAX_STRING) return this.optError(code, Rep.ERR_INVALID, 'export name too long');
    const exp = this.lookup(req.name);
    if (!exp) return this.optError(code, Rep.ERR_UNKNOWN, `export "${req.name.slice(0, 256)}" not available`);
    const size = this.sizeOf(exp);
    if (size === undefined) return this.optError(code, Rep.ERR_UNKNOWN, `export "${exp.name}" is not usable`);
    const wanted = new Set(req.infos);
    const out: Buffer[] = [packOptionReply(code, Rep.INFO, packInfoExport(size, this.transmissionFlags(exp)))];
    if (wanted.has(Info.NAME)) out.push(packOptionReply(code, Rep.INFO, packInfoString(Info.NAME, exp.name)));
    if (wanted.has(Info.DESCRIPTION) && exp.description) out.push(packOptionReply(code, Rep.INFO, packInfoString(Info.DESCRIPTION, exp.description)));
    out.push(packOptionReply(code, Rep.INFO, packInfoBlockSize(1, PREFERRED_BLOCK_SIZE, this.host.ctx.maxPayload)));
    if (code === Opt.INFO) {
      out.push(packOptionReply(code, Rep.ACK));
      return this.host.send(out);
    }
    const a = this.attach(exp);
    if (!a.ok) return this.optError(code, Rep.ERR_SHUTDOWN, `export "${exp.name}" is not available now`);
    out.push(packOptionReply(code, Rep.ACK));
    this.host.send(out);
    this.enterTransmission(exp, req.name, size, a.detach);
  }

  private optMetaContext(code: number, data: Buffer): void {
    const set = code === Opt.SET_META_CONTEXT;
    if (set) this.metaExportName = undefined;
    if (set && !this.structured) return this.optError(code, Rep.ERR_INVALID, 'structured replies not negotiated');
    const req = parseMetaContextRequest(data);
    if (!req) return this.optError(code, Rep.ERR_INVALID, 'malformed meta context request');
    if (req.nameBytes > MAX_STRING) return this.optError(code, Rep.ERR_INVALID, 'export name too long');
    if (!this.lookup(req.name)) return this.optError(code, Rep.ERR_UNKNOWN, `export "${req.name.slice(0, 256)}" not available`);
    const out: Buffer[] = [];
    if (set) {
      if (req.queries.includes(BASE_ALLOCATION)) {
        this.metaExportName = req.name;
        out.push(packOptionReply(code, Rep.META_CONTEXT, packMetaContext(BASE_ALLOCATION_ID, BASE_ALLOCATION)));
      }
    } else if (req.queries.length === 0 || req.queries.some((q) => q === 'base:' || q === BASE_ALLOCATION)) {
      out.push(packOptionReply(code, Rep.META_CONTEXT, packMetaContext(0, BASE_ALLOCATION)));
    }
    out.push(packOptionReply(code, Rep.ACK));
    this.host.send(out);
  }

  private enterTransmission(exp: NbdExport, requestedName: string, size: number, detach: (() => void) | undefined): void {
    const allocationContext = this.structured && this.metaExportName === requestedName;
    this.host.startTransmission(new Transmission(this.host, { exp, size, detach, structured: this.structured, allocationContext }));
  }
}
