import { http, type Page } from '@/http/client'

export interface StudySummary {
  study_instance_uid: string
  patient_id: string | null
  patient_name: string | null
  patient_birth_date: string | null
  patient_sex: string | null
  study_date: string | null
  study_time: string | null
  accession_number: string | null
  study_description: string | null
  modalities: string[]
  num_series: number
  num_instances: number
  size_bytes: number
  first_received_at: string
  last_received_at: string
}

export interface StudySeries {
  series_instance_uid: string
  modality: string | null
  series_number: number | null
  series_description: string | null
  num_instances: number
  first_received_at: string
  last_received_at: string
}

export interface StudyDetail extends StudySummary {
  referring_physician_name: string | null
  series: StudySeries[]
}

export interface StudyInstance {
  sop_instance_uid: string
  sop_class_uid: string
  instance_number: number | null
  number_of_frames: number | null
  transfer_syntax_uid: string
  size_bytes: number
  checksum: string
  source_ae: string | null
  received_at: string
  version: number
}

export interface StudySearch {
  patient_id?: string
  patient_name?: string
  fuzzy?: boolean
  accession_number?: string
  study_date_from?: string
  study_date_to?: string
  modality?: string
  source_ae?: string
  received_from?: string
  received_to?: string
  limit?: number
  cursor?: string
}

export function search(filters: StudySearch, signal?: AbortSignal): Promise<Page<StudySummary>> {
  // fuzzy needs patient_name; the API refuses it alone.
  const query = { ...filters, fuzzy: filters.fuzzy && filters.patient_name ? true : undefined }
  return http.get('/studies', query, signal)
}

export function get(studyUid: string): Promise<StudyDetail> {
  return http.get(`/studies/${encodeURIComponent(studyUid)}`)
}

export function instances(
  studyUid: string,
  seriesUid: string,
  cursor?: string,
): Promise<Page<StudyInstance>> {
  return http.get(
    `/studies/${encodeURIComponent(studyUid)}/series/${encodeURIComponent(seriesUid)}/instances`,
    { cursor, limit: 100 },
  )
}

export function remove(studyUid: string): Promise<void> {
  return http.delete(`/studies/${encodeURIComponent(studyUid)}`)
}

export function archiveUrl(studyUid: string): string {
  return http.url(`/studies/${encodeURIComponent(studyUid)}/archive`)
}

export function instanceFileUrl(sopInstanceUid: string, version?: number): string {
  return http.url(`/instances/${encodeURIComponent(sopInstanceUid)}/file`, { version })
}
