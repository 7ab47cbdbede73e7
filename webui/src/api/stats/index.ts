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
