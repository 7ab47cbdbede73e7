import { http } from '@/http/client'

export type Granularity = 'instance' | 'series' | 'study'

export interface RuleInput {
  name: string
  match?: Record<string, string | number | string[]>
  destinations: string[]
  enabled?: boolean
  granularity?: Granularity
  quiet_period_s?: number
}

export interface Rule extends RuleInput {
  id: number
  position: number
  destination_ids: number[]
  hits: number
  from_config: boolean
  created_at: string
  updated_at: string
}

export interface DryRun {
  instance_id: number
  sop_instance_uid: string
  rules: { id: number; name: string; matched: boolean }[]
  routes: {
    rule_id: number
    rule: string
    destination_id: number
    destination: string
    hold_key: string | null
    delay_s: number
  }[]
}

export async function list(): Promise<Rule[]> {
  return (await http.get<{ items: Rule[] }>('/rules')).items
}

export function create(input: RuleInput): Promise<Rule> {
  return http.post('/rules', input)
}

export function update(id: number, change: Partial<RuleInput>): Promise<Rule> {
  return http.patch(`/rules/${id}`, change)
}

export function remove(id: number): Promise<void> {
  return http.delete(`/rules/${id}`)
}

/** Every API rule's id, in the new order; returns all rules in order. */
export async function reorder(ids: number[]): Promise<Rule[]> {
  return (await http.put<{ items: Rule[] }>('/rules/order', { ids })).items
}

export function dryRun(sopInstanceUid: string): Promise<DryRun> {
  return http.post('/rules/dry-run', { sop_instance_uid: sopInstanceUid })
}
