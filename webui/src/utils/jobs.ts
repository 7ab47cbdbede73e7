import type { JobState } from '@/api/queue'

export function jobTone(state: JobState): 'good' | 'bad' | 'warn' | 'neutral' {
  return ({ done: 'good', dead: 'bad', pending: 'warn', leased: 'neutral', cancelled: 'neutral' } as const)[state]
}

/** A DIMSE status (PS3.7, written in hex) or an HTTP status: both forms, since a
 * job's destination type is not in the row. 42752 -> "42752 (A700h)". */
export function formatStatus(status: number): string {
  return `${status} (${status.toString(16).toUpperCase().padStart(4, '0')}h)`
}
