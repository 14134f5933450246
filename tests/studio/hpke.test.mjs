// web/hpke.js against RFC 9180 and against the seals fyvault's Rust side makes and opens.
// Run: node --test tests/studio/ (scripts/test does). No npm packages: WebCrypto only.
//
// RFC 9180 has no test vector for X25519 + HKDF-SHA256 + AES-256-GCM (its Appendix A pairs that
// KEM and KDF with AES-128-GCM, A.1). So: A.1.1 (base mode) checks every step the two suites
// share — DeriveKeyPair, the DH and shared secret, the key schedule, the nonces and the AEAD —
// with the AEAD's key length as the one parameter; the AES-256-GCM suite itself is checked by
// opening the documented pyhpke seal (docs/vault.md) and, in tests/interop_sealing.rs, by the
// Rust side opening what this module seals.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'

import {
  AEAD, INFO, aadFor, deriveKeyPair, fromBase64, open, seal, sealValue, setupBaseR, setupBaseS,
  toBase64
} from '../../web/hpke.js'

const hex = (s) => Uint8Array.from(s.replace(/\s+/g, '').match(/../g) ?? [], (b) => parseInt(b, 16))
const toHex = (b) => Buffer.from(b).toString('hex')

// RFC 9180, Appendix A.1.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM, Base.
const A11 = {
  info: '4f6465206f6e2061204772656369616e2055726e',
  ikmE: '7268600d403fce431561aef583ee1613527cff655c1343f29812e66706df3234',
  pkEm: '37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431',
  skEm: '52c4a758a802cd8b936eceea314432798d5baf2d7e9235dc084ab1b9cfa2f736',
  ikmR: '6db9df30aa07dd42ee5e8181afdb977e538f5e1fec8a06223f33f7013e525037',
  pkRm: '3948cfe0ad1ddb695d780e59077195da6c56506b027329794ab02bca80815c4d',
  skRm: '4612c550263fc8ad58375df3f557aac531d26850903e55a9f23f21d8534e8ac8',
  enc: '37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431',
  shared_secret: 'fe0e18c9f024ce43799ae393c7e8fe8fce9d218875e8227b0187c04e7d2ea1fc',
  key_schedule_context:
    '00725611c9d98c07c03f60095cd32d400d8347d45ed67097bbad50fc56da742d07cb6cffde367bb0565ba28bb02c90744a20f5ef37f30523526106f637abb05449',
  secret: '12fff91991e93b48de37e7daddb52981084bd8aa64289c3788471d9a9712f397',
  key: '4531685d41d65f03dc48f6b8302c05b0',
  base_nonce: '56d890e5accaaf011cff4b7d',
  exporter_secret: '45ff1c2e220db587171952c0592d5f5ebe103f1561a2614e38f2ffd47e99e3f8',
  pt: '4265617574792069732074727574682c20747275746820626561757479',
  encryptions: [
    [0, '436f756e742d30', '56d890e5accaaf011cff4b7d',
      'f938558b5d72f1a23810b4be2ab4f84331acc02fc97babc53a52ae8218a355a96d8770ac83d07bea87e13c512a'],
    [1, '436f756e742d31', '56d890e5accaaf011cff4b7c',
      'af2d7e9ac9ae7e270f46ba1f975be53c09f8d875bdc8535458c2494e8a6eab251c03d0c22a56b8ca42c2063b84'],
    [2, '436f756e742d32', '56d890e5accaaf011cff4b7f',
      '498dfcabd92e8acedc281e85af1cb4e3e31c7dc394a1ca20e173cb72516491588d96a19ad4a683518973dcc180'],
    [4, '436f756e742d34', '56d890e5accaaf011cff4b79',
      '583bd32bc67a5994bb8ceaca813d369bca7b2a42408cddef5e22f880b631215a09fc0012bc69fccaa251c0246d'],
    [255, '436f756e742d323535', '56d890e5accaaf011cff4b82',
      '7175db9717964058640a3a11fb9007941a5d1757fda1a6935c805c21af32505bf106deefec4a49ac38d71c9e0a'],
    [256, '436f756e742d323536', '56d890e5accaaf011cff4a7d',
      '957f9800542b0b8891badb026d79cc54597cb2d225b54c00c5238c25d05c30e3fbeda97d2e0e1aba483a2df9f2']
  ]
}

test('RFC 9180 A.1.1: DeriveKeyPair gives the vector keys', async () => {
  const e = await deriveKeyPair(hex(A11.ikmE))
  assert.equal(toHex(e.sk), A11.skEm)
  assert.equal(toHex(e.pk), A11.pkEm)
  const r = await deriveKeyPair(hex(A11.ikmR))
  assert.equal(toHex(r.sk), A11.skRm)
  assert.equal(toHex(r.pk), A11.pkRm)
})

test('RFC 9180 A.1.1: SetupBaseS, the key schedule and every encryption', async () => {
  const ctx = await setupBaseS(hex(A11.pkRm), hex(A11.info), { aead: AEAD.AES_128_GCM, ikmE: hex(A11.ikmE) })
  assert.equal(toHex(ctx.enc), A11.enc)
  assert.equal(toHex(ctx.sharedSecret), A11.shared_secret)
  assert.equal(toHex(ctx.keyScheduleContext), A11.key_schedule_context)
  assert.equal(toHex(ctx.secret), A11.secret)
  assert.equal(toHex(ctx.key), A11.key)
  assert.equal(toHex(ctx.baseNonce), A11.base_nonce)
  assert.equal(toHex(ctx.exporterSecret), A11.exporter_secret)
  for (const [seq, aad, nonce, ct] of A11.encryptions) {
    assert.equal(toHex(ctx.nonce(seq)), nonce, `nonce ${seq}`)
    assert.equal(toHex(await ctx.seal(seq, hex(aad), hex(A11.pt))), ct, `ciphertext ${seq}`)
  }
})

test('RFC 9180 A.1.1: SetupBaseR opens every encryption, and nothing altered', async () => {
  const ctx = await setupBaseR(hex(A11.enc), hex(A11.skRm), hex(A11.info), { aead: AEAD.AES_128_GCM })
  assert.equal(toHex(ctx.sharedSecret), A11.shared_secret)
  assert.equal(toHex(ctx.key), A11.key)
  for (const [seq, aad, , ct] of A11.encryptions) {
    assert.equal(toHex(await ctx.open(seq, hex(aad), hex(ct))), A11.pt)
  }
  const [seq, aad, , ct] = A11.encryptions[0]
  const bent = hex(ct)
  bent[3] ^= 1
  await assert.rejects(ctx.open(seq, hex(aad), bent), /does not open/)
  await assert.rejects(ctx.open(seq + 1, hex(aad), hex(ct)), /does not open/)
})

// docs/vault.md's worked example: sealed by pyhpke with fyvault's suite (AES-256-GCM).
const DOC = {
  privateKey: 'AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=',
  publicKey: 'B6N8vBQgk8i3VdwbEOhstCY3StFqqFPtC9/AsrhtHHw=',
  place: ['org_test', 'production', 'STRIPE_SK'],
  value: 'sk_live_test_vector',
  sealed: '79FTdC/k3L4Af4GiKJLLpdBXSo8td4LlDo7YRfv8EB01CwHRxQpQ+/L4/2rk8qJf5zLKrbrZSLm7lOPDHimR/65pHQ=='
}

test("the documented AES-256-GCM seal (pyhpke) opens, bound to its place", async () => {
  const docs = readFileSync(new URL('../../docs/vault.md', import.meta.url), 'utf8')
  for (const s of [DOC.privateKey, DOC.publicKey, DOC.sealed, DOC.value, INFO]) {
    assert.ok(docs.includes(s), `docs/vault.md gives ${s}`)
  }
  const sk = fromBase64(DOC.privateKey)
  assert.equal(toBase64((await deriveKeyPairFromRaw(sk)).pk), DOC.publicKey)
  const opened = await open(sk, fromBase64(DOC.sealed), aadFor(...DOC.place))
  assert.equal(new TextDecoder().decode(opened), DOC.value)
  await assert.rejects(open(sk, fromBase64(DOC.sealed), aadFor('org_test', 'production', 'OTHER')), /does not open/)
})

// The public half of a raw private key, through the module's own receiver setup.
async function deriveKeyPairFromRaw (sk) {
  const { subtle } = globalThis.crypto
  const pkcs8 = Uint8Array.from([...hex('302e020100300506032b656e04220420'), ...sk])
  const key = await subtle.importKey('pkcs8', pkcs8, { name: 'X25519' }, true, ['deriveBits'])
  return { pk: fromBase64((await subtle.exportKey('jwk', key)).x) }
}

test('sealValue: fyvault envelope, fresh every time, opens byte-exact', async () => {
  const sk = fromBase64(DOC.privateKey)
  const place = { publicKey: DOC.publicKey, orgId: 'org_a', environment: 'production', secretName: 'API_KEY' }
  const big = new Uint8Array(64 * 1024).map((_, i) => (i * 7) & 0xff)
  for (const value of ['x', 'key 🔑 ✓\r\n', big]) {
    const a = await sealValue({ ...place, value })
    const b = await sealValue({ ...place, value })
    assert.notEqual(a, b, 'a fresh ephemeral key per seal')
    const raw = fromBase64(a)
    const len = typeof value === 'string' ? new TextEncoder().encode(value).length : value.length
    assert.equal(raw.length, 32 + len + 16, 'enc || ciphertext || tag')
    const opened = await open(sk, raw, aadFor('org_a', 'production', 'API_KEY'))
    const want = typeof value === 'string' ? new TextEncoder().encode(value) : value
    assert.deepEqual(opened, want)
    await assert.rejects(open(sk, raw, aadFor('org_a', 'staging', 'API_KEY')), /does not open/)
  }
  assert.equal(big[1], 7, "the caller's bytes are left alone")
})

test('keys that cannot be sealed to are refused', async () => {
  const aad = aadFor('o', 'e', 'N')
  const pt = new TextEncoder().encode('v')
  await assert.rejects(seal(new Uint8Array(32), pt, aad), /not a usable X25519 key/)
  await assert.rejects(seal(new Uint8Array(31), pt, aad), /not a usable X25519 key/)
  await assert.rejects(sealValue({ publicKey: 'AAAA', orgId: 'o', environment: 'e', secretName: 'N', value: 'v' }), /not a usable/)
})
