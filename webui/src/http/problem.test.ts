import { describe, expect, it } from 'vitest'
import { formatWait, messageFor, problemKind, type Problem } from './problem'

const p = (kind: string, status: number, extra: Partial<Problem> = {}): Problem => ({
  type: `urn:dicom-gw:problem:${kind}`,
  title: extra.title ?? kind,
  status,
  ...extra,
})

describe('messageFor', () => {
  it('explains a lockout with the wait', () => {
    const msg = messageFor(429, p('too-many-requests', 429, { title: 'Too many failed logins', retry_after_s: 250 }))
    expect(msg).toBe('Too many failed logins: try again in 4 min 10 s.')
  })
  it('says a session ended', () => {
    expect(messageFor(401, p('unauthenticated', 401, { detail: 'log in first' }))).toMatch(/session has ended/)
  })
  it('uses the detail of wrong credentials', () => {
    expect(messageFor(401, p('invalid-credentials', 401, { detail: 'wrong user name or password' }))).toBe(
      'Wrong user name or password.',
    )
  })
  it('names the field of an invalid request', () => {
    expect(messageFor(422, p('invalid-request', 422, { detail: "'port' must be at most 65535", field: 'port' }))).toBe(
      "'port' must be at most 65535 (port)",
    )
  })
  it('gives the request id of a server error', () => {
    expect(messageFor(500, p('internal-error', 500, { request_id: 'abc123' }))).toMatch(/request id abc123/)
  })
  it('tells a role it may not', () => {
    expect(messageFor(403, p('forbidden', 403, { detail: 'the viewer role cannot do this' }))).toBe(
      'Your role does not allow this.',
    )
  })
  it('says the gateway is unreachable for status 0', () => {
    expect(messageFor(0, null)).toMatch(/cannot be reached/)
  })
  it('has words for statuses without a problem body', () => {
    expect(messageFor(404, null)).toBe('Not found.')
    expect(messageFor(502, null)).toMatch(/failed to answer/)
    expect(messageFor(418, null)).toBe('Request failed (HTTP 418).')
  })
})

describe('problemKind', () => {
  it('strips the URN prefix', () => {
    expect(problemKind(p('totp-required', 401))).toBe('totp-required')
    expect(problemKind(null)).toBe('')
  })
})

describe('formatWait', () => {
  it.each([
    [0, '0 s'],
    [1.2, '2 s'],
    [59, '59 s'],
    [60, '1 min'],
    [899, '14 min 59 s'],
    [3600, '1 h'],
    [5400, '1 h 30 min'],
  ])('%s s -> %s', (seconds, text) => {
    expect(formatWait(seconds)).toBe(text)
  })
})
