/**
 * What survives a reload or a browser restart (IndexedDB, through Dexie): the
 * form being filled in, and each upload with its files (Blobs kept in the
 * browser's own storage) and their tus URLs, until the gateway has taken it in.
 */
import Dexie, { type Table } from 'dexie'
import type { Duplicate, UploadForm } from '@/api/uploads'

export interface StoredFile {
  name: string
  size: number
  blob: Blob
  tusUrl?: string
  done: boolean
}

export type LocalPhase = 'draft' | 'uploading' | 'completing' | 'duplicate' | 'done' | 'failed'

export interface UploadRecord {
  id?: number
  uploadId?: string
  chunkSize?: number
  form: UploadForm
  files: StoredFile[]
  phase: LocalPhase
  createdAt: number
  error?: string
  duplicates?: Duplicate[]
}

class UploadsDb extends Dexie {
  records!: Table<UploadRecord, number>

  constructor() {
    super('dicomgw-uploads')
    this.version(1).stores({ records: '++id, phase, uploadId' })
  }
}

export const db = new UploadsDb()

export function emptyForm(): UploadForm {
  return { patient_name: '', patient_id: '', study_date: '', modality: '', service_level: 'routine', notes: '' }
}

/** The draft (one at a time): the form and the files picked so far. */
export async function loadDraft(): Promise<UploadRecord> {
  const found = await db.records.where('phase').equals('draft').first()
  return found ?? { form: emptyForm(), files: [], phase: 'draft', createdAt: Date.now() }
}

/** A copy IndexedDB can store: plain objects (not Vue's proxies), Blobs as they are. */
export function plain(record: UploadRecord): UploadRecord {
  return {
    ...(record.id === undefined ? {} : { id: record.id }),
    uploadId: record.uploadId,
    chunkSize: record.chunkSize,
    form: { ...record.form },
    files: record.files.map((f) => ({ name: f.name, size: f.size, blob: f.blob, tusUrl: f.tusUrl, done: f.done })),
    phase: record.phase,
    createdAt: record.createdAt,
    error: record.error,
    duplicates: record.duplicates?.map((d) => ({ ...d })),
  }
}

export async function save(record: UploadRecord): Promise<number> {
  const id = await db.records.put(plain(record))
  record.id = id
  return id
}

export async function unfinished(): Promise<UploadRecord[]> {
  return db.records.where('phase').anyOf('uploading', 'completing', 'duplicate').toArray()
}
