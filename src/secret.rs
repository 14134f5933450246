//! The zeroizing secret type.
//!
//! Every secret value in fyvault lives in a [`Secret`]: the bytes are zeroized when dropped,
//! `Debug` never prints them, there is no `Serialize` and no `Display`, and the bytes are only
//! reachable through the explicit [`Secret::expose`]. It does implement `Deserialize` so that a
//! provider's plaintext `value` can be parsed straight into it; the owned `String` serde hands
//! over is zeroized before it is dropped.

use std::fmt;

use zeroize::{Zeroize, Zeroizing};

/// Secret bytes: zeroized on drop, redacted in `Debug`, exposed only on purpose.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// Takes ownership of `bytes`; the vector is zeroized when the secret is dropped.
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(Zeroizing::new(bytes))
    }

    /// Copies `bytes` into a new secret (the caller remains responsible for its own copy).
    pub fn copy_from(bytes: &[u8]) -> Self {
        Secret(Zeroizing::new(bytes.to_vec()))
    }

    /// The secret bytes. Every call site is a place where the value leaves the secret type.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Zeroizing<Vec<u8>>> for Secret {
    fn from(v: Zeroizing<Vec<u8>>) -> Self {
        Secret(v)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret::copy_from(v.as_bytes()))
            }
            fn visit_string<E: serde::de::Error>(self, mut v: String) -> Result<Secret, E> {
                let s = Secret::copy_from(v.as_bytes());
                v.zeroize();
                Ok(s)
            }
        }
        d.deserialize_string(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = Secret::copy_from(b"canary-1234");
        let shown = format!("{s:?} {:?}", Some(&s));
        assert!(!shown.contains("canary"), "{shown}");
        assert!(shown.contains("REDACTED"));
    }

    #[test]
    fn deserializes_from_json_string() {
        let s: Secret = serde_json::from_str("\"a\\nb\"").unwrap();
        assert_eq!(s.expose(), b"a\nb");
        assert!(serde_json::from_str::<Secret>("5").is_err());
    }
}
