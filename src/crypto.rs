//! Sealing to an environment key (HPKE, RFC 9180 base mode) and token generation/hashing.
//!
//! Suite: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM. A sealed value is
//! `base64(enc || ciphertext)` where `enc` is the 32-byte encapsulated key. The AAD binds
//! `org_id | environment | secret_name`, so a sealed value moved to another place fails to open.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::secret::Secret;

type Kem = X25519HkdfSha256;
/// HPKE's `info` for every sealed value, as published next to every public key.
pub const INFO: &str = "fyvault sealed secret v1";
const ENC_LEN: usize = 32;
/// AES-GCM tag length.
const TAG_LEN: usize = 16;

/// The suite, as published next to every public key.
pub const SUITE: &str = "HPKE base mode: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM";
/// How the AAD is formed, as published next to every public key.
pub const AAD_FORMAT: &str = "fyvault-v1|{org_id}|{environment}|{secret_name}";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("public key is not 32 bytes of base64")]
    BadPublicKey,
    #[error("public key is a low-order X25519 point: nothing sealed to it would be secret")]
    LowOrderPublicKey,
    #[error("private key file does not hold a 32-byte base64 X25519 key")]
    BadPrivateKey,
    #[error("sealed value is not valid base64 of enc || ciphertext")]
    BadSealedValue,
    #[error("sealed value does not open with this environment key and place")]
    OpenFailed,
    #[error("sealing failed")]
    SealFailed,
}

/// The AAD that binds a sealed value to its place.
pub fn aad(org_id: &str, environment: &str, secret_name: &str) -> Vec<u8> {
    format!("fyvault-v1|{org_id}|{environment}|{secret_name}").into_bytes()
}

/// An environment's public key (safe to share).
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(<Kem as hpke::Kem>::PublicKey);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl PublicKey {
    /// Parses base64 of a 32-byte X25519 public key and checks that it can be sealed to: a
    /// low-order point (all zeros, and the other few the curve has) gives an all-zero shared
    /// secret, which HPKE refuses at seal time. Refused here so that no such key is ever
    /// registered (every later push would fail).
    pub fn from_base64(s: &str) -> Result<Self, CryptoError> {
        let raw = B64
            .decode(s.trim())
            .map_err(|_| CryptoError::BadPublicKey)?;
        let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(&raw)
            .map(PublicKey)
            .map_err(|_| CryptoError::BadPublicKey)?;
        // One trial encapsulation: the DH with a fresh ephemeral key fails exactly for the
        // low-order points.
        pk.seal(b"", b"")
            .map_err(|_| CryptoError::LowOrderPublicKey)?;
        Ok(pk)
    }

    pub fn to_base64(&self) -> String {
        B64.encode(self.0.to_bytes())
    }

    /// Seals `plaintext` to this key for one place; returns the base64 sealed value.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<String, CryptoError> {
        let (enc, ct) = hpke::single_shot_seal::<AesGcm256, HkdfSha256, Kem>(
            &OpModeS::Base,
            &self.0,
            INFO.as_bytes(),
            plaintext,
            aad,
        )
        .map_err(|_| CryptoError::SealFailed)?;
        let mut out = Vec::with_capacity(ENC_LEN + ct.len());
        out.extend_from_slice(&enc.to_bytes());
        out.extend_from_slice(&ct);
        Ok(B64.encode(out))
    }
}

/// An environment's private key: held only by the admin's file and the environment's agents.
pub struct PrivateKey(<Kem as hpke::Kem>::PrivateKey);

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey([REDACTED])")
    }
}

impl PrivateKey {
    /// Generates a fresh key pair from the OS random source.
    pub fn generate() -> (PrivateKey, PublicKey) {
        let (sk, pk) = Kem::gen_keypair();
        (PrivateKey(sk), PublicKey(pk))
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(<Kem as hpke::Kem>::sk_to_pk(&self.0))
    }

    /// A 32-byte key for `purpose`, derived from this private key (SHA-256 of a label and the
    /// key): whoever can forge a MAC under it holds the environment key anyway.
    pub fn derive_key(&self, purpose: &str) -> Zeroizing<[u8; 32]> {
        let raw = Zeroizing::new(self.0.to_bytes().to_vec());
        let mut h = Sha256::new();
        h.update(b"fyvault derived key v1|");
        h.update(purpose.as_bytes());
        h.update(b"|");
        h.update(&*raw);
        Zeroizing::new(h.finalize().into())
    }

    /// The key file's content: one line of base64.
    pub fn to_file_contents(&self) -> Secret {
        let raw = Zeroizing::new(self.0.to_bytes().to_vec());
        let mut s = B64.encode(&*raw).into_bytes();
        s.push(b'\n');
        Secret::new(s)
    }

    /// Parses a key file's content.
    pub fn from_file_contents(contents: &[u8]) -> Result<Self, CryptoError> {
        let text = std::str::from_utf8(contents).map_err(|_| CryptoError::BadPrivateKey)?;
        let raw = Zeroizing::new(
            B64.decode(text.trim())
                .map_err(|_| CryptoError::BadPrivateKey)?,
        );
        <Kem as hpke::Kem>::PrivateKey::from_bytes(&raw)
            .map(PrivateKey)
            .map_err(|_| CryptoError::BadPrivateKey)
    }

    /// Opens a base64 sealed value for one place.
    pub fn open(&self, sealed_b64: &str, aad: &[u8]) -> Result<Secret, CryptoError> {
        let raw = B64
            .decode(sealed_b64.as_bytes())
            .map_err(|_| CryptoError::BadSealedValue)?;
        if raw.len() < ENC_LEN + TAG_LEN {
            return Err(CryptoError::BadSealedValue);
        }
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&raw[..ENC_LEN])
            .map_err(|_| CryptoError::BadSealedValue)?;
        hpke::single_shot_open::<AesGcm256, HkdfSha256, Kem>(
            &OpModeR::Base,
            &self.0,
            &enc,
            INFO.as_bytes(),
            &raw[ENC_LEN..],
            aad,
        )
        .map(Secret::new)
        .map_err(|_| CryptoError::OpenFailed)
    }
}

/// Checks that a base64 sealed value is at least structurally well formed (the server cannot
/// open it; this only refuses garbage early). Returns the decoded length.
pub fn check_sealed_shape(sealed_b64: &str) -> Result<usize, CryptoError> {
    let raw = B64
        .decode(sealed_b64.as_bytes())
        .map_err(|_| CryptoError::BadSealedValue)?;
    if raw.len() < ENC_LEN + TAG_LEN {
        return Err(CryptoError::BadSealedValue);
    }
    Ok(raw.len() - ENC_LEN - TAG_LEN)
}

// ---------------------------------------------------------------------------------------------
// Tokens: PREFIX + base62(32 random bytes, 43 chars) + base62(CRC32 of the preceding, 6 chars).

/// The kinds of bearer token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    Provider,
    Agent,
    Admin,
}

impl TokenKind {
    pub fn prefix(self) -> &'static str {
        match self {
            TokenKind::Provider => "fvprov_",
            TokenKind::Agent => "fvagent_",
            TokenKind::Admin => "fvadmin_",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Provider => "provider",
            TokenKind::Agent => "agent",
            TokenKind::Admin => "admin",
        }
    }
}

const B62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const BODY_LEN: usize = 43;
const CRC_LEN: usize = 6;

/// Fixed-width base62 of a big-endian number.
fn base62(bytes: &[u8], width: usize) -> String {
    let mut num = bytes.to_vec();
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        let mut rem: u32 = 0;
        for b in num.iter_mut() {
            let acc = (rem << 8) | u32::from(*b);
            *b = (acc / 62) as u8;
            rem = acc % 62;
        }
        *slot = B62[rem as usize];
    }
    String::from_utf8(out).expect("base62 alphabet is ASCII")
}

fn crc_suffix(head: &str) -> String {
    base62(&crc32fast::hash(head.as_bytes()).to_be_bytes(), CRC_LEN)
}

/// A freshly generated token: shown once, then only its hash is kept.
pub fn generate_token(kind: TokenKind) -> Secret {
    token_with_prefix(kind.prefix())
}

/// Prefix of connect-link tokens (the credential in a connect link's URL).
pub const LINK_PREFIX: &str = "fvlink_";

/// A fresh connect-link token: the same shape as the other tokens, prefix [`LINK_PREFIX`].
pub fn generate_link_token() -> Secret {
    token_with_prefix(LINK_PREFIX)
}

/// Whether `s` has the shape and checksum of a connect-link token.
pub fn valid_link_token(s: &str) -> bool {
    let Some(rest) = s.strip_prefix(LINK_PREFIX) else {
        return false;
    };
    rest.len() == BODY_LEN + CRC_LEN
        && rest.bytes().all(|b| b.is_ascii_alphanumeric())
        && bool::from(
            crc_suffix(&s[..s.len() - CRC_LEN])
                .as_bytes()
                .ct_eq(&s.as_bytes()[s.len() - CRC_LEN..]),
        )
}

fn token_with_prefix(prefix: &str) -> Secret {
    let mut raw = Zeroizing::new([0u8; 32]);
    getrandom_fill(&mut raw[..]);
    let head = format!("{prefix}{}", base62(&raw[..], BODY_LEN));
    let token = format!("{head}{}", crc_suffix(&head));
    Secret::new(token.into_bytes())
}

fn getrandom_fill(buf: &mut [u8]) {
    use rand::TryRng as _;
    rand::rngs::SysRng
        .try_fill_bytes(buf)
        .expect("the OS random source failed");
}

/// Random identifier with a readable prefix (`org_…`, `prov_…`, `tok_…`): not secret.
pub fn random_id(prefix: &str) -> String {
    let mut raw = [0u8; 12];
    getrandom_fill(&mut raw);
    format!("{prefix}_{}", base62(&raw, 17).to_lowercase())
}

/// Why a presented token string was refused before any lookup.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenFormatError {
    #[error("token has no known prefix")]
    UnknownPrefix,
    #[error("token is malformed")]
    Malformed,
    #[error("token checksum does not match")]
    BadChecksum,
}

/// Checks a presented token's shape and checksum; returns its kind.
pub fn parse_token(token: &str) -> Result<TokenKind, TokenFormatError> {
    let kind = [TokenKind::Provider, TokenKind::Agent, TokenKind::Admin]
        .into_iter()
        .find(|k| token.starts_with(k.prefix()))
        .ok_or(TokenFormatError::UnknownPrefix)?;
    let rest = &token[kind.prefix().len()..];
    if rest.len() != BODY_LEN + CRC_LEN || !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(TokenFormatError::Malformed);
    }
    let head = &token[..token.len() - CRC_LEN];
    let want = crc_suffix(head);
    if !bool::from(
        want.as_bytes()
            .ct_eq(&token.as_bytes()[token.len() - CRC_LEN..]),
    ) {
        return Err(TokenFormatError::BadChecksum);
    }
    Ok(kind)
}

/// SHA-256 of a token, hex: the only form in which a token is stored.
pub fn hash_token(token: &[u8]) -> String {
    hex::encode(Sha256::digest(token))
}

/// HMAC-SHA-256 (RFC 2104) of `data` under a 32-byte key.
pub fn hmac_sha256(key: &[u8; 32], data: &[u8]) -> [u8; 32] {
    let mut ipad = Zeroizing::new([0x36u8; 64]);
    let mut opad = Zeroizing::new([0x5cu8; 64]);
    for (i, k) in key.iter().enumerate() {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    let inner = Sha256::new()
        .chain_update(&ipad[..])
        .chain_update(data)
        .finalize();
    Sha256::new()
        .chain_update(&opad[..])
        .chain_update(inner)
        .finalize()
        .into()
}

/// Constant-time equality of two token hashes (or any two byte strings).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of docs/vault.md ("Sealing a value yourself"), sealed by pyhpke (a
    /// third party): the fixed private key is the bytes 1..=32.
    const VECTOR_PRIVATE_KEY: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";
    const VECTOR_PUBLIC_KEY: &str = "B6N8vBQgk8i3VdwbEOhstCY3StFqqFPtC9/AsrhtHHw=";
    const VECTOR_PLACE: (&str, &str, &str) = ("org_test", "production", "STRIPE_SK");
    const VECTOR_VALUE: &[u8] = b"sk_live_test_vector";
    const VECTOR_SEALED: &str = "79FTdC/k3L4Af4GiKJLLpdBXSo8td4LlDo7YRfv8EB01CwHRxQpQ+/L4/2rk8qJf5zLKrbrZSLm7lOPDHimR/65pHQ==";

    #[test]
    fn the_documented_test_vector_opens() {
        let sk = PrivateKey::from_file_contents(VECTOR_PRIVATE_KEY.as_bytes()).unwrap();
        assert_eq!(sk.public_key().to_base64(), VECTOR_PUBLIC_KEY);
        let (org, env, name) = VECTOR_PLACE;
        let place = aad(org, env, name);
        assert_eq!(place, b"fyvault-v1|org_test|production|STRIPE_SK");
        assert_eq!(
            sk.open(VECTOR_SEALED, &place).unwrap().expose(),
            VECTOR_VALUE
        );
        // Bound to its place.
        assert_eq!(
            sk.open(VECTOR_SEALED, &aad(org, env, "OTHER")).unwrap_err(),
            CryptoError::OpenFailed
        );
        // The docs give exactly these.
        let docs = include_str!("../docs/vault.md");
        for s in [
            VECTOR_PRIVATE_KEY,
            VECTOR_PUBLIC_KEY,
            VECTOR_SEALED,
            INFO,
            "fyvault-v1|org_test|production|STRIPE_SK",
            "sk_live_test_vector",
        ] {
            assert!(docs.contains(s), "docs/vault.md lacks {s}");
        }
    }

    #[test]
    fn low_order_public_keys_are_refused() {
        let mut one = [0u8; 32];
        one[0] = 1;
        let order8 =
            hex::decode("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
                .unwrap();
        for raw in [&[0u8; 32][..], &one[..], &order8[..]] {
            assert_eq!(
                PublicKey::from_base64(&B64.encode(raw)),
                Err(CryptoError::LowOrderPublicKey)
            );
        }
        let (_, pk) = PrivateKey::generate();
        assert_eq!(PublicKey::from_base64(&pk.to_base64()).unwrap(), pk);
    }

    #[test]
    fn seal_open_round_trip_and_binding() {
        let (sk, pk) = PrivateKey::generate();
        let sealed = pk.seal(b"canary", &aad("org_a", "prod", "KEY")).unwrap();
        assert_eq!(
            sk.open(&sealed, &aad("org_a", "prod", "KEY"))
                .unwrap()
                .expose(),
            b"canary"
        );
        assert_eq!(
            sk.open(&sealed, &aad("org_a", "prod", "OTHER"))
                .unwrap_err(),
            CryptoError::OpenFailed
        );
        assert_eq!(
            sk.open(&sealed, &aad("org_a", "staging", "KEY"))
                .unwrap_err(),
            CryptoError::OpenFailed
        );
        let mut raw = B64.decode(&sealed).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert_eq!(
            sk.open(&B64.encode(raw), &aad("org_a", "prod", "KEY"))
                .unwrap_err(),
            CryptoError::OpenFailed
        );
        let (other, _) = PrivateKey::generate();
        assert!(other.open(&sealed, &aad("org_a", "prod", "KEY")).is_err());
    }

    #[test]
    fn key_file_round_trip() {
        let (sk, pk) = PrivateKey::generate();
        let file = sk.to_file_contents();
        let back = PrivateKey::from_file_contents(file.expose()).unwrap();
        assert_eq!(back.public_key(), pk);
        assert_eq!(PublicKey::from_base64(&pk.to_base64()).unwrap(), pk);
        assert!(PrivateKey::from_file_contents(b"nope").is_err());
        assert!(format!("{sk:?}").contains("REDACTED"));
    }

    /// `ct_eq` is `subtle`'s constant-time comparison (timing is never asserted in tests).
    /// What a test can prove is that it is an exact equality: every single-bit
    /// difference at every position, every length difference (prefixes included) is unequal.
    /// A comparison that stops early, skips bytes or compares only a prefix fails here.
    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        // RFC 4231 test case 2 uses a 4-byte key; HMAC pads keys with zeros to the block size,
        // so the same key zero-extended to 32 bytes gives the same MAC.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        assert_eq!(
            hex::encode(hmac_sha256(&key, b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let (sk, _) = PrivateKey::generate();
        assert_ne!(*sk.derive_key("a"), *sk.derive_key("b"));
        assert_eq!(*sk.derive_key("a"), *sk.derive_key("a"));
    }

    #[test]
    fn ct_eq_is_exact_equality() {
        let a = hash_token(b"fvagent_example");
        let a = a.as_bytes();
        assert!(ct_eq(a, a));
        let copy = a.to_vec();
        assert!(ct_eq(&copy, a), "an equal copy");
        assert!(ct_eq(b"", b""));
        for i in 0..a.len() {
            for bit in 0..8 {
                let mut b = a.to_vec();
                b[i] ^= 1 << bit;
                assert!(!ct_eq(a, &b), "byte {i} bit {bit}");
                assert!(!ct_eq(&b, a), "byte {i} bit {bit}, swapped");
            }
            assert!(!ct_eq(a, &a[..i]), "prefix of {i}");
            assert!(!ct_eq(&a[..i], a), "prefix of {i}, swapped");
        }
        let mut longer = a.to_vec();
        longer.push(0);
        assert!(!ct_eq(a, &longer));
    }

    #[test]
    fn tokens_have_prefix_checksum_and_hash() {
        for kind in [TokenKind::Provider, TokenKind::Agent, TokenKind::Admin] {
            let t = generate_token(kind);
            let s = std::str::from_utf8(t.expose()).unwrap();
            assert!(s.starts_with(kind.prefix()));
            assert_eq!(parse_token(s), Ok(kind));
            // A changed character breaks the checksum.
            let mut bad = s.as_bytes().to_vec();
            let i = kind.prefix().len() + 3;
            bad[i] = if bad[i] == b'a' { b'b' } else { b'a' };
            assert_eq!(
                parse_token(std::str::from_utf8(&bad).unwrap()),
                Err(TokenFormatError::BadChecksum)
            );
            assert_eq!(hash_token(t.expose()).len(), 64);
        }
        assert_eq!(parse_token("ghp_x"), Err(TokenFormatError::UnknownPrefix));
        assert_eq!(
            parse_token("fvprov_short"),
            Err(TokenFormatError::Malformed)
        );
        assert_ne!(
            generate_token(TokenKind::Agent),
            generate_token(TokenKind::Agent)
        );
    }
}
