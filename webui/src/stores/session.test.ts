import { createPinia, setActivePinia } from 'pinia'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { ApiError, http } from '@/http/client'
import { json, problem, scripted, type Scripted } from '@/testing/server'
import { useSessionStore } from './session'

let server: Scripted
const admin = { id: 1, username: 'admin', role: 'admin' }

beforeEach(async () => {
  server = await scripted()
  http.base = server.base
  http.csrfToken = null
  setActivePinia(createPinia())
  useSessionStore().bind()
})
afterEach(() => server.close())

describe('session store', () => {
  it('logs in, keeps the CSRF token for later requests, and logs out', async () => {
    server.on('POST', '/auth/login', (_req, res) => json(res, 200, { user: admin, csrf_token: 'c1' }))
    server.on('POST', '/auth/logout', (_req, res) => {
      res.writeHead(204)
      res.end()
    })
    const session = useSessionStore()
    expect(await session.login('admin', 'pw')).toBe('ok')
    expect(session.user?.username).toBe('admin')
    expect(session.can('manageUsers')).toBe(true)
    await session.logout()
    expect(server.seen[1].headers['x-csrf-token']).toBe('c1')
    expect(session.user).toBeNull()
    expect(http.csrfToken).toBeNull()
  })

  it('asks for the second factor, then sends it', async () => {
    server.on('POST', '/auth/login', (req, res) => {
      const body = JSON.parse(req.body)
      if (!body.totp) problem(res, 401, 'totp-required')
      else json(res, 200, { user: { ...admin, role: 'viewer' }, csrf_token: 'c2' })
    })
    const session = useSessionStore()
    expect(await session.login('v', 'pw')).toBe('totp')
    expect(session.user).toBeNull()
    expect(await session.login('v', 'pw', '123456')).toBe('ok')
    expect(JSON.parse(server.seen[1].body)).toEqual({ username: 'v', password: 'pw', totp: '123456' })
    expect(session.can('operate')).toBe(false)
    expect(session.can('view')).toBe(true)
  })

  it('passes a lockout on with the wait in its message', async () => {
    server.on('POST', '/auth/login', (_req, res) =>
      problem(res, 429, 'too-many-requests', { title: 'Too many failed logins', retry_after_s: 61 }),
    )
    const err = (await useSessionStore().login('admin', 'x').catch((e: unknown) => e)) as ApiError
    expect(err.message).toBe('Too many failed logins: try again in 1 min 1 s.')
  })

  it('restores a session after a reload, CSRF token included', async () => {
    server.on('GET', '/me', (_req, res) => json(res, 200, { ...admin, csrf_token: 'c3' }))
    const session = useSessionStore()
    await session.restore()
    expect([session.restored, session.user?.username, http.csrfToken]).toEqual([true, 'admin', 'c3'])
  })

  it('finds no session without failing', async () => {
    server.on('GET', '/me', (_req, res) => problem(res, 401, 'unauthenticated'))
    const session = useSessionStore()
    await session.restore()
    expect([session.restored, session.user, session.expired]).toEqual([true, null, false])
  })

  it('marks the session expired when a request finds it gone', async () => {
    server.on('POST', '/auth/login', (_req, res) => json(res, 200, { user: admin, csrf_token: 'c4' }))
    server.on('GET', '/studies', (_req, res) => problem(res, 401, 'unauthenticated'))
    const session = useSessionStore()
    await session.login('admin', 'pw')
    await http.get('/studies').catch(() => undefined)
    expect([session.user, session.expired, http.csrfToken]).toEqual([null, true, null])
  })
})
