import { http } from '@/http/client'

export interface Check {
  ok: boolean
  error?: string
  used_percent?: number
  free_bytes?: number
  high_watermark_percent?: number
  oldest_due_s?: number
  port?: number
}

export interface Readiness {
  status: 'ok' | 'unavailable'
  checks: Record<string, Check>
}

/** GET /health/ready; a 503 carries the failing checks, so it is an answer too. */
export function ready(): Promise<Readiness> {
  return http.request('GET', '/health/ready', { accept: [503] })
}
