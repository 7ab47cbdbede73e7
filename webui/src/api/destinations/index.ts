import { http } from '@/http/client'

export interface QueueCounts {
  pending: number
  leased: number
  done: number
  dead: number
  cancelled: number
  oldest_pending_age_s: number | null
}

export interface Health {
  circuit_state: 'closed' | 'open'
  consecutive_failures: number
  last_success_at: string | null
  last_failure_at: string | null
  last_error: string | null
}

/** The settings of a destination as the config file writes them (docs/configuration.md). */
export interface DimseSettings {
  type: 'dimse'
  name: string
  enabled?: boolean
  max_parallel?: number
  ae_title: string
  host: string
  port: number
  calling_ae_title?: string
  max_pdu?: number
  tls?: boolean
  connect_timeout_s?: number
  network_timeout_s?: number
}

export interface StowSettings {
  type: 'stowrs'
  name: string
  enabled?: boolean
  max_parallel?: number
  url: string
  auth?: 'none' | 'basic' | 'bearer'
  username?: string | null
  password?: string | null
  token?: string | null
  verify_tls?: boolean
  instances_per_request?: number
  timeout_s?: number
}

export type DestinationInput = DimseSettings | StowSettings

export type Destination = DestinationInput & {
  id: number
  enabled: boolean
  max_parallel: number
  paused: boolean
  from_config: boolean
  password_set?: boolean
  token_set?: boolean
  health: Health
  queue: QueueCounts
  created_at: string
  updated_at: string
}

export interface ProbeResult {
  ok: boolean
  rtt_ms: number | null
  error: string | null
}

export async function list(): Promise<Destination[]> {
  return (await http.get<{ items: Destination[] }>('/destinations')).items
}

export function get(id: number): Promise<Destination> {
  return http.get(`/destinations/${id}`)
}

export function create(input: DestinationInput): Promise<Destination> {
  return http.post('/destinations', input)
}

export function update(id: number, change: Partial<DestinationInput>): Promise<Destination> {
  return http.patch(`/destinations/${id}`, change)
}

export function remove(id: number): Promise<void> {
  return http.delete(`/destinations/${id}`)
}

export function pause(id: number): Promise<Destination> {
  return http.post(`/destinations/${id}/pause`)
}

export function resume(id: number): Promise<Destination> {
  return http.post(`/destinations/${id}/resume`)
}

export function echo(id: number): Promise<ProbeResult> {
  return http.post(`/destinations/${id}/echo`)
}

export async function retryDead(id: number): Promise<number> {
  return (await http.post<{ requeued: number }>(`/destinations/${id}/retry-dead`)).requeued
}

/** New jobs for every stored instance of a study (or a series); returns how many. */
export async function replay(
  id: number,
  target: { study_instance_uid: string } | { series_instance_uid: string },
): Promise<number> {
  return (await http.post<{ created: number }>(`/destinations/${id}/replay`, target)).created
}
