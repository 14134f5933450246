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
    pub fn from_base64(s: &str) -> Result<Self, CryptoError> {
        let raw = B64
            .decode(s.trim())
            .map_err(|_| CryptoError::BadPublicKey)?;
        <Kem as hpke::Kem>::PublicKey::from_bytes(&raw)
            .map(PublicKey)
            .map_err(|_| CryptoError::BadPublicKey)
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
    let mut raw = Zeroizing::new([0u8; 32]);
    getrandom_fill(&mut raw[..]);
    let head = format!("{}{}", kind.prefix(), base62(&raw[..], BODY_LEN));
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
