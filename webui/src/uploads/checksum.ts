/**
 * tus's checksum extension for tus-js-client, which has none: each PATCH carries
 * the SHA-1 of its body (WebCrypto), so a chunk damaged on the way is refused
 * (460) and sent again instead of being stored. WebCrypto exists only in a
 * secure context (HTTPS, or localhost); elsewhere chunks go without.
 */
import { DefaultHttpStack, type HttpRequest, type HttpResponse, type HttpStack } from 'tus-js-client'

export function base64(bytes: ArrayBuffer): string {
  let text = ''
  for (const byte of new Uint8Array(bytes)) text += String.fromCharCode(byte)
  return btoa(text)
}

export async function sha1Header(body: Blob | ArrayBuffer): Promise<string> {
  const buffer = body instanceof Blob ? await body.arrayBuffer() : body
  return `sha1 ${base64(await crypto.subtle.digest('SHA-1', buffer))}`
}

class ChecksummedRequest implements HttpRequest {
  constructor(private readonly inner: HttpRequest) {}
  getMethod(): string {
    return this.inner.getMethod()
  }
  getURL(): string {
    return this.inner.getURL()
  }
  setHeader(header: string, value: string): void {
    this.inner.setHeader(header, value)
  }
  getHeader(header: string): string | undefined {
    return this.inner.getHeader(header)
  }
  setProgressHandler(handler: (bytesSent: number) => void): void {
    this.inner.setProgressHandler(handler)
  }
  async send(body: unknown): Promise<HttpResponse> {
    if (body instanceof Blob || body instanceof ArrayBuffer) {
      this.inner.setHeader('Upload-Checksum', await sha1Header(body))
    }
    return this.inner.send(body)
  }
  abort(): Promise<void> {
    return this.inner.abort()
  }
  getUnderlyingObject(): unknown {
    return this.inner.getUnderlyingObject()
  }
}

export class ChecksumHttpStack implements HttpStack {
  private readonly inner = new DefaultHttpStack({})
  readonly enabled = typeof crypto !== 'undefined' && crypto.subtle !== undefined

  createRequest(method: string, url: string): HttpRequest {
    const request = this.inner.createRequest(method, url)
    return method === 'PATCH' && this.enabled ? new ChecksummedRequest(request) : request
  }

  getName(): string {
    return 'ChecksumHttpStack'
  }
}
