/// <reference types="vitest/config" />
import { fileURLToPath, URL } from 'node:url'
import vue from '@vitejs/plugin-vue'
import { defineConfig } from 'vite'
import { VitePWA } from 'vite-plugin-pwa'

// `npm run dev` proxies the API of a gateway running on its default port.
const api = process.env.DICOMGW_API ?? 'http://127.0.0.1:8080'

export default defineConfig({
  plugins: [
    vue(),
    // An installable app whose shell works offline (the upload page keeps its
    // drafts and files in IndexedDB). The service worker caches the app's own
    // files only: the API, DICOMweb and a viewer are always the network's.
    VitePWA({
      registerType: 'autoUpdate',
      injectRegister: 'script-defer',
      manifest: {
        name: 'dicom-gw',
        short_name: 'dicom-gw',
        description: 'Upload studies to the gateway; operate it.',
        start_url: '/upload',
        scope: '/',
        display: 'standalone',
        background_color: '#f8fafc',
        theme_color: '#0f766e',
        icons: [
          { src: '/icon-192.png', sizes: '192x192', type: 'image/png' },
          { src: '/icon-512.png', sizes: '512x512', type: 'image/png', purpose: 'any maskable' },
        ],
      },
      workbox: {
        globPatterns: ['**/*.{js,css,html,svg,png,webmanifest}'],
        navigateFallback: '/index.html',
        navigateFallbackDenylist: [/^\/api\//, /^\/dicom-web\//, /^\/viewer\//, /^\/metrics/],
        runtimeCaching: [],
        cleanupOutdatedCaches: true,
        // Chunks of an upload are never cached: only the app shell is.
        maximumFileSizeToCacheInBytes: 4 * 1024 * 1024,
      },
    }),
  ],
  resolve: { alias: { '@': fileURLToPath(new URL('./src', import.meta.url)) } },
  server: { proxy: { '/api': { target: api, changeOrigin: false } } },
  build: {
    // The API serves /assets/ with a one-year cache: every file name there is hashed.
    assetsDir: 'assets',
    chunkSizeWarningLimit: 400,
  },
  test: { include: ['src/**/*.test.ts'], environment: 'node' },
})
