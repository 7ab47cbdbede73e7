import { http, type Page } from '@/http/client'
import type { QueueCounts } from '@/api/destinations'

export type JobState = 'pending' | 'leased' | 'done' | 'dead' | 'cancelled'
export const JOB_STATES: JobState[] = ['pending', 'leased', 'done', 'dead', 'cancelled']

export interface Job {
  id: number
  state: JobState
  destination_id: number
  destination: string
  rule_id: number | null
  rule: string | null
  instance_id: number
  sop_instance_uid: string
  series_instance_uid: string
  study_instance_uid: string
  attempts: number
  permanent_failures?: number
  last_status: number | null
  last_error: string | null
  warning?: string | null
  converted_to?: string | null
  due_at: string
  created_at: string
  updated_at?: string
  finished_at?: string | null
}

export interface Attempt {
  id: number
  at: string
  outcome: 'delivered' | 'transient' | 'permanent'
  status: number | null
  message: string | null
  worker: string | null
}

export interface JobFilter {
  state?: JobState | ''
  destination_id?: number | ''
  study_instance_uid?: string
  cursor?: string
  limit?: number
}

export type DestinationQueue = QueueCounts & {
  destination_id: number
  destination: string
  enabled: boolean
  paused: boolean
  circuit_state: 'closed' | 'open'
}

export function jobs(filter: JobFilter, signal?: AbortSignal): Promise<Page<Job>> {
  return http.get('/queue/jobs', { ...filter }, signal)
}

export function job(id: number): Promise<Job & { attempt_history: Attempt[] }> {
  return http.get(`/queue/jobs/${id}`)
}

export function retry(id: number): Promise<Job> {
  return http.post(`/queue/jobs/${id}/retry`)
}

export function cancel(id: number): Promise<Job> {
  return http.post(`/queue/jobs/${id}/cancel`)
}

export async function stats(): Promise<DestinationQueue[]> {
  return (await http.get<{ items: DestinationQueue[] }>('/queue/stats')).items
}
