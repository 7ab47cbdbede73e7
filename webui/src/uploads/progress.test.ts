import { describe, expect, it } from 'vitest'
import { Rate } from './progress'

describe('Rate', () => {
  it('is unknown before two samples, then bytes over seconds', () => {
    const rate = new Rate()
    expect(rate.bytesPerSecond).toBe(0)
    expect(rate.secondsLeft(0, 100)).toBeNull()
    rate.add(0, 0)
    rate.add(2000, 1000)
    expect(rate.bytesPerSecond).toBe(500)
    expect(rate.secondsLeft(1000, 6000)).toBe(10)
  })
  it('forgets samples older than its window', () => {
    const rate = new Rate()
    rate.add(0, 0)
    rate.add(1000, 10_000)
    rate.add(20_000, 10_000)
    rate.add(21_000, 11_000)
    expect(rate.bytesPerSecond).toBe(1000)
  })
})
