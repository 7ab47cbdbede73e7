/** The form's fields from a DICOM file's own tags (dcmjs, in the browser), so the
 * uploader does not type what the file already says. */
import type { UploadForm } from '@/api/uploads'

const HEAD_BYTES = 4 * 1024 * 1024

function text(value: unknown): string {
  if (Array.isArray(value)) return text(value[0])
  if (value && typeof value === 'object' && 'Alphabetic' in value) return String((value as { Alphabetic: unknown }).Alphabetic ?? '')
  return value === undefined || value === null ? '' : String(value)
}

export function isDicom(head: ArrayBuffer): boolean {
  const bytes = new Uint8Array(head, 128, 4)
  return head.byteLength >= 132 && String.fromCharCode(...bytes) === 'DICM'
}

export async function tagsOf(file: Blob): Promise<Partial<UploadForm> | null> {
  const head = await file.slice(0, HEAD_BYTES).arrayBuffer()
  if (head.byteLength < 132 || !isDicom(head)) return null
  try {
    // NOTE: loaded when the first file is picked: dcmjs is most of the page's weight.
    const { default: dcmjs } = await import('dcmjs')
    const read = dcmjs.data.DicomMessage.readFile(head, { ignoreErrors: true, untilTag: '7FE00010' })
    const ds = dcmjs.data.DicomMetaDictionary.naturalizeDataset(read.dict)
    const date = text(ds.StudyDate)
    return {
      patient_name: text(ds.PatientName),
      patient_id: text(ds.PatientID),
      study_date: /^\d{8}$/.test(date) ? `${date.slice(0, 4)}-${date.slice(4, 6)}-${date.slice(6)}` : '',
      modality: text(ds.Modality),
    }
  } catch {
    return null
  }
}
