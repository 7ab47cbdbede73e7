import { describe, expect, it } from 'vitest'
import { base64, sha1Header } from './checksum'
import { shouldRetry } from './runner'

describe('checksum', () => {
  it('is tus Upload-Checksum: sha1 and the base64 digest', async () => {
    // sha1("abc"), RFC 3174's first test vector.
    expect(await sha1Header(new TextEncoder().encode('abc').buffer as ArrayBuffer)).toBe('sha1 qZk+NkcGgWq6PiVxeFDCbJzQ2J0=')
    expect(base64(new Uint8Array([0, 255]).buffer)).toBe('AP8=')
  })
})

describe('shouldRetry', () => {
  it('retries what a later try can fix, only while online', () => {
    for (const status of [0, 500, 502, 409, 423, 429, 460]) expect(shouldRetry(status, true)).toBe(true)
    for (const status of [400, 403, 404, 410, 413, 415]) expect(shouldRetry(status, true)).toBe(false)
    expect(shouldRetry(0, false)).toBe(false)
  })
})
