import { describe, expect, it } from 'vitest'
import type { Volume } from '@/api/stats'
import { newestBucket, volumeTotal } from './volume'

const volume: Volume = {
  range: '1d',
  metric: 'received_instances',
  by: 'modality',
  granularity: 'hour',
  buckets: ['2026-11-22T10:00:00Z', '2026-11-22T11:00:00Z'],
  series: { CT: [10, 120], MR: [5, 60] },
}

describe('volume', () => {
  it('sums every series', () => {
    expect(volumeTotal(volume)).toBe(195)
  })
  it('sums the newest bucket of every series', () => {
    expect(newestBucket(volume)).toBe(180)
  })
  it('is zero without buckets', () => {
    expect(newestBucket({ ...volume, buckets: [], series: {} })).toBe(0)
  })
})
