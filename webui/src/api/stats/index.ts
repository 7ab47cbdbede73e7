import { http } from '@/http/client'

export type Range = '1d' | '7d' | '30d' | '90d'
export type Metric = 'received_instances' | 'received_bytes' | 'forwarded_instances' | 'forwarded_bytes'
export type Dimension = 'total' | 'modality' | 'source_ae' | 'destination'

export interface Volume {
  range: Range
  metric: Metric
  by: Dimension
  granularity: 'hour' | 'day'
  buckets: string[]
  series: Record<string, number[]>
}

export function volume(range: Range, metric: Metric, by: Dimension = 'total'): Promise<Volume> {
  return http.get('/stats/volume', { range, metric, by })
}

export function volumeCsvUrl(range: Range, metric: Metric, by: Dimension = 'total'): string {
  return http.url('/stats/volume.csv', { range, metric, by })
}

/** Running totals since the gateway started, and associations open now (GET /stats/live). */
export interface Live {
  /** 'none': the API has no metrics directory to read, every figure is 0. */
  source: 'multiprocess' | 'none'
  /** The server's wall time of the reading, ms since 1970. */
  at_ms: number
  associations_active: number
  received_instances: number
  received_bytes: number
  forwarded_instances: number
  forwarded_bytes: number
}

export function live(): Promise<Live> {
  return http.get('/stats/live')
}
