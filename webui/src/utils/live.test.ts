import { describe, expect, it } from 'vitest'
import type { Live } from '@/api/stats'
import { liveRates } from './live'

const first: Live = {
  source: 'multiprocess',
  at_ms: 1_000_000,
  associations_active: 2,
  received_instances: 100,
  received_bytes: 50_000_000,
  forwarded_instances: 40,
  forwarded_bytes: 20_000_000,
}
const fiveSecondsLater: Live = {
  ...first,
  at_ms: 1_005_000,
  received_instances: 150,
  received_bytes: 60_485_760,
  forwarded_instances: 45,
  forwarded_bytes: 20_000_000,
}

describe('liveRates', () => {
  it('divides what each total grew by by the time between the readings', () => {
    expect(liveRates(first, fiveSecondsLater)).toEqual({
      received: { instances: 10, bytes: 2_097_152 },
      forwarded: { instances: 1, bytes: 0 },
    })
  })
  it('has none until there are two readings', () => {
    expect(liveRates(null, first)).toBeNull()
    expect(liveRates(first, null)).toBeNull()
  })
  it('has none without time between them (or with the clock stepped back)', () => {
    expect(liveRates(first, { ...fiveSecondsLater, at_ms: first.at_ms })).toBeNull()
    expect(liveRates(first, { ...fiveSecondsLater, at_ms: first.at_ms - 1 })).toBeNull()
  })
  it('has none across a restart, when a total went down', () => {
    expect(liveRates(fiveSecondsLater, { ...first, at_ms: 1_010_000, received_instances: 3 })).toBeNull()
  })
  it('has none when the API reads no metrics', () => {
    const none: Live = { ...first, source: 'none' }
    expect(liveRates(none, { ...none, at_ms: first.at_ms + 5000 })).toBeNull()
  })
})
