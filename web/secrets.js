// The Secrets page: one row per secret of the environment (policy, version, last rotated, last
// used, users for user-vault secrets), the missing bar, add / paste .env (sealed in this
// browser, appended only, confirmed first), rotate and revoke. Values are never shown: the
// vault cannot read them, and neither can this page once they are sealed.
import { h, mount, ago, when, modal, toast, errorText, utf8Length, bytes } from './ui.js'
import { api, seg, missingRoute } from './api.js'
import { sealValue } from './hpke.js'
import { parseDotenv, NAME_RE, MAX_VALUE_BYTES, MAX_PASTE_BYTES } from './dotenv.js'

const DAY = 86400 * 1000

/** The environment's secrets, as the vault lists them (no values, ever). */
async function listSecrets (org, env) {
  try {
    return (await api('GET', `/orgs/${seg(org)}/environments/${seg(env)}/secrets`)).secrets
  } catch (e) {
    if (!missingRoute(e)) throw e
    return secretsFromAudit(org, env)
  }
}

// A vault without the secret list (before per-secret policies): the same facts from the audit
// trail's issued / rotated / revoked records.
async function secretsFromAudit (org, env) {
  const { records } = await api('GET', `/orgs/${seg(org)}/audit?environment=${seg(env)}&limit=10000`)
  const rows = new Map()
  for (const r of records) {
    if (!r.secret || !['issued', 'rotated', 'revoked'].includes(r.action)) continue
    const row = rows.get(r.secret) || { secret_name: r.secret, policy: 'creator', users: null }
    row.state = r.action === 'revoked' ? 'revoked' : 'active'
    if (r.version) row.version = r.version
    row.updated_at = r.time
    if (r.action !== 'revoked') row.provider_id = r.actor.replace(/^provider:/, '')
    rows.set(r.secret, row)
  }
  return [...rows.values()]
}

/** Last access per secret and what apps asked for in vain (`missing` events), from the trail. */
async function usage (org, env) {
  const since = new Date(Date.now() - 30 * DAY).toISOString().replace(/\.\d+Z$/, 'Z')
  const q = (action) => api('GET', `/orgs/${seg(org)}/audit?environment=${seg(env)}&action=${action}&since=${since}&limit=10000`)
  const [accessed, missing] = await Promise.all([q('accessed'), q('missing')])
  const lastUsed = new Map()
  for (const r of accessed.records) lastUsed.set(r.secret, r.time)
  const asked = new Map()
  for (const r of missing.records) if (r.secret) asked.set(r.secret, r)
  return { lastUsed, asked }
}

const isActive = (s) => s.state === 'active' && s.version > 0

function missingNames (secrets, asked) {
  const byName = new Map(secrets.map((s) => [s.secret_name, s]))
  const out = new Map()
  for (const s of secrets) {
    // Declared (a policy set) without a value: missing unless each user brings their own.
    if (!isActive(s) && s.state !== 'revoked' && s.policy !== 'user') out.set(s.secret_name, { why: 'declared' })
  }
  for (const [name, r] of asked) {
    const s = byName.get(name)
    if (!s || (!isActive(s) && s.policy !== 'user')) {
      if (!s || Date.parse(r.time) >= Date.parse(s.updated_at || 0)) out.set(name, { why: 'asked', record: r })
    }
  }
  return out
}

export async function secretsPage (el, ctx) {
  const { org, env } = ctx
  const [secrets, use, providers] = await Promise.all([
    listSecrets(org, env), usage(org, env), api('GET', `/admin/orgs/${seg(org)}/providers`)])
  const names = new Map(providers.providers.map((p) => [p.provider_id, p.name]))
  secrets.sort((a, b) => a.secret_name.localeCompare(b.secret_name))
  const configured = secrets.filter(isActive)
  const missing = missingNames(secrets, use.asked)
  const reload = () => ctx.rerender()
  const addPanel = addSecrets(ctx, secrets, reload)

  const bars = [...missing].map(([name, m]) =>
    h('div', { class: 'missing-bar', role: 'alert', dataset: { secret: name } },
      h('span', { class: 'missing-icon', 'aria-hidden': 'true' }, '!'),
      h('span', { class: 'missing-text' },
        h('strong', {}, name), ' is missing. First run will fail until set.',
        m.record ? h('span', { class: 'muted' }, ` Asked for by ${m.record.exe || 'an app'} on ${m.record.host || 'a host'}, ${ago(m.record.time)}.`) : ''),
      h('button', { class: 'small', type: 'button', onclick: () => addPanel.prefill(name) }, 'Add it')))

  const rows = secrets.map((s) => secretRow(ctx, s, use.lastUsed.get(s.secret_name), names, reload))
  mount(el,
    bars,
    h('section', { class: 'page-head' },
      h('div', {},
        h('h1', { class: 'counts' },
          h('span', {}, 'Secrets'), ' · ', h('span', { id: 'configured-count' }, `${configured.length} configured`),
          ' · ', h('span', { id: 'missing-count', class: missing.size ? 'warn' : '' }, `${missing.size} missing`)),
        h('p', { class: 'muted' }, `${env} · values are sealed to this environment's key in your browser; the vault and this page cannot read them.`)),
      h('button', { class: 'primary', type: 'button', onclick: () => addPanel.open() }, '+ Add secrets')),
    addPanel.el,
    secrets.length === 0
      ? h('div', { class: 'card empty' }, h('p', {}, 'No secrets in this environment yet. Add one, paste a .env file, or let a provider push one.'))
      : h('div', { class: 'table secrets', role: 'table', 'aria-label': 'Secrets' },
        h('div', { class: 'tr th', role: 'row' },
          ['Name', 'Policy', 'Version', 'Last rotated', 'Last used', 'Value', ''].map((t) => h('span', { role: 'columnheader' }, t))),
        rows))
}

const users = (n) => `${n} ${n === 1 ? 'user' : 'users'}`

function secretRow (ctx, s, lastUsed, names, reload) {
  const revoked = s.state === 'revoked'
  const user = s.policy === 'user'
  // Who pushed it: the provider's name, or the admin (token id) for studio writes.
  const who = !s.provider_id ? '' : s.provider_id.startsWith('admin:') ? 'admin (studio)' : (names.get(s.provider_id) || s.provider_id)
  const value = user
    ? h('span', { class: 'users', title: s.users ? `${users(s.users.with_value)} with their own value` : '' },
      s.users ? `${users(s.users.read_7d)} · last 7d` : 'each user brings their own')
    : revoked
      ? h('span', { class: 'badge revoked' }, 'revoked')
      : isActive(s)
        ? h('span', { class: 'sealed', title: `Sealed to the ${ctx.env} key${s.provider_id ? ', pushed by ' + s.provider_id : ''}` },
          h('span', { class: 'badge sealed-badge' }, 'Sealed'), who ? h('span', { class: 'muted by' }, `by ${who}`) : '')
        : h('span', { class: 'badge warn' }, 'no value')
  return h('div', { class: `tr${revoked ? ' is-revoked' : ''}`, role: 'row', dataset: { secret: s.secret_name } },
    h('span', { class: 'name', role: 'cell' }, s.secret_name),
    h('span', { role: 'cell', class: 'policy-cell' }, policyToggle(ctx, s, reload)),
    h('span', { role: 'cell', class: 'version', 'data-label': 'Version' }, s.version ? `v${s.version}` : '—'),
    h('span', { role: 'cell', 'data-label': 'Last rotated', title: when(s.updated_at) }, s.version ? ago(s.updated_at) : '—'),
    h('span', { role: 'cell', class: 'last-used', 'data-label': 'Last used', title: when(lastUsed) }, ago(lastUsed)),
    h('span', { role: 'cell', class: 'value-cell' }, value),
    h('span', { role: 'cell', class: 'actions' },
      isActive(s) && !user ? h('button', { class: 'small', type: 'button', onclick: () => rotateDialog(ctx, s, reload) }, 'Rotate') : '',
      s.version && !revoked ? h('button', { class: 'small danger', type: 'button', onclick: () => revokeDialog(ctx, s, reload) }, 'Revoke') : ''))
}

function policyToggle (ctx, s, reload) {
  const set = async (policy) => {
    if (policy === s.policy) return
    try {
      await api('PUT', `/orgs/${seg(ctx.org)}/environments/${seg(ctx.env)}/secrets/${seg(s.secret_name)}/policy`, { policy })
      toast(`${s.secret_name}: ${policy === 'user' ? 'user vault' : 'creator vault'}`)
      reload()
    } catch (e) {
      toast(missingRoute(e) ? 'This vault has no per-secret policies yet.' : errorText(e), 'error')
    }
  }
  const btn = (policy, label, hint) => h('button', {
    type: 'button',
    class: s.policy === policy ? 'on' : '',
    'aria-pressed': s.policy === policy ? 'true' : 'false',
    title: hint,
    dataset: { policy },
    onclick: () => set(policy)
  }, label)
  return h('span', { class: 'toggle', role: 'group', 'aria-label': `Policy of ${s.secret_name}` },
    btn('creator', 'Creator vault', 'You provide the key; all users share it'),
    btn('user', 'User vault', 'Each user provides their own key'))
}

async function sealFor (ctx, name, value) {
  return sealValue({ publicKey: ctx.environment.public_key, orgId: ctx.org, environment: ctx.env, secretName: name, value })
}

// --- add / paste .env

function addSecrets (ctx, secrets, reload) {
  const active = new Set(secrets.filter(isActive).map((s) => s.secret_name))
  const name = h('input', { id: 'add-name', placeholder: 'OPENAI_API_KEY', autocomplete: 'off', spellcheck: 'false', 'aria-label': 'Name' })
  const value = h('textarea', { id: 'add-value', rows: 2, placeholder: 'The value (sealed here before it is sent)', autocomplete: 'off', spellcheck: 'false', 'aria-label': 'Value' })
  const paste = h('textarea', { id: 'env-paste', rows: 6, placeholder: '# Paste a .env file\nexport STRIPE_SK=sk_live_…\nDATABASE_URL="postgres://…"', spellcheck: 'false', 'aria-label': '.env paste' })
  const msg = h('p', { class: 'error', role: 'alert', id: 'add-error' })
  const review = (text) => {
    mount(msg)
    const size = utf8Length(text)
    if (size > MAX_PASTE_BYTES) {
      mount(msg, `This paste is ${bytes(size)}; the studio reads at most ${bytes(MAX_PASTE_BYTES)} at a time. Split it into smaller pastes.`)
      return
    }
    const parsed = parseDotenv(text)
    if (!parsed.entries.length && !parsed.malformed.length) {
      mount(msg, 'Nothing to add: the paste has no NAME=value lines.')
      return
    }
    confirmDialog(ctx, parsed, active, () => { paste.value = ''; name.value = ''; value.value = ''; reload() })
  }
  const addOne = (e) => {
    e.preventDefault()
    mount(msg)
    const n = name.value.trim()
    if (!NAME_RE.test(n)) return mount(msg, 'The name must be A–Z, 0–9 and _, not starting with a digit (at most 128).')
    if (value.value === '') return mount(msg, 'The value is empty.')
    if (utf8Length(value.value) > MAX_VALUE_BYTES) return mount(msg, `The value is ${bytes(utf8Length(value.value))}; the limit is 64 KiB.`)
    confirmDialog(ctx, { entries: [{ name: n, value: value.value, line: 1 }], malformed: [] }, active, () => { name.value = ''; value.value = ''; reload() })
  }
  const el = h('section', { class: 'card add', id: 'add-panel', hidden: true },
    h('div', { class: 'add-grid' },
      h('form', { class: 'add-one', onsubmit: addOne },
        h('h2', {}, 'Add a secret'),
        h('label', { for: 'add-name' }, 'Name'), name,
        h('label', { for: 'add-value' }, 'Value'), value,
        h('button', { class: 'primary', type: 'submit', id: 'add-one' }, 'Review and add')),
      h('form', { class: 'add-env', onsubmit: (e) => { e.preventDefault(); review(paste.value) } },
        h('h2', {}, 'Paste a .env'),
        h('p', { class: 'muted' }, 'Comments and blank lines are ignored; names that already have a value are skipped, never overwritten.'),
        paste,
        h('button', { class: 'primary', type: 'submit', id: 'review-env' }, 'Review import'))),
    msg)
  return {
    el,
    open () { el.hidden = false; name.focus() },
    prefill (n) { el.hidden = false; name.value = n; value.focus() }
  }
}

function confirmDialog (ctx, parsed, active, done) {
  const add = parsed.entries.filter((e) => !active.has(e.name))
  const skipped = parsed.entries.filter((e) => active.has(e.name))
  const status = h('p', { class: 'muted', role: 'status' })
  const go = h('button', { class: 'primary', type: 'button', id: 'confirm-add', disabled: add.length === 0 }, `Add ${add.length} secret${add.length === 1 ? '' : 's'}`)
  const section = (title, cls, items) => items.length
    ? h('div', { class: `review ${cls}` }, h('h3', {}, `${title} (${items.length})`), h('ul', {}, items))
    : ''
  const body = h('div', { class: 'dialog-body' },
    h('p', {}, `Each value is sealed in this browser to the ${ctx.env} key before it is sent. Nothing is stored until you confirm.`),
    section('Will be added', 'adds', add.map((e) => h('li', {}, h('code', {}, e.name), h('span', { class: 'muted' }, ` line ${e.line} · ${bytes(utf8Length(e.value))}`)))),
    section('Skipped — already set', 'skips', skipped.map((e) => h('li', {}, h('code', {}, e.name), h('span', { class: 'muted' }, ` line ${e.line} · rotate it instead`)))),
    section('Malformed', 'malformed', parsed.malformed.map((m) => h('li', {}, `line ${m.line}: `, m.name ? h('code', {}, m.name) : '', m.name ? ' — ' : '', m.reason))),
    status,
    h('div', { class: 'dialog-actions' }, h('button', { class: 'ghost', type: 'button', onclick: () => d.close() }, 'Cancel'), go))
  const d = modal('Review before adding', body)
  go.addEventListener('click', async () => {
    go.disabled = true
    const failed = []
    let added = 0
    for (const e of add) {
      mount(status, `Sealing and adding ${e.name}…`)
      try {
        const sealed = await sealFor(ctx, e.name, e.value)
        await api('POST', `/admin/orgs/${seg(ctx.org)}/environments/${seg(ctx.env)}/secrets`, { secret_name: e.name, sealed_value: sealed, only_new: true })
        added++
      } catch (err) {
        failed.push(`${e.name}: ${errorText(err)}`)
      }
    }
    for (const e of parsed.entries) e.value = ''
    d.close()
    if (failed.length) toast(`Added ${added}; not added: ${failed.join('; ')}`, 'error')
    else toast(`Added ${added} secret${added === 1 ? '' : 's'}`)
    done()
  })
}

// --- rotate and revoke

function rotateDialog (ctx, s, reload) {
  const grace = ctx.environment ? ctx.environment.default_grace_seconds : 300
  const value = h('textarea', { id: 'rotate-value', rows: 3, autocomplete: 'off', spellcheck: 'false', 'aria-label': 'New value' })
  const graceInput = h('input', { id: 'rotate-grace', type: 'number', min: 0, max: 604800, value: String(grace), 'aria-label': 'Grace period in seconds' })
  const msg = h('p', { class: 'error', role: 'alert' })
  const submit = async (e) => {
    e.preventDefault()
    mount(msg)
    if (value.value === '') return mount(msg, 'The new value is empty.')
    if (utf8Length(value.value) > MAX_VALUE_BYTES) return mount(msg, `The value is ${bytes(utf8Length(value.value))}; the limit is 64 KiB.`)
    const g = Number(graceInput.value)
    if (!Number.isInteger(g) || g < 0 || g > 604800) return mount(msg, 'The grace period is 0 to 604800 seconds (7 days).')
    try {
      const sealed = await sealFor(ctx, s.secret_name, value.value)
      value.value = ''
      await api('PATCH', `/admin/orgs/${seg(ctx.org)}/environments/${seg(ctx.env)}/secrets/${seg(s.secret_name)}`, { sealed_value: sealed, grace_period_seconds: g })
      d.close()
      toast(`${s.secret_name} rotated`)
      reload()
    } catch (err) {
      mount(msg, errorText(err))
    }
  }
  const d = modal(`Rotate ${s.secret_name}`, h('form', { class: 'dialog-body', onsubmit: submit },
    h('label', { for: 'rotate-value' }, 'New value (sealed in this browser)'), value,
    h('label', { for: 'rotate-grace' }, 'Grace period, seconds — the current value stays readable this long'), graceInput,
    msg,
    h('div', { class: 'dialog-actions' }, h('button', { class: 'ghost', type: 'button', onclick: () => d.close() }, 'Cancel'),
      h('button', { class: 'primary', type: 'submit', id: 'confirm-rotate' }, 'Rotate'))))
}

function revokeDialog (ctx, s, reload) {
  const input = h('input', { id: 'revoke-confirm', autocomplete: 'off', spellcheck: 'false', 'aria-label': `Type ${s.secret_name} to confirm` })
  const go = h('button', { class: 'danger', type: 'submit', id: 'confirm-revoke', disabled: true }, 'Revoke')
  const msg = h('p', { class: 'error', role: 'alert' })
  input.addEventListener('input', () => { go.disabled = input.value !== s.secret_name })
  const submit = async (e) => {
    e.preventDefault()
    if (input.value !== s.secret_name) return
    try {
      await api('DELETE', `/admin/orgs/${seg(ctx.org)}/secrets/${seg(s.secret_name)}`)
      d.close()
      toast(`${s.secret_name} revoked`)
      reload()
    } catch (err) {
      mount(msg, errorText(err))
    }
  }
  const d = modal(`Revoke ${s.secret_name}`, h('form', { class: 'dialog-body', onsubmit: submit },
    h('p', {}, 'The value becomes unreadable at once in every environment of this org: agents drop it, with no grace period. A new value can be added later.'),
    h('label', { for: 'revoke-confirm' }, 'Type ', h('code', {}, s.secret_name), ' to confirm'), input,
    msg,
    h('div', { class: 'dialog-actions' }, h('button', { class: 'ghost', type: 'button', onclick: () => d.close() }, 'Cancel'), go)))
}

