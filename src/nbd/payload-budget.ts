/**
 * The server-wide bound on request payload bytes held in memory: WRITE payloads from the moment
 * their header is accepted until the export has them, and READ replies from dispatch until the
 * reply has left for the socket. Every connection reserves a request's bytes here before it
 * reads the payload or runs the read; while the budget is used up it stops reading its socket
 * and waits its turn (FIFO), as nbdkit and qemu-nbd apply back-pressure by not reading. A
 * request larger than the whole budget is let through alone, so nothing waits forever.
 *
 * A reservation for a WRITE payload the client stops sending would hold its bytes for as long
 * as the client likes; while others wait, one that has received nothing for `stallMs` is
 * reported stalled (its connection is then closed), so a few slow-loris clients cannot starve
 * the rest for long. Small requests (up to {@link SMALL_REQUEST} bytes) first draw on a small
 * lane of their own (an eighth of the limit on top of it), so ordinary I/O goes on even while
 * big payloads hold the main budget and others queue for it.
 */

/** Requests up to this size may use the small lane. */
export const SMALL_REQUEST = 256 * 1024;

/** One grant of budget bytes (a request's payload or reply). */
export interface Reservation {
  readonly bytes: number;
  /** Drawn from the small lane. */
  readonly small: boolean;
  /** Set by the holder whenever payload bytes arrive (a WRITE in reception), else undefined. */
  lastProgress: number | undefined;
  /** Called (once) when the holder stalled while others wait; the holder closes its connection. */
  onStall: (() => void) | undefined;
}

interface Waiter {
  bytes: number;
  grant: (r: Reservation) => void;
}

export class PayloadBudget {
  private usedBytes = 0;
  private smallUsed = 0;
  private readonly smallLimit: number;
  private readonly queue: Waiter[] = [];
  private readonly held = new Set<Reservation>();
  private timer: NodeJS.Timeout | undefined;
  /** Largest number of bytes reserved at once so far (for tests and status). */
  peak = 0;

  /** @param limit bytes that may be reserved at once; @param stallMs see the class comment (0: never). */
  constructor(readonly limit: number, private readonly stallMs = 30_000) {
    this.smallLimit = Math.max(SMALL_REQUEST, Math.floor(limit / 8));
  }

  /** Bytes reserved now (both lanes). */
  get used(): number {
    return this.usedBytes + this.smallUsed;
  }

  /** The most bytes that can ever be reserved at once: the limit and the small lane. */
  get bound(): number {
    return this.limit + this.smallLimit;
  }

  /** Requests waiting for budget. */
  get waiting(): number {
    return this.queue.length;
  }

  /**
   * Reserves `bytes` now when nobody waits and they fit (or nothing is reserved): returns the
   * reservation. Otherwise queues the request and returns a function that withdraws it; `grant`
   * is called with the reservation when its turn comes.
   */
  reserve(bytes: number, grant: (r: Reservation) => void): Reservation | (() => void) {
    if (bytes <= SMALL_REQUEST && this.smallUsed + bytes <= this.smallLimit) return this.take(bytes, true);
    if (this.queue.length === 0 && this.fits(bytes)) return this.take(bytes, false);
    const w: Waiter = { bytes, grant };
    this.queue.push(w);
    this.watch();
    return () => {
      const i = this.queue.indexOf(w);
      if (i >= 0) this.queue.splice(i, 1);
    };
  }

  /** Gives a reservation's bytes back (idempotent) and serves the waiters that now fit, in order. */
  release(r: Reservation): void {
    if (!this.held.delete(r)) return;
    if (r.small) this.smallUsed -= r.bytes;
    else this.usedBytes -= r.bytes;
    while (this.queue.length && this.fits(this.queue[0]!.bytes)) {
      const w = this.queue.shift()!;
      w.grant(this.take(w.bytes, false));
    }
    if (this.queue.length === 0) this.unwatch();
  }

  private fits(bytes: number): boolean {
    return this.usedBytes === 0 || this.usedBytes + bytes <= this.limit;
  }

  private take(bytes: number, small: boolean): Reservation {
    const r: Reservation = { bytes, small, lastProgress: undefined, onStall: undefined };
    this.held.add(r);
    if (small) this.smallUsed += bytes;
    else this.usedBytes += bytes;
    if (this.used > this.peak) this.peak = this.used;
    return r;
  }

  /** While someone waits, look for stalled payloads once a second. */
  private watch(): void {
    if (this.timer || this.stallMs <= 0) return;
    this.timer = setInterval(() => this.reapStalled(), Math.min(1000, this.stallMs));
    this.timer.unref();
  }

  private unwatch(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  private reapStalled(): void {
    if (this.queue.length === 0) return this.unwatch();
    const now = Date.now();
    for (const r of [...this.held]) {
      if (r.lastProgress === undefined || now - r.lastProgress < this.stallMs) continue;
      const stall = r.onStall;
      r.onStall = undefined;
      r.lastProgress = undefined;
      stall?.();
    }
  }
}
