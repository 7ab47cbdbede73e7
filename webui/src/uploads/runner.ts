/**
 * One upload on its way: the session API for the upload and its completion, tus
 * (tus-js-client) for each file's bytes, four files at a time, each PATCH with
 * its SHA-1. It pauses when the browser goes offline and resumes when it comes
 * back; after a reload it resumes from what IndexedDB kept (tus asks the
 * gateway where each file stopped).
 */
import { reactive } from 'vue'
import { Upload, type DetailedError } from 'tus-js-client'
import { completeUpload, initUpload, type Duplicate } from '@/api/uploads'
import { ApiError, http } from '@/http/client'
import { ChecksumHttpStack } from './checksum'
import { save, type UploadRecord } from './db'
import { Rate } from './progress'

export const PARALLEL_FILES = 4
/** Waits between retries of a chunk; past the last, the upload pauses with an error. */
export const RETRY_DELAYS = [0, 1000, 3000, 5000, 10_000, 20_000, 30_000, 60_000]

export type Phase = 'idle' | 'uploading' | 'paused' | 'offline' | 'completing' | 'duplicate' | 'done' | 'failed'

interface FileProgress {
  name: string
  size: number
  sent: number
  done: boolean
}

/** tus-js-client's own rule, plus 460 (a chunk damaged on the way: send it again). */
export function shouldRetry(status: number, online: boolean): boolean {
  if (!online) return false
  return status === 0 || status >= 500 || status === 409 || status === 423 || status === 429 || status === 460
}

export class UploadRun {
  readonly state = reactive({
    phase: 'idle' as Phase,
    sent: 0,
    total: 0,
    bytesPerSecond: 0,
    secondsLeft: null as number | null,
    files: [] as FileProgress[],
    error: '',
    duplicates: [] as Duplicate[],
  })
  private readonly active = new Map<number, Upload>()
  private readonly rate = new Rate()
  private readonly stack = new ChecksumHttpStack()
  private readonly onOffline = () => this.suspend('offline')
  private readonly onOnline = () => {
    if (this.state.phase === 'offline') void this.start()
  }

  constructor(readonly record: UploadRecord) {
    this.state.files = record.files.map((f) => ({ name: f.name, size: f.size, sent: f.done ? f.size : 0, done: f.done }))
    this.state.total = record.files.reduce((n, f) => n + f.size, 0)
    this.state.duplicates = record.duplicates ?? []
    this.state.phase = record.phase === 'duplicate' ? 'duplicate' : 'idle'
    window.addEventListener('offline', this.onOffline)
    window.addEventListener('online', this.onOnline)
  }

  dispose(): void {
    window.removeEventListener('offline', this.onOffline)
    window.removeEventListener('online', this.onOnline)
    for (const upload of this.active.values()) void upload.abort()
    this.active.clear()
  }

  /** Start or resume: the session if there is none yet, then every file not done. */
  async start(): Promise<void> {
    if (!navigator.onLine) {
      this.state.phase = 'offline'
      return
    }
    this.state.error = ''
    const record = this.record
    if (!record.uploadId) {
      try {
        const made = await initUpload(record.form, record.files.map((f) => ({ name: f.name, size: f.size })))
        record.uploadId = made.upload_id
        record.chunkSize = made.chunk_size
        made.files.forEach((f, n) => (record.files[n].tusUrl = f.tus_url))
        record.phase = 'uploading'
        await save(record)
      } catch (err) {
        return this.fail(err)
      }
    }
    if (record.phase === 'completing') return this.complete(false)
    this.state.phase = 'uploading'
    this.rate.reset()
    this.pump()
  }

  /** Stop sending (the bytes acknowledged so far stay on the gateway). */
  pause(): void {
    this.suspend('paused')
  }

  private suspend(phase: 'paused' | 'offline'): void {
    if (this.state.phase !== 'uploading') return
    this.state.phase = phase
    for (const upload of this.active.values()) void upload.abort()
    this.active.clear()
  }

  private pump(): void {
    if (this.state.phase !== 'uploading') return
    const waiting = this.record.files
      .map((file, index) => ({ file, index }))
      .filter(({ file, index }) => !file.done && !this.active.has(index))
    for (const { index } of waiting.slice(0, PARALLEL_FILES - this.active.size)) this.send(index)
    if (this.active.size === 0 && this.record.files.every((f) => f.done)) void this.complete(false)
  }

  private send(index: number): void {
    const file = this.record.files[index]
    const upload = new Upload(file.blob, {
      uploadUrl: file.tusUrl,
      chunkSize: this.record.chunkSize,
      retryDelays: RETRY_DELAYS,
      headers: http.csrfToken ? { 'X-CSRF-Token': http.csrfToken } : {},
      httpStack: this.stack,
      storeFingerprintForResuming: false,
      onShouldRetry: (err: DetailedError) => shouldRetry(err.originalResponse?.getStatus() ?? 0, navigator.onLine),
      onProgress: (sent) => this.progress(index, sent),
      onSuccess: () => {
        this.active.delete(index)
        file.done = true
        this.state.files[index].done = true
        this.progress(index, file.size)
        void save(this.record).then(() => this.pump())
      },
      onError: (err) => {
        this.active.delete(index)
        if (this.state.phase !== 'uploading') return
        if (!navigator.onLine) return this.suspend('offline')
        this.fail(err)
      },
    })
    this.active.set(index, upload)
    upload.start()
  }

  private progress(index: number, sent: number): void {
    this.state.files[index].sent = sent
    this.state.sent = this.state.files.reduce((n, f) => n + (f.done ? f.size : f.sent), 0)
    this.rate.add(performance.now(), this.state.sent)
    this.state.bytesPerSecond = this.rate.bytesPerSecond
    this.state.secondsLeft = this.rate.secondsLeft(this.state.sent, this.state.total)
  }

  /** Every byte is in: ask the gateway to take the upload in (``force`` past a duplicate). */
  async complete(force: boolean): Promise<void> {
    const record = this.record
    this.state.phase = 'completing'
    record.phase = 'completing'
    await save(record)
    try {
      await completeUpload(record.uploadId!, force)
    } catch (err) {
      if (err instanceof ApiError && err.kind === 'duplicate') {
        record.phase = 'duplicate'
        record.duplicates = (err.problem?.duplicates as Duplicate[] | undefined) ?? []
        this.state.duplicates = record.duplicates
        this.state.phase = 'duplicate'
        await save(record)
        return
      }
      if (err instanceof ApiError && err.status === 0) {
        // Offline at the last step: completed when the browser is back.
        this.state.phase = 'offline'
        return
      }
      return this.fail(err)
    }
    record.phase = 'done'
    this.state.phase = 'done'
    // The gateway has the files now: the browser's copies go.
    record.files = record.files.map((f) => ({ ...f, blob: new Blob() }))
    await save(record)
    this.dispose()
  }

  private fail(err: unknown): void {
    this.state.phase = 'failed'
    this.state.error = err instanceof Error ? err.message : String(err)
    this.record.error = this.state.error
    for (const upload of this.active.values()) void upload.abort()
    this.active.clear()
  }
}
