import { http } from '@/http/client'
import type { Role } from '@/auth/roles'

export interface Account {
  id: number
  username: string
  role: Role
  disabled: boolean
  totp_enabled: boolean
  created_at: string
  password_changed_at: string
}

export async function list(): Promise<Account[]> {
  return (await http.get<{ items: Account[] }>('/users')).items
}

export function create(username: string, role: Role, password: string): Promise<Account> {
  return http.post('/users', { username, role, password })
}

export function update(
  id: number,
  change: Partial<{ role: Role; disabled: boolean; password: string }>,
): Promise<Account> {
  return http.patch(`/users/${id}`, change)
}
