import { describe, expect, it } from 'vitest'
import { formatMatch, parseMatch } from './rules'

describe('rule match text', () => {
  it('round-trips', () => {
    const match = { Modality: ['CT', 'MR'], CallingAETitle: 'glob:CT*', SourceIP: 'cidr:10.0.0.0/8' }
    const text = formatMatch(match)
    expect(text).toBe('Modality = CT | MR\nCallingAETitle = glob:CT*\nSourceIP = cidr:10.0.0.0/8')
    expect(parseMatch(text)).toEqual({ match })
  })
  it('keeps a regular expression whole', () => {
    expect(parseMatch('Modality = re:^(CT|MR)$')).toEqual({ match: { Modality: 're:^(CT|MR)$' } })
  })
  it('is everything when empty', () => {
    expect(parseMatch('\n  \n')).toEqual({ match: {} })
    expect(formatMatch({})).toBe('')
  })
  it('names the bad line', () => {
    expect(parseMatch('Modality = CT\nnonsense')).toEqual({ error: 'line 2: write "Attribute = pattern"' })
    expect(parseMatch('= CT')).toHaveProperty('error')
  })
})
