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

/** What the destination form edits (both types' fields; the secret is write-only). */
export interface DestinationDraft {
  type: 'dimse' | 'stowrs'
  name: string
  enabled: boolean
  max_parallel: number
  ae_title: string
  host: string
  port: number
  calling_ae_title: string
  tls: boolean
  url: string
  auth: 'none' | 'basic' | 'bearer'
  username: string
  secret: string
  verify_tls: boolean
}

// PS3.5 6.2: 1-16 characters of the default repertoire, no backslash or control
// characters, not only spaces (the config's own check).
const AE_TITLE = /^[ -[\]-~]*[!-[\]-~][ -[\]-~]*$/

/** The form's problems by field, checked as the config file's are, before sending. */
export function destinationErrors(d: DestinationDraft): Partial<Record<keyof DestinationDraft, string>> {
  const errors: Partial<Record<keyof DestinationDraft, string>> = {}
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(d.name)) errors.name = 'Letters, digits, _ . - only (1-64)'
  if (!Number.isInteger(d.max_parallel) || d.max_parallel < 1 || d.max_parallel > 64)
    errors.max_parallel = 'A whole number from 1 to 64'
  if (d.type === 'dimse') {
    if (d.ae_title.length > 16 || !AE_TITLE.test(d.ae_title)) errors.ae_title = '1-16 characters, no backslash'
    if (d.calling_ae_title.length > 16 || !AE_TITLE.test(d.calling_ae_title))
      errors.calling_ae_title = '1-16 characters, no backslash'
    if (!d.host) errors.host = 'Required'
    if (!Number.isInteger(d.port) || d.port < 1 || d.port > 65535) errors.port = 'A port from 1 to 65535'
  } else {
    if (!/^https?:\/\/\S+$/.test(d.url)) errors.url = 'An http:// or https:// URL'
    if (d.auth === 'basic' && !d.username) errors.username = 'Required for basic authentication'
  }
  return errors
}
