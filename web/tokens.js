// The Tokens page: the org's provider and agent tokens (ids and scopes, never the tokens), create
// one (shown once, with a copy button), revoke. Studio sessions are admin tokens and not listed.
import { h, mount, ago, when, modal, toast, errorText } from './ui.js'
import { api, seg } from './api.js'

export async function tokensPage (el, ctx) {
  const { org } = ctx
  const [tokens, providers] = await Promise.all([
    api('GET', `/admin/tokens?org_id=${seg(org)}&include_revoked=true`),
    api('GET', `/admin/orgs/${seg(org)}/providers`)
  ])
  const names = new Map(providers.providers.map((p) => [p.provider_id, p.name]))
  const list = tokens.tokens.sort((a, b) => (a.revoked_at ? 1 : 0) - (b.revoked_at ? 1 : 0) || b.created_at.localeCompare(a.created_at))
  const reload = () => ctx.rerender()
  mount(el,
    h('section', { class: 'page-head' },
      h('div', {}, h('h1', {}, 'Tokens'),
        h('p', { class: 'muted' }, 'A token is shown once, when it is made. The vault keeps only its hash.')),
      h('div', { class: 'head-actions' },
        h('button', { class: 'primary', type: 'button', id: 'new-provider-token', onclick: () => createDialog(ctx, 'provider', providers.providers, reload) }, '+ Provider token'),
        h('button', { class: 'primary', type: 'button', id: 'new-agent-token', onclick: () => createDialog(ctx, 'agent', providers.providers, reload) }, '+ Agent token'))),
    h('div', { class: 'table tokens', role: 'table', 'aria-label': 'Tokens' },
      h('div', { class: 'tr th', role: 'row' }, ['Token', 'Kind', 'Scope', 'Label', 'Created', 'Expires', ''].map((t) => h('span', { role: 'columnheader' }, t))),
      list.map((t) => h('div', { class: `tr${t.revoked_at ? ' is-revoked' : ''}`, role: 'row', dataset: { token: t.token_id } },
        h('span', { class: 'name', role: 'cell' }, t.token_id),
        h('span', { role: 'cell' }, h('span', { class: `badge kind-${t.kind}` }, t.kind)),
        h('span', { role: 'cell', 'data-label': 'Scope' }, t.kind === 'agent' ? t.environment : (names.get(t.provider_id) || t.provider_id || '')),
        h('span', { role: 'cell', 'data-label': 'Label' }, t.label || ''),
        h('span', { role: 'cell', 'data-label': 'Created', title: when(t.created_at) }, ago(t.created_at)),
        h('span', { role: 'cell', 'data-label': 'Expires' }, t.revoked_at ? `revoked ${ago(t.revoked_at)}` : (t.expires_at ? when(t.expires_at) : 'never')),
        h('span', { role: 'cell', class: 'actions' }, t.revoked_at ? '' : h('button', { class: 'small danger', type: 'button', onclick: () => revoke(t, reload) }, 'Revoke'))))))
}

async function revoke (t, reload) {
  if (!window.confirm(`Revoke ${t.token_id}? Anything using it fails on its next request.`)) return
  try {
    await api('DELETE', `/admin/tokens/${seg(t.token_id)}`)
    toast(`${t.token_id} revoked`)
    reload()
  } catch (e) {
    toast(errorText(e), 'error')
  }
}

function createDialog (ctx, kind, providers, reload) {
  const msg = h('p', { class: 'error', role: 'alert' })
  const label = h('input', { id: 'token-label', autocomplete: 'off', placeholder: 'e.g. web-1, CI', 'aria-label': 'Label' })
  const provider = h('select', { id: 'token-provider', 'aria-label': 'Provider' },
    providers.map((p) => h('option', { value: p.provider_id }, `${p.name} (${p.provider_id})`)),
    h('option', { value: '' }, 'A new provider…'))
  const newName = h('input', { id: 'provider-name', autocomplete: 'off', placeholder: 'New provider name', 'aria-label': 'New provider name' })
  const env = h('select', { id: 'token-env', 'aria-label': 'Environment' },
    ctx.environments.map((e) => h('option', { value: e.environment, selected: e.environment === ctx.env }, e.environment)))
  const fields = kind === 'provider'
    ? [h('label', { for: 'token-provider' }, 'Provider'), provider, h('label', { for: 'provider-name' }, 'or a new provider'), newName]
    : [h('label', { for: 'token-env' }, 'Environment'), env]
  const submit = async (e) => {
    e.preventDefault()
    mount(msg)
    try {
      let issued
      const body = label.value.trim() ? { label: label.value.trim() } : {}
      if (kind === 'agent') {
        issued = await api('POST', `/admin/orgs/${seg(ctx.org)}/environments/${seg(env.value)}/agent-tokens`, body)
      } else if (provider.value) {
        issued = await api('POST', `/admin/orgs/${seg(ctx.org)}/providers/${seg(provider.value)}/tokens`, body)
      } else {
        issued = (await api('POST', `/admin/orgs/${seg(ctx.org)}/providers`, { name: newName.value.trim() })).token
      }
      d.close()
      showOnce(issued, reload)
    } catch (err) {
      mount(msg, errorText(err))
    }
  }
  const d = modal(kind === 'provider' ? 'New provider token' : 'New agent token', h('form', { class: 'dialog-body', onsubmit: submit },
    fields, h('label', { for: 'token-label' }, 'Label (optional)'), label, msg,
    h('div', { class: 'dialog-actions' }, h('button', { class: 'ghost', type: 'button', onclick: () => d.close() }, 'Cancel'),
      h('button', { class: 'primary', type: 'submit', id: 'create-token' }, 'Create token'))))
}

// The token, once: a copy button, then gone from the page for good.
function showOnce (issued, reload) {
  const box = h('code', { class: 'token-once', id: 'issued-token' }, issued.token)
  const copy = h('button', { class: 'primary', type: 'button', id: 'copy-token' }, 'Copy')
  copy.addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(issued.token)
      mount(copy, 'Copied')
    } catch {
      const r = document.createRange()
      r.selectNodeContents(box)
      window.getSelection().removeAllRanges()
      window.getSelection().addRange(r)
      mount(copy, 'Selected — press Ctrl+C')
    }
  })
  const d = modal(`${issued.token_id} — copy it now`, h('div', { class: 'dialog-body' },
    h('p', {}, 'This is the only time the token is shown. Store it where it will be used; the vault keeps only its hash.'),
    box,
    h('div', { class: 'dialog-actions' }, copy, h('button', { class: 'ghost', type: 'button', id: 'done-token', onclick: () => d.close() }, 'Done'))),
  { onclose: () => { issued.token = ''; box.textContent = ''; reload() } })
}
