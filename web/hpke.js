// Sealing to a fyvault environment key in the browser: HPKE (RFC 9180) base mode, single shot,
// DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM — exactly what the Rust side opens
// (src/crypto.rs; the recipe in docs/vault.md, "Sealing a value yourself").
//
// WebCrypto only: X25519 for the key agreement, HMAC-SHA256 for HKDF (HPKE needs Extract and
// Expand as separate steps, which WebCrypto's HKDF does not offer), AES-GCM for the AEAD. No
// dependencies, no build step: a plain ES module that the studio, the connect page and
// `node --test` (tests/studio/hpke.test.mjs) import as it is.
//
//   import { sealValue } from './hpke.js'
//   const sealed = await sealValue({ publicKey, orgId, environment, secretName, value })
//   // → base64(enc || ciphertext), the `sealed_value` of a push or rotate

const subtle = globalThis.crypto.subtle

/** HPKE's `info` for every fyvault sealed value. */
export const INFO = 'fyvault sealed secret v1'

/** The AEADs this module knows (fyvault seals with AES-256-GCM; AES-128-GCM is here because
 *  RFC 9180's X25519 + HKDF-SHA256 test vectors use it). */
export const AEAD = Object.freeze({
  AES_128_GCM: Object.freeze({ id: 0x0001, nk: 16 }),
  AES_256_GCM: Object.freeze({ id: 0x0002, nk: 32 })
})

const KEM_ID = 0x0020 // DHKEM(X25519, HKDF-SHA256)
const KDF_ID = 0x0001 // HKDF-SHA256
const N_SECRET = 32 // KEM shared secret
const N_PK = 32 // X25519 public key, and `enc`
const N_N = 12 // AEAD nonce
const N_H = 32 // SHA-256 output
const N_T = 16 // AEAD tag
const MODE_BASE = 0x00

const encoder = new TextEncoder()
const utf8 = (s) => encoder.encode(s)

function concat (...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let at = 0
  for (const p of parts) {
    out.set(p, at)
    at += p.length
  }
  return out
}

function i2osp (n, len) {
  const out = new Uint8Array(len)
  for (let i = len - 1; i >= 0 && n > 0; i--) {
    out[i] = n & 0xff
    n = Math.floor(n / 256)
  }
  return out
}

const KEM_SUITE = concat(utf8('KEM'), i2osp(KEM_ID, 2))
const hpkeSuite = (aead) =>
  concat(utf8('HPKE'), i2osp(KEM_ID, 2), i2osp(KDF_ID, 2), i2osp(aead.id, 2))

async function hmac (key, data) {
  // HMAC pads its key with zeros to the block size, so an empty key (HKDF's default salt) is the
  // same as Nh zero bytes — which WebCrypto accepts where it refuses a zero-length key.
  const raw = key.length === 0 ? new Uint8Array(N_H) : key
  const k = await subtle.importKey('raw', raw, { name: 'HMAC', hash: 'SHA-256' }, false, ['sign'])
  return new Uint8Array(await subtle.sign('HMAC', k, data))
}

const extract = (salt, ikm) => hmac(salt, ikm)

async function expand (prk, info, len) {
  const out = new Uint8Array(len)
  let t = new Uint8Array(0)
  for (let i = 1, at = 0; at < len; i++) {
    t = await hmac(prk, concat(t, info, Uint8Array.of(i)))
    out.set(t.subarray(0, Math.min(t.length, len - at)), at)
    at += t.length
  }
  return out
}

const V1 = utf8('HPKE-v1')
const labeledExtract = (suite, salt, label, ikm) =>
  extract(salt, concat(V1, suite, utf8(label), ikm))
const labeledExpand = (suite, prk, label, info, len) =>
  expand(prk, concat(i2osp(len, 2), V1, suite, utf8(label), info), len)

// --- X25519 through WebCrypto (keys as raw 32-byte strings at this module's edges)

// PKCS#8 wrapping of a raw X25519 private key (RFC 8410): WebCrypto imports private keys only so.
const PKCS8_X25519 = Uint8Array.of(
  0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20
)

function importPrivate (sk) {
  if (sk.length !== 32) throw new Error('an X25519 private key is 32 bytes')
  return subtle.importKey('pkcs8', concat(PKCS8_X25519, sk), { name: 'X25519' }, true, ['deriveBits'])
}

function importPublic (pk) {
  if (pk.length !== N_PK) throw new Error('an X25519 public key is 32 bytes')
  return subtle.importKey('raw', pk, { name: 'X25519' }, false, [])
}

async function publicOf (privateKey) {
  const jwk = await subtle.exportKey('jwk', privateKey)
  return fromBase64(jwk.x)
}

async function dh (privateKey, publicKeyBytes) {
  let shared
  try {
    const pub = await importPublic(publicKeyBytes)
    shared = new Uint8Array(await subtle.deriveBits({ name: 'X25519', public: pub }, privateKey, 256))
  } catch (e) {
    throw new Error('the public key is not a usable X25519 key')
  }
  // A low-order point gives an all-zero secret (RFC 9180 §7.1.4): WebCrypto refuses it; so do we.
  if (shared.every((b) => b === 0)) throw new Error('the public key is not a usable X25519 key')
  return shared
}

/** DeriveKeyPair (RFC 9180 §7.1.3) for X25519: deterministic keys from input keying material. */
export async function deriveKeyPair (ikm) {
  const prk = await labeledExtract(KEM_SUITE, new Uint8Array(0), 'dkp_prk', ikm)
  const sk = await labeledExpand(KEM_SUITE, prk, 'sk', new Uint8Array(0), 32)
  const privateKey = await importPrivate(sk)
  return { privateKey, sk, pk: await publicOf(privateKey) }
}

async function ephemeralKeyPair () {
  const pair = await subtle.generateKey({ name: 'X25519' }, true, ['deriveBits'])
  const pk = new Uint8Array(await subtle.exportKey('raw', pair.publicKey))
  return { privateKey: pair.privateKey, pk }
}

async function extractAndExpand (dhBytes, kemContext) {
  const prk = await labeledExtract(KEM_SUITE, new Uint8Array(0), 'eae_prk', dhBytes)
  return labeledExpand(KEM_SUITE, prk, 'shared_secret', kemContext, N_SECRET)
}

async function keySchedule (aead, sharedSecret, info) {
  const suite = hpkeSuite(aead)
  const empty = new Uint8Array(0)
  const pskIdHash = await labeledExtract(suite, empty, 'psk_id_hash', empty)
  const infoHash = await labeledExtract(suite, empty, 'info_hash', info)
  const keyScheduleContext = concat(Uint8Array.of(MODE_BASE), pskIdHash, infoHash)
  const secret = await labeledExtract(suite, sharedSecret, 'secret', empty)
  return {
    keyScheduleContext,
    secret,
    key: await labeledExpand(suite, secret, 'key', keyScheduleContext, aead.nk),
    baseNonce: await labeledExpand(suite, secret, 'base_nonce', keyScheduleContext, N_N),
    exporterSecret: await labeledExpand(suite, secret, 'exp', keyScheduleContext, N_H)
  }
}

function context (aead, schedule) {
  const keyPromise = subtle.importKey('raw', schedule.key, { name: 'AES-GCM' }, false, [
    'encrypt',
    'decrypt'
  ])
  const nonce = (seq) => {
    const n = schedule.baseNonce.slice()
    const s = i2osp(seq, N_N)
    for (let i = 0; i < N_N; i++) n[i] ^= s[i]
    return n
  }
  const params = (seq, aad) => ({ name: 'AES-GCM', iv: nonce(seq), additionalData: aad, tagLength: 8 * N_T })
  return {
    ...schedule,
    nonce,
    async seal (seq, aad, plaintext) {
      return new Uint8Array(await subtle.encrypt(params(seq, aad), await keyPromise, plaintext))
    },
    async open (seq, aad, ciphertext) {
      try {
        return new Uint8Array(await subtle.decrypt(params(seq, aad), await keyPromise, ciphertext))
      } catch (e) {
        throw new Error('the sealed value does not open with this key and place')
      }
    }
  }
}

/**
 * SetupBaseS (RFC 9180 §5.1.1): the sender's context for recipient key `pkR` (32 raw bytes).
 * `ikmE` (tests only) makes the ephemeral key deterministic, as in the RFC's test vectors;
 * without it the ephemeral key is fresh from WebCrypto's random source.
 */
export async function setupBaseS (pkR, info, { aead = AEAD.AES_256_GCM, ikmE } = {}) {
  const eph = ikmE ? await deriveKeyPair(ikmE) : await ephemeralKeyPair()
  const dhBytes = await dh(eph.privateKey, pkR)
  const enc = eph.pk
  const sharedSecret = await extractAndExpand(dhBytes, concat(enc, pkR))
  return { enc, sharedSecret, ...context(aead, await keySchedule(aead, sharedSecret, info)) }
}

/** SetupBaseR (RFC 9180 §5.1.1): the recipient's context for `enc`, with private key `skR`. */
export async function setupBaseR (enc, skR, info, { aead = AEAD.AES_256_GCM } = {}) {
  const privateKey = await importPrivate(skR)
  const pkR = await publicOf(privateKey)
  const dhBytes = await dh(privateKey, enc)
  const sharedSecret = await extractAndExpand(dhBytes, concat(enc, pkR))
  return { sharedSecret, ...context(aead, await keySchedule(aead, sharedSecret, info)) }
}

// --- fyvault's envelope

/** The AAD binding a sealed value to its place: `fyvault-v1|org|environment|secret_name`. */
export const aadFor = (orgId, environment, secretName) =>
  utf8(`fyvault-v1|${orgId}|${environment}|${secretName}`)

/** Standard base64 (with padding) of bytes. */
export function toBase64 (bytes) {
  let s = ''
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000))
  }
  return btoa(s)
}

/** Bytes of standard or URL-safe base64 (padding optional). */
export function fromBase64 (text) {
  const std = text.trim().replace(/-/g, '+').replace(/_/g, '/')
  const bin = atob(std + '='.repeat((4 - (std.length % 4)) % 4))
  const out = new Uint8Array(bin.length)
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i)
  return out
}

/** Seals `plaintext` (bytes) to the raw public key for `aad`: enc || ciphertext (bytes). */
export async function seal (pkR, plaintext, aad, opts = {}) {
  const ctx = await setupBaseS(pkR, utf8(INFO), opts)
  return concat(ctx.enc, await ctx.seal(0, aad, plaintext))
}

/** Opens enc || ciphertext with the raw private key (tests; browsers never hold one). */
export async function open (skR, sealed, aad, opts = {}) {
  if (sealed.length < N_PK + N_T) throw new Error('a sealed value is at least 48 bytes')
  const ctx = await setupBaseR(sealed.subarray(0, N_PK), skR, utf8(INFO), opts)
  return ctx.open(0, aad, sealed.subarray(N_PK))
}

/**
 * The `sealed_value` of a push or rotate: `value` (a string, sealed as its UTF-8 bytes, or a
 * Uint8Array, sealed as is) sealed to `publicKey` (base64, as the public-key endpoint gives it)
 * for the place (orgId, environment, secretName). Returns base64.
 */
export async function sealValue ({ publicKey, orgId, environment, secretName, value }) {
  const pk = fromBase64(publicKey)
  const bytes = typeof value === 'string' ? utf8(value) : value
  try {
    return toBase64(await seal(pk, bytes, aadFor(orgId, environment, secretName)))
  } finally {
    // The plaintext copy this module made; the caller's string is the caller's to drop.
    if (bytes !== value) bytes.fill(0)
  }
}
