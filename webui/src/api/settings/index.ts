import { http } from '@/http/client'

/** The effective configuration, secrets masked (GET /settings). */
export type Settings = Record<string, unknown>

export function get(): Promise<Settings> {
  return http.get('/settings')
}

/** A certificate the gateway watches (GET /settings/certificate). */
export interface InstalledCertificate {
  label: 'https' | 'dicom'
  path: string
  installed: boolean
  /** Set when the file cannot be read as a certificate. */
  problem?: string
  subject?: string
  names?: string[]
  issuer?: string
  not_before?: string
  not_after?: string
  days_left?: number
  expires_soon?: boolean
}

export interface Certificates {
  certificates: InstalledCertificate[]
  expiry_warning_days: number
  /** What makes nginx (and the DICOM TLS listener) present a new certificate. */
  reload: string
}

/** PEM text: the certificate (maybe followed by its chain), the unencrypted key, intermediates. */
export interface CertificateUpload {
  certificate: string
  key: string
  chain?: string
}

export function certificates(): Promise<Certificates> {
  return http.get('/settings/certificate')
}

export function installCertificate(upload: CertificateUpload): Promise<{ certificate: InstalledCertificate; reload: string }> {
  return http.post('/settings/certificate', upload)
}
