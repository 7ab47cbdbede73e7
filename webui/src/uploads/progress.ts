/** Speed and time left of an upload, from the bytes sent over the last seconds. */
export const WINDOW_MS = 10_000

export class Rate {
  private samples: { at: number; bytes: number }[] = []

  /** Record that ``bytes`` in all have been sent at ``at`` (ms). */
  add(at: number, bytes: number): void {
    this.samples.push({ at, bytes })
    while (this.samples.length > 2 && at - this.samples[0].at > WINDOW_MS) this.samples.shift()
  }

  reset(): void {
    this.samples = []
  }

  /** Bytes per second over the window, or 0 before two samples. */
  get bytesPerSecond(): number {
    if (this.samples.length < 2) return 0
    const first = this.samples[0]
    const last = this.samples[this.samples.length - 1]
    const seconds = (last.at - first.at) / 1000
    return seconds > 0 ? Math.max(0, (last.bytes - first.bytes) / seconds) : 0
  }

  /** Seconds until ``total`` at the current speed, or null when unknown. */
  secondsLeft(sent: number, total: number): number | null {
    const speed = this.bytesPerSecond
    return speed > 0 ? Math.ceil((total - sent) / speed) : null
  }
}
