/**
 * A scripted HTTP server for unit tests of the client and the stores: real
 * sockets and real fetch, answers chosen per test (the e2e suite talks to a
 * real gateway).
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'

export interface Seen {
  method: string
  url: string
  headers: IncomingMessage['headers']
  body: string
}

export type Handler = (req: Seen, res: ServerResponse) => void

export interface Scripted {
  base: string
  seen: Seen[]
  on: (method: string, path: string, handler: Handler) => void
  close: () => Promise<void>
}

export function json(res: ServerResponse, status: number, body: unknown, type = 'application/json') {
  res.writeHead(status, { 'Content-Type': type })
  res.end(JSON.stringify(body))
}

export function problem(res: ServerResponse, status: number, kind: string, extra: Record<string, unknown> = {}) {
  json(res, status, { type: `urn:dicom-gw:problem:${kind}`, title: kind, status, ...extra }, 'application/problem+json')
}

export async function scripted(): Promise<Scripted> {
  const routes = new Map<string, Handler>()
  const seen: Seen[] = []
  const server = createServer((req, res) => {
    let body = ''
    req.on('data', (chunk) => (body += chunk))
    req.on('end', () => {
      const entry = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, body }
      seen.push(entry)
      const handler = routes.get(`${req.method} ${(req.url ?? '').split('?')[0]}`)
      if (handler) handler(entry, res)
      else problem(res, 404, 'not-found')
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  return {
    base: `http://127.0.0.1:${port}/api/v1`,
    seen,
    on: (method, path, handler) => routes.set(`${method} /api/v1${path}`, handler),
    close: () => new Promise((resolve) => server.close(() => resolve())),
  }
}
