//! Wire types of per-secret policy and per-user values (issue 14): the policy route, the admin
//! secret listing, connect links, and what the sync feed carries for them.

use serde::{Deserialize, Serialize};

use super::SyncSecret;

/// Who provides a secret's value in an environment.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum SecretPolicy {
    /// Creator vault: the org provides one value, every user shares it (the default).
    #[default]
    Creator,
    /// User vault: each end user provides their own value, kept per user id.
    User,
}

impl SecretPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            SecretPolicy::Creator => "creator",
            SecretPolicy::User => "user",
        }
    }

    /// The stored form back (anything but `user` reads as creator).
    pub fn from_stored(s: &str) -> Self {
        if s == "user" {
            SecretPolicy::User
        } else {
            SecretPolicy::Creator
        }
    }
}

/// An app-defined user id: `^[A-Za-z0-9._@-]{1,128}$`.
pub fn valid_user_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

/// `PUT …/environments/:env/secrets/:name/policy`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SetPolicyRequest {
    pub policy: SecretPolicy,
}

/// 200 answer of the policy route.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyResponse {
    pub secret_name: String,
    pub environment: String,
    pub policy: SecretPolicy,
}

/// Users of one user-vault secret (never their ids or values).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserCounts {
    /// Users holding an active value.
    pub with_value: u64,
    /// Distinct users whose values agents reported read in the last 7 days.
    pub read_7d: u64,
}

/// One row of `GET …/environments/:env/secrets` (admin). The creator value's fields are null
/// when the secret has none (a user-vault secret, or a declared one nothing was pushed to).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecretListing {
    pub secret_name: String,
    pub policy: SecretPolicy,
    pub version: Option<u64>,
    pub state: Option<super::SecretState>,
    pub provider_id: Option<String>,
    pub updated_at: Option<String>,
    /// `null` for creator-vault secrets.
    pub users: Option<UserCounts>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecretList {
    pub secrets: Vec<SecretListing>,
}

/// `POST …/environments/:env/connect-links` (agent token) and the socket's `POST /v1/connect`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConnectLinkRequest {
    pub secret_name: String,
    pub user_id: String,
}

/// A minted connect link: `url` = `<public base>/connect/<token>` (the token is the credential,
/// shown once).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConnectLink {
    pub url: String,
    pub expires_at: String,
}

/// `GET /api/v1/connect/:token`: what the page needs to seal the user's value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConnectLinkInfo {
    pub org_id: String,
    pub environment: String,
    pub secret_name: String,
    pub user_id: String,
    /// base64 X25519 public key of the environment (HPKE, DESIGN §3.2).
    pub public_key: String,
    pub expires_at: String,
}

/// `POST /api/v1/connect/:token`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConnectSubmit {
    pub sealed_value: String,
}

/// 200 answer of a connect submission.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConnectStored {
    pub secret_name: String,
    pub user_id: String,
    pub version: u64,
}

/// A secret's policy as the sync feed carries it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SyncPolicy {
    pub name: String,
    pub policy: SecretPolicy,
}

/// One user's value of a user-vault secret in the sync feed: the same fields as a creator
/// secret, plus the user id.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SyncUserSecret {
    pub user_id: String,
    #[serde(flatten)]
    pub secret: SyncSecret,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_id_rule() {
        for ok in ["u1", "alice@example.com", "a.b_c-d", &"x".repeat(128)] {
            assert!(valid_user_id(ok), "{ok}");
        }
        for bad in ["", "a b", "a/b", "é", "a:b", &"x".repeat(129)] {
            assert!(!valid_user_id(bad), "{bad}");
        }
    }

    #[test]
    fn policy_wire_form() {
        let r: SetPolicyRequest = serde_json::from_str(r#"{"policy":"user"}"#).unwrap();
        assert_eq!(r.policy, SecretPolicy::User);
        assert!(serde_json::from_str::<SetPolicyRequest>(r#"{"policy":"both"}"#).is_err());
        assert!(serde_json::from_str::<SetPolicyRequest>(r#"{"policy":"user","x":1}"#).is_err());
    }
}
