/** Rates from two readings of the gateway's running totals (GET /stats/live). */
import type { Live } from '@/api/stats'

export interface LiveRates {
  received: { instances: number; bytes: number }
  forwarded: { instances: number; bytes: number }
}

const TOTALS = ['received_instances', 'received_bytes', 'forwarded_instances', 'forwarded_bytes'] as const

/** Per second between `before` and `after`; null when they give none: fewer than
 * two readings, no metrics source, no time between them, or a total that went
 * down (the gateway restarted in between: the next pair is good again). */
export function liveRates(before: Live | null, after: Live | null): LiveRates | null {
  if (!before || !after || before.source === 'none' || after.source === 'none') return null
  const seconds = (after.at_ms - before.at_ms) / 1000
  if (!(seconds > 0)) return null
  if (TOTALS.some((key) => after[key] < before[key])) return null
  const rate = (key: (typeof TOTALS)[number]) => (after[key] - before[key]) / seconds
  return {
    received: { instances: rate('received_instances'), bytes: rate('received_bytes') },
    forwarded: { instances: rate('forwarded_instances'), bytes: rate('forwarded_bytes') },
  }
}
