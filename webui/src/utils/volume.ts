/** Reading the dashboard's volume series (GET /stats/volume). */
import type { Volume } from '@/api/stats'

/** An hour bucket as "14:00" (with the day when it is not today), a day as "11-22". */
export function bucketLabel(iso: string, granularity: 'hour' | 'day', now: Date = new Date()): string {
  const d = new Date(iso)
  const day = `${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')}`
  if (granularity === 'day') return day
  const hour = `${String(d.getHours()).padStart(2, '0')}:00`
  return d.toDateString() === now.toDateString() ? hour : `${day} ${hour}`
}

/** Sum of every series over every bucket. */
export function volumeTotal(volume: Volume): number {
  return Object.values(volume.series).reduce((sum, values) => sum + values.reduce((a, b) => a + b, 0), 0)
}

/** The newest bucket's value, all series together: "this hour (or day) so far". */
export function newestBucket(volume: Volume): number {
  const last = volume.buckets.length - 1
  return Object.values(volume.series).reduce((sum, values) => sum + (values[last] ?? 0), 0)
}
