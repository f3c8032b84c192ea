/**
 * An {@link NbdExportProvider} over a fixed set of exports, with an optional default export for
 * the empty name and per-export connection counts.
 */
import type { NbdExport, NbdExportProvider } from './export.js';

export interface StaticExportProviderOptions {
  /** Export served for the name "" (default: refuse ""). */
  defaultExport?: string;
}

/**
 * @example
 * const provider = new StaticExportProvider([new MemoryExport({ name: 'disk', size: 64 * MiB })], { defaultExport: 'disk' });
 * const server = new NbdServer({ provider });
 */
export class StaticExportProvider implements NbdExportProvider {
  private readonly exports = new Map<string, NbdExport>();
  private readonly attached = new Map<NbdExport, number>();
  defaultExport: string | undefined;

  constructor(exports: Iterable<NbdExport> = [], opts: StaticExportProviderOptions = {}) {
    for (const e of exports) this.add(e);
    this.defaultExport = opts.defaultExport;
  }

  /** Adds or replaces the export with the same name. */
  add(exp: NbdExport): void {
    this.exports.set(exp.name, exp);
  }

  /** Stops offering an export to new connections (existing connections keep it). */
  remove(name: string): boolean {
    return this.exports.delete(name);
  }

  list(): string[] {
    return [...this.exports.keys()];
  }

  get(name: string): NbdExport | undefined {
    if (name === '' && !this.exports.has('') && this.defaultExport !== undefined) return this.exports.get(this.defaultExport);
    return this.exports.get(name);
  }

  attach(exp: NbdExport): () => void {
    this.attached.set(exp, (this.attached.get(exp) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const n = (this.attached.get(exp) ?? 1) - 1;
      if (n === 0) this.attached.delete(exp);
      else this.attached.set(exp, n);
    };
  }

  /** Connections currently using the export called `name`. */
  users(name: string): number {
    const exp = this.exports.get(name);
    return exp ? (this.attached.get(exp) ?? 0) : 0;
  }
}
