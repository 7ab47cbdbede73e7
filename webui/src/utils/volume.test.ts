import { describe, expect, it } from 'vitest'
import type { Volume } from '@/api/stats'
import { currentRate, volumeTotal } from './volume'

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
  it('rates the newest bucket over the part of it that has passed', () => {
    const rate = currentRate(volume, new Date('2026-11-22T11:03:00Z'))
    expect(rate.value).toBe(180)
    expect(rate.perSecond).toBeCloseTo(1)
  })
  it('is zero without buckets', () => {
    expect(currentRate({ ...volume, buckets: [], series: {} })).toEqual({ value: 0, perSecond: 0 })
  })
})
