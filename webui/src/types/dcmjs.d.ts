// dcmjs ships no type declarations; only what the upload page reads is declared.
declare module 'dcmjs' {
  interface DicomDict {
    dict: Record<string, unknown>
  }
  const dcmjs: {
    data: {
      DicomMessage: {
        readFile(buffer: ArrayBuffer, options?: { ignoreErrors?: boolean; untilTag?: string }): DicomDict
      }
      DicomMetaDictionary: {
        naturalizeDataset(dict: Record<string, unknown>): Record<string, unknown>
      }
    }
  }
  export default dcmjs
}
