import { http } from '@/http/client'

/** The study an upload files images and PDFs under (DICOM files carry their own). */
export interface UploadForm {
  patient_name: string
  patient_id: string
  study_date: string
  modality: string
  service_level: string
  notes: string
}

export interface InitAnswer {
  upload_id: string
  chunk_size: number
  expires_at: string
  files: { index: number; name: string; size: number; chunks: number; tus_url: string }[]
}

export type UploadState = 'uploading' | 'processing' | 'received' | 'forwarded' | 'failed' | 'cancelled'

export interface UploadStatus {
  upload_id: string
  state: UploadState
  user: string
  form: Partial<UploadForm>
  created_at: string
  completed_at: string | null
  error: string | null
  bytes_total: number
  bytes_received: number
  file_count: number
  instances: number
  forwarding: { jobs: number; done: number; pending: number; dead: number }
}

export interface Duplicate {
  study_instance_uid?: string
  upload_id?: string
  received_at: string
  by: string | null
}

export function initUpload(form: UploadForm, files: { name: string; size: number }[]): Promise<InitAnswer> {
  const filled = Object.fromEntries(Object.entries(form).filter(([, v]) => v.trim() !== ''))
  return http.post('/upload/init', { ...filled, files })
}

export function completeUpload(id: string, force = false): Promise<UploadStatus> {
  return http.request('POST', `/upload/${encodeURIComponent(id)}/complete`, { query: { force: force || undefined } })
}

export function uploadStatus(id: string): Promise<UploadStatus> {
  return http.get(`/upload/${encodeURIComponent(id)}/status`)
}

export async function myUploads(): Promise<UploadStatus[]> {
  return (await http.get<{ items: UploadStatus[] }>('/upload', { limit: 50 })).items
}

export function cancelUpload(id: string): Promise<void> {
  return http.delete(`/upload/${encodeURIComponent(id)}`)
}
