import { http, type Page } from '@/http/client'

export interface AuditRow {
  id: number
  at: string
  actor: string
  action: string
  target: string | null
  outcome: 'success' | 'failure'
  event_id: string | null
  source_ip: string | null
  request_id: string | null
  detail: Record<string, unknown>
}

export interface AuditFilter {
  actor?: string
  action?: string
  target?: string
  outcome?: 'success' | 'failure' | ''
  from?: string
  to?: string
  cursor?: string
}

export function search(filter: AuditFilter, signal?: AbortSignal): Promise<Page<AuditRow>> {
  return http.get('/audit', { ...filter }, signal)
}

export function csvUrl(filter: AuditFilter): string {
  return http.url('/audit.csv', { ...filter, cursor: undefined })
}
