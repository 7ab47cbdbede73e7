import { describe, expect, it } from 'vitest'
import { destinationErrors, destinationState, type DestinationDraft } from './destinations'

const dimse: DestinationDraft = {
  type: 'dimse', name: 'pacs-1', enabled: true, max_parallel: 2, ae_title: 'PACS', host: '10.0.0.5',
  port: 104, calling_ae_title: 'DICOMGW', tls: false, url: '', auth: 'none', username: '', secret: '',
  verify_tls: true,
}

describe('destinationErrors', () => {
  it('accepts a valid DIMSE destination', () => {
    expect(destinationErrors(dimse)).toEqual({})
  })
  it('names each bad field', () => {
    const errors = destinationErrors({ ...dimse, name: 'my pacs', ae_title: 'A\\B', port: 70000, host: '', max_parallel: 0 })
    expect(Object.keys(errors).sort()).toEqual(['ae_title', 'host', 'max_parallel', 'name', 'port'])
  })
  it('refuses an AE title of spaces or over 16 characters', () => {
    expect(destinationErrors({ ...dimse, ae_title: '   ' }).ae_title).toBeDefined()
    expect(destinationErrors({ ...dimse, ae_title: 'A'.repeat(17) }).ae_title).toBeDefined()
  })
  it('checks STOW-RS fields', () => {
    const stow = { ...dimse, type: 'stowrs' as const, url: 'ftp://x', auth: 'basic' as const }
    expect(Object.keys(destinationErrors(stow)).sort()).toEqual(['url', 'username'])
    expect(destinationErrors({ ...stow, url: 'https://pacs/dicom-web', username: 'u' })).toEqual({})
  })
})

describe('destinationState', () => {
  const health = { circuit_state: 'closed' as const, consecutive_failures: 0, last_success_at: null, last_failure_at: null, last_error: null }
  it('orders disabled, paused, open circuit, failing, healthy', () => {
    expect(destinationState({ enabled: false, paused: true, health }).text).toBe('disabled')
    expect(destinationState({ enabled: true, paused: true, health }).text).toBe('paused')
    expect(destinationState({ enabled: true, paused: false, health: { ...health, circuit_state: 'open' } }).text).toBe('unhealthy')
    expect(destinationState({ enabled: true, paused: false, health: { ...health, consecutive_failures: 1 } }).text).toBe('failing')
    expect(destinationState({ enabled: true, paused: false, health }).text).toBe('healthy')
  })
})
