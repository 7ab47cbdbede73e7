import { createRouter, createWebHistory, type RouteRecordRaw } from 'vue-router'
import { can, homeFor, type Capability } from '@/auth/roles'
import AppLayout from '@/components/AppLayout.vue'
import { useSessionStore } from '@/stores/session'

declare module 'vue-router' {
  interface RouteMeta {
    /** Who may open the page; absent: anyone logged in. */
    capability?: Capability
    public?: boolean
    title?: string
  }
}

const routes: RouteRecordRaw[] = [
  {
    path: '/login',
    component: () => import('@/pages/login/LoginPage.vue'),
    meta: { public: true, title: 'Log in' },
  },
  {
    path: '/',
    component: AppLayout,
    children: [
      { path: '', component: () => import('@/pages/dashboard/DashboardPage.vue'), meta: { capability: 'view', title: 'Dashboard' } },
      { path: 'studies', component: () => import('@/pages/studies/StudiesPage.vue'), meta: { capability: 'view', title: 'Studies' } },
      { path: 'studies/:uid', component: () => import('@/pages/studies/StudyPage.vue'), meta: { capability: 'view', title: 'Study' }, props: true },
      { path: 'destinations', component: () => import('@/pages/destinations/DestinationsPage.vue'), meta: { capability: 'view', title: 'Destinations' } },
      { path: 'rules', component: () => import('@/pages/rules/RulesPage.vue'), meta: { capability: 'view', title: 'Routing rules' } },
      { path: 'queue', component: () => import('@/pages/queue/QueuePage.vue'), meta: { capability: 'view', title: 'Queue' } },
      { path: 'audit', component: () => import('@/pages/audit/AuditPage.vue'), meta: { capability: 'readAudit', title: 'Audit log' } },
      { path: 'users', component: () => import('@/pages/users/UsersPage.vue'), meta: { capability: 'manageUsers', title: 'Users & roles' } },
      { path: 'settings', component: () => import('@/pages/settings/SettingsPage.vue'), meta: { capability: 'readSettings', title: 'Settings' } },
      { path: 'upload', component: () => import('@/pages/uploads/UploadPage.vue'), meta: { capability: 'upload', title: 'Upload' } },
      { path: 'account', component: () => import('@/pages/account/AccountPage.vue'), meta: { title: 'My account' } },
      { path: ':missing(.*)*', component: () => import('@/pages/NotFoundPage.vue'), meta: { title: 'Not found' } },
    ],
  },
]

export const router = createRouter({ history: createWebHistory(), routes })

router.beforeEach(async (to) => {
  const session = useSessionStore()
  if (!session.restored) await session.restore().catch(() => undefined)
  if (to.meta.public) return session.user && to.path === '/login' ? homeFor(session.user.role) : true
  if (!session.user) return { path: '/login', query: to.fullPath === '/' ? {} : { next: to.fullPath } }
  if (to.meta.capability && !can(session.role, to.meta.capability)) return homeFor(session.user.role)
  return true
})

router.afterEach((to) => {
  document.title = to.meta.title ? `${to.meta.title} · dicom-gw` : 'dicom-gw'
})
