/**
 * Exports of a pool for the NBD server: every device by name (and `id:N`), looked up when a
 * client asks, so devices created while serving are exportable at once. "" is refused unless
 * a default device is given. An exported device cannot be removed.
 */
import type { NbdExport, NbdExportProvider } from '../nbd/export.js';
import type { Pool } from '../pool/pool.js';
import { ThinExport } from './thin-export.js';

export interface PoolExportsOptions {
  /** Device served for the export name "". */
  defaultDevice?: string;
  /** Devices exported read-only. */
  readOnly?: string[];
  /** See `ThinExport`'s `earlyReplies` (default true). */
  earlyWriteReplies?: boolean;
}

export class PoolExports implements NbdExportProvider {
  /** Devices named by the options, resolved to ids once: renames do not change what they mean. */
  private readonly readOnlyIds: Set<number>;
  private readonly defaultId: number | undefined;
  private readonly earlyWriteReplies: boolean;

  constructor(private readonly pool: Pool, opts: PoolExportsOptions = {}) {
    this.earlyWriteReplies = opts.earlyWriteReplies ?? true;
    this.readOnlyIds = new Set((opts.readOnly ?? []).map((r) => pool.record(r).id));
    this.defaultId = opts.defaultDevice === undefined ? undefined : pool.record(opts.defaultDevice).id;
  }

  list(): string[] {
    return [...this.pool.catalog.records()].sort((a, b) => a.id - b.id).map((d) => d.name ?? `id:${d.id}`);
  }

  get(name: string): NbdExport | undefined {
    const dev = name === '' ? (this.defaultId === undefined ? undefined : `id:${this.defaultId}`) : name;
    if (dev === undefined) return undefined;
    let id: number;
    try {
      id = this.pool.record(dev).id;
    } catch {
      return undefined;
    }
    return new ThinExport(this.pool.volume(`id:${id}`), this.pool.label(id), this.forcedReadOnly(id), this.earlyWriteReplies);
  }

  attach(exp: NbdExport): () => void {
    return this.pool.use((exp as ThinExport).volume.id);
  }

  /** Live connections per exported device. */
  exports(): Array<{ name: string; connections: number; readOnly: boolean }> {
    return this.pool.users().map(([id, connections]) => ({
      name: this.pool.label(id),
      connections,
      readOnly: this.forcedReadOnly(id) || !!this.pool.catalog.find(id)?.readOnly,
    }));
  }

  /** True when `serve --read-only` named this device. */
  private forcedReadOnly(id: number): boolean {
    return this.readOnlyIds.has(id);
  }
}
