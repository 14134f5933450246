// The Audit page: the org's trail, newest first, with filters (secret, action, environment,
// time range). Reads show host, process, unit and count.
import { h, mount, when, errorText } from './ui.js'
import { api, seg } from './api.js'

const ACTIONS = ['', 'issued', 'rotated', 'revoked', 'accessed', 'missing', 'denied', 'undeliverable',
  'policy_changed', 'token_created', 'token_revoked']

const toRfc3339 = (local) => (local ? new Date(local).toISOString().replace(/\.\d+Z$/, 'Z') : '')

export async function auditPage (el, ctx) {
  const f = ctx.auditFilters || (ctx.auditFilters = {})
  const secret = h('input', { id: 'f-secret', placeholder: 'STRIPE_SK', value: f.secret || '', 'aria-label': 'Secret', spellcheck: 'false' })
  const action = h('select', { id: 'f-action', 'aria-label': 'Action' }, ACTIONS.map((a) => h('option', { value: a, selected: a === (f.action || '') }, a || 'any action')))
  const env = h('select', { id: 'f-env', 'aria-label': 'Environment' },
    h('option', { value: '' }, 'every environment'),
    ctx.environments.map((e) => h('option', { value: e.environment, selected: e.environment === (f.env ?? ctx.env) }, e.environment)))
  const since = h('input', { id: 'f-since', type: 'datetime-local', value: f.since || '', 'aria-label': 'Since' })
  const until = h('input', { id: 'f-until', type: 'datetime-local', value: f.until || '', 'aria-label': 'Until' })
  const results = h('div', { id: 'audit-results' })
  const load = async (e) => {
    if (e) e.preventDefault()
    const q = new URLSearchParams({ limit: '1000' })
    if (secret.value.trim()) q.set('secret', secret.value.trim())
    if (action.value) q.set('action', action.value)
    if (env.value) q.set('environment', env.value)
    if (since.value) q.set('since', toRfc3339(since.value))
    if (until.value) q.set('until', toRfc3339(until.value))
    Object.assign(f, { secret: secret.value, action: action.value, env: env.value, since: since.value, until: until.value })
    try {
      const { records } = await api('GET', `/orgs/${seg(ctx.org)}/audit?${q}`)
      mount(results, table(records.reverse()))
    } catch (err) {
      mount(results, h('div', { class: 'card error-card', role: 'alert' }, errorText(err)))
    }
  }
  mount(el,
    h('section', { class: 'page-head' }, h('div', {}, h('h1', {}, 'Audit'),
      h('p', { class: 'muted' }, 'Every push, rotation, revocation, token event and read, newest first (up to 1,000 per query).'))),
    h('form', { class: 'filters card', onsubmit: load },
      h('label', {}, 'Secret', secret), h('label', {}, 'Action', action), h('label', {}, 'Environment', env),
      h('label', {}, 'Since', since), h('label', {}, 'Until', until),
      h('button', { class: 'primary', type: 'submit', id: 'f-apply' }, 'Filter')),
    results)
  await load()
}

function table (records) {
  if (!records.length) return h('div', { class: 'card empty' }, 'No records match.')
  return h('div', { class: 'table audit', role: 'table', 'aria-label': 'Audit trail' },
    h('div', { class: 'tr th', role: 'row' }, ['Time', 'Action', 'Secret', 'Environment', 'Actor', 'Where', 'Process'].map((t) => h('span', { role: 'columnheader' }, t))),
    records.map((r) => h('div', { class: 'tr', role: 'row' },
      h('span', { role: 'cell', class: 'time' }, when(r.time)),
      h('span', { role: 'cell' }, h('span', { class: `badge action-${r.action}` }, r.action), r.count > 1 ? h('span', { class: 'muted' }, ` ×${r.count}`) : ''),
      h('span', { role: 'cell', class: 'name' }, r.secret || '', r.version ? h('span', { class: 'muted' }, ` v${r.version}`) : ''),
      h('span', { role: 'cell', 'data-label': 'Env' }, r.environment || ''),
      h('span', { role: 'cell', class: 'actor', 'data-label': 'Actor' }, r.actor),
      h('span', { role: 'cell', 'data-label': 'Where' }, [r.host, r.source_ip].filter(Boolean).join(' · ')),
      h('span', { role: 'cell', 'data-label': 'Process' }, [r.exe, r.pid ? `pid ${r.pid}` : '', r.unit, r.via, r.reason].filter(Boolean).join(' · ')))))
}
