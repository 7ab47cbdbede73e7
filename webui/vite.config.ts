/// <reference types="vitest/config" />
import { fileURLToPath, URL } from 'node:url'
import vue from '@vitejs/plugin-vue'
import { defineConfig } from 'vite'

// `npm run dev` proxies the API of a gateway running on its default port.
const api = process.env.DICOMGW_API ?? 'http://127.0.0.1:8080'

export default defineConfig({
  plugins: [vue()],
  resolve: { alias: { '@': fileURLToPath(new URL('./src', import.meta.url)) } },
  server: { proxy: { '/api': { target: api, changeOrigin: false } } },
  build: {
    // The API serves /assets/ with a one-year cache: every file name there is hashed.
    assetsDir: 'assets',
    chunkSizeWarningLimit: 400,
  },
  test: { include: ['src/**/*.test.ts'], environment: 'node' },
})
