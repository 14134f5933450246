// The studio in real headless Chromium (Debian's `chromium`, driven by playwright-core), against
// a real `fyvault dev` (vault + agent + FUSE mount) that tests/studio_browser.rs starts and
// describes in the environment:
//   STUDIO_URL ADMIN_TOKEN ORG ENVIRONMENT PROVIDER MOUNT CHROMIUM OUT_DIR SKIP_FILE
// Every step asserts; none may skip (SKIP_FILE stays for a future step that needs one).
import assert from 'node:assert/strict'
import { existsSync, mkdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import http from 'node:http'
import { chromium } from 'playwright-core'

const env = (k) => { const v = process.env[k]; assert.ok(v, `${k} is set`); return v }
const URL = env('STUDIO_URL').replace(/\/$/, '')
const ADMIN = env('ADMIN_TOKEN')
const ORG = env('ORG')
const ENVIRONMENT = env('ENVIRONMENT')
const PROVIDER = env('PROVIDER')
const MOUNT = env('MOUNT')
const SOCKET = env('SOCKET')
const OUT = env('OUT_DIR')
const DEADLINE_MS = 30_000

const rand = randomBytes(6).toString('hex')
const V = {
  alpha: `alpha ${rand} ✓ "quoted" # kept`,
  beta: `beta-${rand}`,
  commented: `gamma-${rand}`,
  alpha2: `alpha2-${rand}-rotated`,
  late: `late-${rand}`,
  mobile: `mobile-${rand}`,
  provided: `provided-${rand}`,
  byok: `sk-user-${rand}-own-key`
}
const log = (...a) => console.log('studio:', ...a)

async function until (what, fn, ms = DEADLINE_MS) {
  const end = Date.now() + ms
  let last
  for (;;) {
    try {
      const v = await fn()
      if (v) return v
    } catch (e) { last = e }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

const file = (name) => join(MOUNT, name)
const read = (name) => { try { return readFileSync(file(name)) } catch (e) { if (e.code === 'ENOENT') return null; throw e } }
const served = (name, value) => until(`the agent to serve ${name}`, () => { const b = read(name); return b && b.equals(Buffer.from(value, 'utf8')) })
const gone = (name) => until(`${name} to leave the mount`, () => read(name) === null)

async function admin (method, path, body) {
  const r = await fetch(`${URL}/api/v1${path}`, {
    method,
    headers: { Authorization: `Bearer ${ADMIN}`, 'Content-Type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined
  })
  return { status: r.status, json: await r.json().catch(() => null) }
}

// A call to the agent's socket API, as an app makes it.
function sock (method, path, body) {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: SOCKET, method, path, headers: body ? { 'Content-Type': 'application/json' } : {} }, (res) => {
      const chunks = []
      res.on('data', (c) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks) }))
    })
    req.on('error', reject)
    if (body) req.write(JSON.stringify(body))
    req.end()
  })
}

mkdirSync(OUT, { recursive: true })
const browser = await chromium.launch({
  executablePath: env('CHROMIUM'),
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage']
})
const context = await browser.newContext({ viewport: { width: 1440, height: 900 } })
const responses = []
const requests = []
const pageErrors = []
context.on('request', (r) => requests.push({ url: r.url(), body: r.postDataBuffer() }))
context.on('response', (r) => responses.push(r.body().then((b) => ({ url: r.url(), body: b }), () => ({ url: r.url(), body: Buffer.alloc(0) }))))
const page = await context.newPage()
page.on('pageerror', (e) => pageErrors.push(e.message))

const row = (name) => page.locator(`.table.secrets .tr[data-secret="${name}"]`)
const reloadSecrets = async () => { await page.goto(`${URL}/studio/#/secrets`); await page.reload(); await page.waitForSelector('.counts') }

try {
  // --- sign in
  await page.goto(`${URL}/studio/`)
  await page.fill('#token', ADMIN)
  await page.click('form.signin-card button[type=submit]')
  await page.waitForSelector('.counts')
  const cookies = await context.cookies()
  const session = cookies.find((c) => c.name === 'fyvault_session')
  assert.ok(session && session.httpOnly && session.sameSite === 'Strict', 'an HttpOnly SameSite=Strict session cookie')
  assert.equal(await page.evaluate(() => document.cookie), '', 'scripts cannot read the session')
  log('signed in')

  // --- paste a .env of three lines, one commented: two rows
  const before = await page.locator('.table.secrets .tr[data-secret]').count()
  await page.click('text=+ Add secrets')
  await page.fill('#env-paste', [
    `# STUDIO_GAMMA=${V.commented}`,
    `STUDIO_ALPHA="${V.alpha.replace(/"/g, '\\"')}"`,
    `export STUDIO_BETA=${V.beta}`
  ].join('\n'))
  await page.click('#review-env')
  await page.waitForSelector('.dialog .review.adds')
  assert.deepEqual(await page.locator('.review.adds li code').allTextContents(), ['STUDIO_ALPHA', 'STUDIO_BETA'])
  assert.equal(await page.locator('.review.malformed').count(), 0)
  await page.click('#confirm-add')
  await row('STUDIO_BETA').waitFor()
  await row('STUDIO_ALPHA').waitFor()
  assert.equal(await page.locator('.table.secrets .tr[data-secret]').count(), before + 2, 'two rows added')
  assert.equal(await row('STUDIO_GAMMA').count(), 0, 'the commented line added nothing')
  assert.equal(await row('STUDIO_ALPHA').locator('.version').textContent(), 'v1')
  log('.env imported')

  // --- the agent serves both values, byte-exact
  await served('STUDIO_ALPHA', V.alpha)
  await served('STUDIO_BETA', V.beta)
  assert.equal(read('STUDIO_GAMMA'), null)
  log('agent serves both values exactly')

  // --- append only: a name with a value is skipped, a malformed line listed by number
  await page.click('text=+ Add secrets')
  await page.fill('#env-paste', `STUDIO_BETA=other-${rand}\nthis is not a pair\n`)
  await page.click('#review-env')
  await page.waitForSelector('.dialog .review.skips')
  assert.deepEqual(await page.locator('.review.skips li code').allTextContents(), ['STUDIO_BETA'])
  assert.match(await page.locator('.review.malformed li').textContent(), /^line 2: there is no = sign/)
  assert.ok(await page.locator('#confirm-add').isDisabled(), 'nothing to add')
  await page.click('.dialog .dialog-actions button.ghost')
  assert.ok(read('STUDIO_BETA').equals(Buffer.from(V.beta)), 'never overwritten')

  // --- an app asks for a name that does not exist: the missing bar; adding it clears it
  assert.equal(read('STUDIO_LATE'), null, 'STUDIO_LATE does not exist yet')
  await until('the missing bar for STUDIO_LATE', async () => {
    await reloadSecrets()
    return page.locator('.missing-bar[data-secret="STUDIO_LATE"]').count()
  }, 20_000)
  {
    assert.match(await page.locator('#missing-count').textContent(), /^[1-9]\d* missing$/)
    await page.click('.missing-bar[data-secret="STUDIO_LATE"] button')
    assert.equal(await page.inputValue('#add-name'), 'STUDIO_LATE')
    await page.fill('#add-value', V.late)
    await page.click('#add-one')
    await page.click('#confirm-add')
    await row('STUDIO_LATE').waitFor()
    assert.equal(await page.locator('.missing-bar[data-secret="STUDIO_LATE"]').count(), 0, 'adding it clears the bar')
    await served('STUDIO_LATE', V.late)
    log('missing bar shown and cleared')
  }

  // --- the policy toggle persists across a reload
  const put = page.waitForResponse((r) => r.request().method() === 'PUT' && r.url().includes('/secrets/STUDIO_BETA/policy'))
  await row('STUDIO_BETA').locator('button[data-policy="user"]').click()
  const answer = await put
  {
    assert.equal(answer.status(), 200)
    await reloadSecrets()
    assert.equal(await row('STUDIO_BETA').locator('button[data-policy="user"]').getAttribute('aria-pressed'), 'true')
    await row('STUDIO_BETA').locator('button[data-policy="creator"]').click()
    await until('creator again', async () => { await reloadSecrets(); return (await row('STUDIO_BETA').locator('button[data-policy="creator"]').getAttribute('aria-pressed')) === 'true' })
    log('policy toggle persists')
  }

  // --- rotate from the page reaches the agent
  await row('STUDIO_ALPHA').locator('text=Rotate').click()
  assert.equal(await page.inputValue('#rotate-grace'), '300', "the environment's grace by default")
  await page.fill('#rotate-value', V.alpha2)
  await page.click('#confirm-rotate')
  await served('STUDIO_ALPHA', V.alpha2)
  await until('v2 on the page', async () => (await row('STUDIO_ALPHA').locator('.version').textContent()) === 'v2')
  log('rotation reached the agent')

  // --- revoke by typing the name reaches the agent
  await row('STUDIO_BETA').locator('text=Revoke').click()
  await page.fill('#revoke-confirm', 'STUDIO_BET')
  assert.ok(await page.locator('#confirm-revoke').isDisabled(), 'the exact name is needed')
  await page.fill('#revoke-confirm', 'STUDIO_BETA')
  await page.click('#confirm-revoke')
  await gone('STUDIO_BETA')
  await until('the revoked row', async () => (await row('STUDIO_BETA').getAttribute('class')).includes('is-revoked'))
  log('revocation reached the agent')

  // --- a provider token: shown once, works against the provider API, never shown again
  await page.goto(`${URL}/studio/#/tokens`)
  await page.click('#new-provider-token')
  await page.selectOption('#token-provider', PROVIDER)
  await page.fill('#token-label', 'studio test')
  await page.click('#create-token')
  const token = (await page.locator('#issued-token').textContent()).trim()
  assert.match(token, /^fvprov_[A-Za-z0-9]+$/)
  await page.click('#copy-token')
  await until('the copy button to answer', async () => /Copied|Selected/.test(await page.locator('#copy-token').textContent()))
  await page.click('#done-token')
  assert.ok(!(await page.content()).includes(token), 'gone from the page')
  await page.reload()
  await page.waitForSelector('.table.tokens')
  assert.ok(!(await page.content()).includes(token), 'never shown again')
  const push = await fetch(`${URL}/api/v1/orgs/${ORG}/providers/${PROVIDER}/push`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ secret_name: 'STUDIO_PROVIDED', environment: ENVIRONMENT, value: V.provided })
  })
  assert.equal(push.status, 201, 'the new token works against the provider API')
  await served('STUDIO_PROVIDED', V.provided)
  // Revoked from the page, it stops working.
  const tokenId = await page.evaluate(async (org) => {
    const r = await fetch(`/api/v1/admin/tokens?org_id=${org}`)
    return (await r.json()).tokens.find((t) => t.label === 'studio test').token_id
  }, ORG)
  page.once('dialog', (d) => d.accept())
  await page.locator(`.table.tokens .tr[data-token="${tokenId}"] button.danger`).click()
  await until('the revoked token row', async () => (await page.locator(`.table.tokens .tr[data-token="${tokenId}"]`).getAttribute('class')).includes('is-revoked'))
  const revokedUse = await fetch(`${URL}/api/v1/whoami`, { headers: { Authorization: `Bearer ${token}` } })
  assert.equal(revokedUse.status, 401, 'a revoked token fails')
  log('provider token shown once, works, revoked from the page')

  // --- the audit page, filtered, names the admin for studio changes
  await page.goto(`${URL}/studio/#/audit`)
  await page.waitForSelector('#f-secret')
  await page.waitForSelector('.table.audit')
  await page.fill('#f-secret', 'STUDIO_ALPHA')
  const filtered = page.waitForResponse((r) => r.url().includes('/audit?') && r.url().includes('secret=STUDIO_ALPHA'))
  await page.click('#f-apply')
  await filtered
  await until('the filtered rows', async () => {
    const names = await page.locator('.table.audit .tr:not(.th) .name').allTextContents()
    return names.length >= 2 && names.every((n) => n.startsWith('STUDIO_ALPHA'))
  })
  const trail = await page.$$eval('.table.audit .tr:not(.th)', (rows) =>
    rows.map((r) => [r.querySelector('.badge').textContent, r.querySelector('.actor').textContent]))
  const writes = trail.filter(([action]) => action === 'issued' || action === 'rotated')
  assert.deepEqual(writes.map(([a]) => a).sort(), ['issued', 'rotated'], JSON.stringify(trail))
  assert.ok(writes.every(([, actor]) => /^admin:tok_/.test(actor)), 'the studio changes name the admin')
  assert.ok(trail.some(([a]) => a === 'accessed'), 'the agent reads show too')
  log('audit page')

  // --- bad input: names with HTML are refused and never rendered as HTML; oversized pastes
  await page.goto(`${URL}/studio/#/secrets`)
  await page.waitForSelector('.counts')
  await page.click('text=+ Add secrets')
  await page.fill('#env-paste', '<img src=x onerror="window.__xss=1">=v\n<b>BOLD</b>=v\n')
  await page.click('#review-env')
  await page.waitForSelector('.dialog .review.malformed')
  assert.deepEqual((await page.locator('.review.malformed li').allTextContents()).map((t) => t.slice(0, 7)), ['line 1:', 'line 2:'])
  assert.equal(await page.locator('.dialog img, .dialog b').count(), 0, 'no markup rendered')
  await page.click('.dialog .dialog-actions button.ghost')
  await page.fill('#add-name', '<b>X</b>')
  await page.fill('#add-value', 'v')
  await page.click('#add-one')
  assert.match(await page.locator('#add-error').textContent(), /The name must be/)
  const refused = await page.evaluate(async ([org, env]) => {
    const s = await (await fetch('/studio/session')).json()
    const r = await fetch(`/api/v1/admin/orgs/${org}/environments/${env}/secrets`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-Fyvault-Csrf': s.csrf },
      body: JSON.stringify({ secret_name: '<b>X</b>', value: 'v' })
    })
    return { status: r.status, body: await r.json() }
  }, [ORG, ENVIRONMENT])
  assert.equal(refused.status, 400)
  assert.equal(refused.body.error.code, 'invalid_secret_name')
  await page.fill('#env-paste', `BIG=${'x'.repeat(1100 * 1024)}\n`)
  await page.click('#review-env')
  assert.match(await page.locator('#add-error').textContent(), /This paste is 1\.1 MiB; the studio reads at most 1 MiB/)
  assert.equal(await page.evaluate(() => window.__xss), undefined)
  assert.equal(await page.locator('.table.secrets b, .table.secrets img').count(), 0)
  log('bad input refused')

  // --- the connect page, end to end: an app asks its agent for a link, the user pastes their
  // key in the browser (sealed there), the agent serves it for that user; the link is single use
  {
    const byok = await admin('PUT', `/orgs/${ORG}/environments/${ENVIRONMENT}/secrets/STUDIO_BYOK/policy`, { policy: 'user' })
    assert.equal(byok.status, 200, JSON.stringify(byok.json))
    const link = await until('a connect link from the agent', async () => {
      const r = await sock('POST', '/v1/connect', { secret_name: 'STUDIO_BYOK', user_id: 'alice@example.com' })
      return r.status === 200 && JSON.parse(r.body)
    })
    assert.ok(link.url.startsWith(`${URL}/connect/`), link.url)
    await page.goto(link.url)
    await page.fill('#key', V.byok)
    await page.click('#connect-submit')
    await page.waitForSelector('#link-state[data-code="connected"]')
    await until("the agent to serve alice's key", async () => {
      const r = await sock('GET', '/v1/secrets/STUDIO_BYOK?user=alice%40example.com')
      return r.status === 200 && r.body.equals(Buffer.from(V.byok))
    })
    assert.equal(read('STUDIO_BYOK'), null, 'user values are not files in the mount')
    await page.goto(link.url)
    await page.waitForSelector('#link-state')
    assert.equal(await page.locator('#link-state').getAttribute('data-code'), 'link_used')
    assert.equal(await page.locator('#link-state h1').textContent(), 'This link has already been used')
    // alice's read reaches the vault as an access event with her user id: one user in 7 days
    await until('the users count to show alice', async () => {
      await reloadSecrets()
      return /^1 user · last 7d$/.test(await row('STUDIO_BYOK').locator('.users').textContent())
    })
    log('connect page: sealed in the browser, served by the agent, single use')
  }

  // --- the connect page: a link that is not valid says so clearly
  await page.goto(`${URL}/connect/fvlink_not_a_real_link`)
  await page.waitForSelector('#link-state')
  const code = await page.locator('#link-state').getAttribute('data-code')
  const title = await page.locator('#link-state h1').textContent()
  assert.equal(code, 'link_unknown')
  assert.equal(title, 'This link is not valid')

  // --- screenshots of the Secrets page, desktop and phone (an app has just asked for a key
  // nobody set, so the missing bar shows when the agent reports `missing` reads)
  assert.equal(read('OPENAI_API_KEY'), null)
  await page.goto(`${URL}/studio/#/secrets`)
  await page.waitForSelector('.table.secrets')
  {
    await until('the OPENAI_API_KEY bar', async () => {
      await reloadSecrets()
      return page.locator('.missing-bar[data-secret="OPENAI_API_KEY"]').count()
    })
    assert.match(await page.locator('.missing-bar[data-secret="OPENAI_API_KEY"]').textContent(), /OPENAI_API_KEY is missing\. First run will fail until set\./)
  }
  await page.screenshot({ path: join(OUT, 'secrets-1440x900.png') })
  const phone = await context.newPage()
  phone.on('pageerror', (e) => pageErrors.push(e.message))
  await phone.setViewportSize({ width: 390, height: 844 })
  await phone.goto(`${URL}/studio/#/secrets`)
  await phone.waitForSelector('.table.secrets')
  await phone.screenshot({ path: join(OUT, 'secrets-390x844.png') })
  assert.ok(await phone.evaluate(() => document.documentElement.scrollWidth <= 390), 'no sideways scrolling at 390 px')
  // …and works there: add a secret on the phone, the agent serves it.
  await phone.click('text=+ Add secrets')
  await phone.fill('#add-name', 'STUDIO_MOBILE')
  await phone.fill('#add-value', V.mobile)
  await phone.click('#add-one')
  const box = await phone.locator('.dialog').boundingBox()
  assert.ok(box.x >= 0 && box.x + box.width <= 390, 'the dialog fits')
  await phone.click('#confirm-add')
  await phone.locator('.table.secrets .tr[data-secret="STUDIO_MOBILE"]').waitFor()
  await served('STUDIO_MOBILE', V.mobile)
  await phone.close()
  assert.ok(existsSync(join(OUT, 'secrets-1440x900.png')) && existsSync(join(OUT, 'secrets-390x844.png')))
  log('screenshots and the phone layout')

  // --- sign out ends the session
  await page.click('#signout')
  await page.waitForSelector('#token')
  const after = await page.evaluate(async () => (await fetch('/api/v1/admin/orgs')).status)
  assert.equal(after, 401)
  log('signed out')

  // --- no response the browser received (and no request it sent) carries a test value
  const bodies = await Promise.all(responses)
  assert.ok(bodies.length > 20, `the browser received ${bodies.length} responses`)
  for (const [label, value] of Object.entries(V)) {
    const needle = Buffer.from(value, 'utf8')
    for (const r of bodies) assert.ok(!r.body.includes(needle), `the ${label} value is in the response of ${r.url}`)
    for (const r of requests) assert.ok(!r.body || !r.body.includes(needle), `the ${label} value was sent to ${r.url}`)
  }
  log(`searched ${bodies.length} responses and ${requests.length} requests: no test value`)
  assert.deepEqual(pageErrors, [], 'no script errors')
} finally {
  await browser.close()
}
