import { describe, expect, it } from 'vitest'
import { formatMatch, parseMatch } from './rules'

describe('rule match text', () => {
  it('round-trips', () => {
    const match = { modality: ['CT', 'MR'], calling_ae: 'glob:CT*', source_ip: 'cidr:10.0.0.0/8' }
    const text = formatMatch(match)
    expect(text).toBe('modality = CT | MR\ncalling_ae = glob:CT*\nsource_ip = cidr:10.0.0.0/8')
    expect(parseMatch(text)).toEqual({ match })
  })
  it('keeps a regular expression whole', () => {
    expect(parseMatch('modality = re:^(CT|MR)$')).toEqual({ match: { modality: 're:^(CT|MR)$' } })
  })
  it('is everything when empty', () => {
    expect(parseMatch('\n  \n')).toEqual({ match: {} })
    expect(formatMatch({})).toBe('')
  })
  it('names the bad line', () => {
    expect(parseMatch('modality = CT\nnonsense')).toEqual({ error: 'line 2: write "attribute = pattern"' })
    expect(parseMatch('= CT')).toHaveProperty('error')
  })
})
