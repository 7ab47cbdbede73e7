import { describe, expect, it } from 'vitest'
import {
  formatAgo,
  formatBytes,
  formatCount,
  formatDicomDate,
  formatDuration,
  formatPersonName,
  formatRate,
  shortUid,
} from './format'

describe('format', () => {
  it('formats sizes in powers of 1024', () => {
    expect(formatBytes(0)).toBe('0 B')
    expect(formatBytes(1023)).toBe('1023 B')
    expect(formatBytes(1536)).toBe('1.50 KB')
    expect(formatBytes(52 * 1024 * 1024)).toBe('52.0 MB')
    expect(formatBytes(3.5 * 1024 ** 4)).toBe('3.50 TB')
    expect(formatBytes(null)).toBe('—')
  })
  it('formats counts and rates', () => {
    expect(formatCount(1234567)).toBe('1,234,567')
    expect(formatCount(undefined)).toBe('—')
    expect(formatRate(0)).toBe('0')
    expect(formatRate(0.256)).toBe('0.26')
    expect(formatRate(12.34)).toBe('12.3')
    expect(formatRate(1234.4)).toBe('1,234')
  })
  it('formats durations as the two largest units', () => {
    expect(formatDuration(5)).toBe('5 s')
    expect(formatDuration(75)).toBe('1 min 15 s')
    expect(formatDuration(3600)).toBe('1 h')
    expect(formatDuration(90061)).toBe('1 d 1 h')
    expect(formatDuration(86400 + 59)).toBe('1 d')
    expect(formatDuration(null)).toBe('—')
  })
  it('says how long ago', () => {
    const now = new Date('2026-11-22T12:00:00Z')
    expect(formatAgo('2026-11-22T11:59:55Z', now)).toBe('just now')
    expect(formatAgo('2026-11-22T11:55:00Z', now)).toBe('5 min ago')
    expect(formatAgo(null, now)).toBe('never')
  })
  it('writes DICOM person names for people', () => {
    expect(formatPersonName('DOE^JOHN')).toBe('DOE, JOHN')
    expect(formatPersonName('DOE^JOHN^A^DR^JR')).toBe('DOE, DR JOHN A JR')
    expect(formatPersonName('YAMADA^TARO=山田^太郎')).toBe('YAMADA, TARO')
    expect(formatPersonName('ANON')).toBe('ANON')
    expect(formatPersonName(null)).toBe('—')
  })
  it('writes DICOM and ISO dates the same way', () => {
    expect(formatDicomDate('20240102')).toBe('2024-01-02')
    expect(formatDicomDate('2024-01-02')).toBe('2024-01-02')
    expect(formatDicomDate('2024')).toBe('2024')
  })
  it('shortens long UIDs in the middle', () => {
    expect(shortUid('1.2.3')).toBe('1.2.3')
    expect(shortUid('1.2.840.10008.5.1.4.1.1.2.99999', 4)).toBe('1.2.…9999')
  })
})
