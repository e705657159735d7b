// Every timer the simulator starts on behalf of a request (fault delays, slow bodies, Prefer: wait, hold_ms) goes
// through one TimerSet, so close() can clear them all and a closed simulator leaves nothing behind on the event loop.
import type { ServerResponse } from 'node:http';

// setTimeout silently turns larger values into 1 ms (with a warning); a fault of "forever" should mean forever-ish.
const MAX_TIMEOUT_MS = 2 ** 31 - 1;

export class TimerSet {
  private readonly live = new Set<NodeJS.Timeout>();

  after(ms: number, fn: () => void): NodeJS.Timeout {
    const t = setTimeout(() => {
      this.live.delete(t);
      fn();
    }, Math.min(Math.max(0, ms), MAX_TIMEOUT_MS));
    this.live.add(t);
    return t;
  }

  cancel(t: NodeJS.Timeout): void {
    clearTimeout(t);
    this.live.delete(t);
  }

  clear(): void {
    for (const t of this.live) clearTimeout(t);
    this.live.clear();
  }

  /**
   * Waits `ms` unless the response closes first (client gone, or the simulator force-closing its connections), so a
   * held request never outlives its socket. Resolves true when the full time passed.
   */
  pause(ms: number, res: ServerResponse): Promise<boolean> {
    if (ms <= 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const onClose = () => {
        this.cancel(t);
        resolve(false);
      };
      const t = this.after(ms, () => {
        res.off('close', onClose);
        resolve(true);
      });
      res.once('close', onClose);
    });
  }
}
