import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { json, problem, scripted, type Scripted } from '@/testing/server'
import { ApiError, HttpClient } from './client'

let server: Scripted
let client: HttpClient

beforeEach(async () => {
  server = await scripted()
  client = new HttpClient(server.base)
})
afterEach(() => server.close())

describe('HttpClient', () => {
  it('reads JSON and leaves empty query values out', async () => {
    server.on('GET', '/studies', (_req, res) => json(res, 200, { items: [], next_cursor: null }))
    const page = await client.get('/studies', { modality: 'CT', patient_id: '', cursor: undefined, limit: 50 })
    expect(page).toEqual({ items: [], next_cursor: null })
    expect(server.seen[0].url).toBe('/api/v1/studies?modality=CT&limit=50')
  })

  it('sends the CSRF token on state-changing requests only', async () => {
    server.on('GET', '/me', (_req, res) => json(res, 200, {}))
    server.on('POST', '/destinations/3/pause', (_req, res) => json(res, 200, { paused: true }))
    client.csrfToken = 'tok-1'
    await client.get('/me')
    await client.post('/destinations/3/pause')
    expect(server.seen[0].headers['x-csrf-token']).toBeUndefined()
    expect(server.seen[1].headers['x-csrf-token']).toBe('tok-1')
  })

  it('sends a JSON body and returns nothing for 204', async () => {
    server.on('POST', '/me/password', (_req, res) => {
      res.writeHead(204)
      res.end()
    })
    await expect(client.post('/me/password', { current_password: 'a', new_password: 'b' })).resolves.toBeUndefined()
    expect(server.seen[0].headers['content-type']).toBe('application/json')
    expect(JSON.parse(server.seen[0].body)).toEqual({ current_password: 'a', new_password: 'b' })
  })

  it('turns a problem into an ApiError with its kind, field and message', async () => {
    server.on('POST', '/destinations', (_req, res) =>
      problem(res, 422, 'invalid-request', { detail: "'port' must be at most 65535", field: 'port' }),
    )
    const err = await client.post('/destinations', {}).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(ApiError)
    const api = err as ApiError
    expect([api.status, api.kind, api.field]).toEqual([422, 'invalid-request', 'port'])
    expect(api.message).toBe("'port' must be at most 65535 (port)")
  })

  it('copes with an error that is not problem+json (a proxy page)', async () => {
    server.on('GET', '/queue/stats', (_req, res) => {
      res.writeHead(502, { 'Content-Type': 'text/html' })
      res.end('<html>Bad Gateway</html>')
    })
    const err = (await client.get('/queue/stats').catch((e: unknown) => e)) as ApiError
    expect([err.status, err.problem, err.kind]).toEqual([502, null, ''])
    expect(err.message).toMatch(/failed to answer/)
  })

  it('reports an unreachable gateway as status 0', async () => {
    await server.close()
    const err = (await client.get('/me').catch((e: unknown) => e)) as ApiError
    expect(err.status).toBe(0)
    expect(err.message).toMatch(/cannot be reached/)
    server = await scripted() // for afterEach
  })

  it('tells the session store when the session is gone, but not for a failed login', async () => {
    let gone = 0
    client.onUnauthenticated = () => (gone += 1)
    server.on('GET', '/studies', (_req, res) => problem(res, 401, 'unauthenticated'))
    server.on('POST', '/auth/login', (_req, res) => problem(res, 401, 'invalid-credentials'))
    await client.get('/studies').catch(() => undefined)
    await client.post('/auth/login', {}).catch(() => undefined)
    expect(gone).toBe(1)
  })

  it('returns an accepted error status as an answer', async () => {
    server.on('GET', '/health/ready', (_req, res) => json(res, 503, { status: 'unavailable', checks: {} }))
    await expect(client.request('GET', '/health/ready', { accept: [503] })).resolves.toEqual({
      status: 'unavailable',
      checks: {},
    })
  })

  it('builds download URLs with the same query rules', () => {
    expect(client.url('/instances/1.2.3/file', { version: undefined })).toBe(`${server.base}/instances/1.2.3/file`)
    expect(client.url('/stats/volume.csv', { range: '7d', by: 'modality' })).toBe(
      `${server.base}/stats/volume.csv?range=7d&by=modality`,
    )
  })
})
