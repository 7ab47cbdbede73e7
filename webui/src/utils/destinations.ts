import type { Destination } from '@/api/destinations'

/** A destination's state in one word, for a badge: paused, disabled, down (open
 * circuit), failing (recent failures, circuit still closed) or healthy. */
export function destinationState(d: Pick<Destination, 'enabled' | 'paused' | 'health'>): {
  tone: 'good' | 'bad' | 'warn' | 'neutral'
  text: string
} {
  if (!d.enabled) return { tone: 'neutral', text: 'disabled' }
  if (d.paused) return { tone: 'warn', text: 'paused' }
  if (d.health.circuit_state === 'open') return { tone: 'bad', text: 'unhealthy' }
  if (d.health.consecutive_failures > 0) return { tone: 'warn', text: 'failing' }
  return { tone: 'good', text: 'healthy' }
}
