import { http } from '@/http/client'

/** The effective configuration, secrets masked (GET /settings). */
export type Settings = Record<string, unknown>

export function get(): Promise<Settings> {
  return http.get('/settings')
}
