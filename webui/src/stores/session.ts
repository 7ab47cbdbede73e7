import { defineStore } from 'pinia'
import { computed, ref } from 'vue'
import * as auth from '@/api/auth'
import type { User } from '@/api/auth'
import { can as roleCan, type Capability } from '@/auth/roles'
import { ApiError, http, type HttpClient } from '@/http/client'

/** Who is logged in. The session itself is an HttpOnly cookie; the CSRF token
 * lives only in memory and is fetched again from GET /me after a reload. */
export const useSessionStore = defineStore('session', () => {
  const user = ref<User | null>(null)
  /** Set when a request found the session gone: the login page says so. */
  const expired = ref(false)
  const restored = ref(false)

  function bind(client: HttpClient = http) {
    client.onUnauthenticated = () => {
      if (user.value) expired.value = true
      user.value = null
      client.csrfToken = null
    }
  }

  function signedIn(who: User, csrf: string | undefined) {
    user.value = { id: who.id, username: who.username, role: who.role }
    http.csrfToken = csrf ?? null
    expired.value = false
  }

  /** Password first; resolves to 'totp' when the user must send a code too. */
  async function login(username: string, password: string, totp?: string): Promise<'ok' | 'totp'> {
    try {
      const answer = await auth.login(username, password, totp)
      signedIn(answer.user, answer.csrf_token)
      return 'ok'
    } catch (err) {
      if (err instanceof ApiError && err.kind === 'totp-required') return 'totp'
      throw err
    }
  }

  /** After a page load: is the cookie still a session? */
  async function restore(): Promise<void> {
    try {
      const answer = await auth.me()
      signedIn(answer, answer.csrf_token)
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 401) throw err
      user.value = null
    } finally {
      restored.value = true
    }
  }

  async function logout(): Promise<void> {
    try {
      await auth.logout()
    } finally {
      user.value = null
      http.csrfToken = null
      expired.value = false
    }
  }

  const role = computed(() => user.value?.role ?? null)
  const can = (capability: Capability) => roleCan(role.value, capability)

  return { user, role, expired, restored, bind, login, restore, logout, can }
})
