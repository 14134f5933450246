//! The bootstrap of `fyvault dev`: an org, an environment `production` (private key file in the
//! data dir), a provider with its token, an admin token, an agent token and two demo secrets,
//! remembered in `DATA_DIR/dev.json` (0600) so a second run on the same data dir keeps
//! everything.
//!
//! Other parts (the agent) add their own fields to `dev.json` through [`DevFacts::extra`];
//! fields this module does not know are kept when it rewrites the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::api::{CreateTokenRequest, DEFAULT_GRACE_SECONDS, MAX_GRACE_SECONDS};
use crate::crypto::{self, PrivateKey, TokenKind};
use crate::secret::Secret;
use crate::vault::clock::now_ms;
use crate::vault::routes::admin::new_token;
use crate::vault::store::sqlite::SqliteStore;
use crate::vault::store::{
    AuditContext, Environment, Org, Provider, Store, StoreError, WriteKind, WriteVersion,
};

/// File name of the facts file in the data dir.
pub const FACTS_FILE: &str = "dev.json";
/// The environment dev mode creates.
pub const DEV_ENVIRONMENT: &str = "production";
/// The demo secrets pushed on the first run.
pub const DEMO_SECRET: &str = "DEMO_GREETING";
pub const DEMO_SECRET_2: &str = "DEMO_DATABASE_URL";
const DEMO_VALUES: [(&str, &[u8]); 2] = [
    (DEMO_SECRET, b"hello from fyvault"),
    (
        DEMO_SECRET_2,
        b"postgres://app:demo-password@127.0.0.1:5432/app",
    ),
];

/// What `fyvault dev` set up: written to `DATA_DIR/dev.json`.
#[derive(Clone, Serialize, Deserialize)]
pub struct DevFacts {
    pub url: String,
    pub org_id: String,
    pub environment: String,
    pub provider_id: String,
    pub provider_token: String,
    pub admin_token: String,
    /// An agent token for the environment (absent only in a `dev.json` of an older version;
    /// [`bootstrap`] then makes one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_token: Option<String>,
    /// The environment's private key (0600), for the agent.
    pub environment_key_file: PathBuf,
    /// A ready config file for `fyvault agent --config …` (set by the dev command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_config: Option<PathBuf>,
    /// Where the dev agent mounts the secrets filesystem, and its socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// Fields added by other parts of dev mode, kept as they are.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl std::fmt::Debug for DevFacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevFacts")
            .field("url", &self.url)
            .field("org_id", &self.org_id)
            .field("environment", &self.environment)
            .field("provider_id", &self.provider_id)
            .field("provider_token", &"[REDACTED]")
            .field("admin_token", &"[REDACTED]")
            .field(
                "agent_token",
                &self.agent_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field("environment_key_file", &self.environment_key_file)
            .field("agent_config", &self.agent_config)
            .field("mount", &self.mount)
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0} does not match the vault database in the same directory; use a fresh --data-dir")]
    Mismatch(PathBuf),
    #[error("grace must be at most {MAX_GRACE_SECONDS} seconds")]
    BadGrace,
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> DevError {
    DevError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

impl DevFacts {
    /// Reads `DATA_DIR/dev.json`, if present.
    pub fn load(data_dir: &Path) -> Result<Option<DevFacts>, DevError> {
        let path = data_dir.join(FACTS_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| file_err(&path, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(file_err(&path, e)),
        }
    }

    /// Writes `DATA_DIR/dev.json` atomically with mode 0600.
    pub fn save(&self, data_dir: &Path) -> Result<(), DevError> {
        let path = data_dir.join(FACTS_FILE);
        let json = zeroize::Zeroizing::new(
            serde_json::to_vec_pretty(self).map_err(|e| file_err(&path, e))?,
        );
        write_private_atomic(&path, &json)
    }
}

/// Writes `contents` to `path` via a 0600 temporary file and a rename.
pub fn write_private_atomic(path: &Path, contents: &[u8]) -> Result<(), DevError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| file_err(&tmp, e))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .map_err(|e| file_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_err(path, e))
}

fn system() -> AuditContext {
    AuditContext {
        actor: "system:dev".into(),
        source_ip: None,
    }
}

/// Opens (or creates) the dev vault in `data_dir` and makes sure the org, environment,
/// provider, tokens and key file exist. `grace` sets the environment's default grace period
/// (`None`: keep it, or the default on a first run). The returned facts' `url` is empty on a
/// first run: the caller sets it once the server is bound, then calls [`DevFacts::save`].
pub async fn bootstrap(
    data_dir: &Path,
    grace: Option<u64>,
) -> Result<(Arc<dyn Store>, DevFacts), DevError> {
    if grace.is_some_and(|g| g > MAX_GRACE_SECONDS) {
        return Err(DevError::BadGrace);
    }
    let dir = data_dir.to_path_buf();
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(&dir))
        .await
        .map_err(|_| StoreError::Backend("opening the store failed".into()))??;
    let store: Arc<dyn Store> = Arc::new(store);
    let facts = match DevFacts::load(data_dir)? {
        Some(mut facts) => {
            check_facts(&store, &facts, data_dir).await?;
            if let Some(g) = grace {
                store
                    .set_environment_grace(&facts.org_id, &facts.environment, g)
                    .await?;
            }
            if !agent_token_usable(&store, facts.agent_token.as_deref()).await? {
                facts.agent_token = Some(new_agent_token(&store, &facts.org_id).await?);
                facts.save(data_dir)?;
            }
            facts
        }
        None => {
            let facts = first_run(&store, data_dir, grace.unwrap_or(DEFAULT_GRACE_SECONDS)).await?;
            facts.save(data_dir)?;
            facts
        }
    };
    Ok((store, facts))
}

async fn check_facts(
    store: &Arc<dyn Store>,
    facts: &DevFacts,
    data_dir: &Path,
) -> Result<(), DevError> {
    let mismatch = || DevError::Mismatch(data_dir.join(FACTS_FILE));
    store
        .get_environment(&facts.org_id, &facts.environment)
        .await?
        .ok_or_else(mismatch)?;
    store
        .get_provider(&facts.org_id, &facts.provider_id)
        .await?
        .ok_or_else(mismatch)?;
    for token in [&facts.provider_token, &facts.admin_token] {
        let rec = store
            .find_token(&crypto::hash_token(token.as_bytes()))
            .await?
            .ok_or_else(mismatch)?;
        if rec.revoked_ms.is_some() {
            return Err(mismatch());
        }
    }
    if !facts.environment_key_file.exists() {
        return Err(mismatch());
    }
    Ok(())
}

/// Is `token` a live token in this store?
async fn agent_token_usable(store: &Arc<dyn Store>, token: Option<&str>) -> Result<bool, DevError> {
    let Some(token) = token else {
        return Ok(false);
    };
    Ok(store
        .find_token(&crypto::hash_token(token.as_bytes()))
        .await?
        .is_some_and(|rec| rec.revoked_ms.is_none()))
}

/// A new agent token for the dev environment.
async fn new_agent_token(store: &Arc<dyn Store>, org_id: &str) -> Result<String, DevError> {
    let (issued, record) = new_token(
        TokenKind::Agent,
        Some(org_id.to_owned()),
        Some(DEV_ENVIRONMENT.to_owned()),
        None,
        &CreateTokenRequest {
            label: Some("fyvault dev agent".into()),
            expires_in_seconds: None,
        },
    )
    .map_err(|e| StoreError::Backend(e.message))?;
    store.create_token(record, system()).await?;
    Ok(String::from_utf8_lossy(issued.token.expose()).into_owned())
}

async fn first_run(
    store: &Arc<dyn Store>,
    data_dir: &Path,
    grace: u64,
) -> Result<DevFacts, DevError> {
    let now = now_ms();
    let org = store
        .create_org(
            Org {
                org_id: crypto::random_id("org"),
                name: "dev".into(),
                created_ms: now,
            },
            system(),
        )
        .await?;
    let (sk, pk) = PrivateKey::generate();
    let key_file = data_dir.join(format!("{DEV_ENVIRONMENT}.key"));
    write_private_atomic(&key_file, sk.to_file_contents().expose())?;
    store
        .create_environment(
            Environment {
                org_id: org.org_id.clone(),
                name: DEV_ENVIRONMENT.into(),
                public_key: pk.to_base64(),
                default_grace_seconds: grace,
                revision: 0,
                created_ms: now,
            },
            system(),
        )
        .await?;
    let provider_id = crypto::random_id("prov");
    let (prov_token, prov_record) = new_token(
        TokenKind::Provider,
        Some(org.org_id.clone()),
        None,
        Some(provider_id.clone()),
        &CreateTokenRequest {
            label: Some("fyvault dev".into()),
            expires_in_seconds: None,
        },
    )
    .map_err(|e| StoreError::Backend(e.message))?;
    store
        .create_provider(
            Provider {
                org_id: org.org_id.clone(),
                provider_id: provider_id.clone(),
                name: "demo-provider".into(),
                created_ms: now,
            },
            prov_record,
            system(),
        )
        .await?;
    let (admin_token, admin_record) = new_token(
        TokenKind::Admin,
        None,
        None,
        None,
        &CreateTokenRequest {
            label: Some("fyvault dev".into()),
            expires_in_seconds: None,
        },
    )
    .map_err(|e| StoreError::Backend(e.message))?;
    store.create_token(admin_record, system()).await?;
    // The demo secrets, sealed like any other.
    for (name, value) in DEMO_VALUES {
        let value = Secret::copy_from(value);
        let sealed = pk
            .seal(
                value.expose(),
                &crypto::aad(&org.org_id, DEV_ENVIRONMENT, name),
            )
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        store
            .write_version(WriteVersion {
                org_id: org.org_id.clone(),
                environment: DEV_ENVIRONMENT.into(),
                secret_name: name.into(),
                provider_id: provider_id.clone(),
                kind: WriteKind::Push,
                sealed_value: sealed,
                grace_seconds: None,
                idempotency: None,
                user_id: None,
                now_ms: now,
                audit: AuditContext {
                    actor: format!("provider:{provider_id}"),
                    source_ip: None,
                },
            })
            .await?;
    }
    let agent_token = new_agent_token(store, &org.org_id).await?;
    let text = |s: &Secret| String::from_utf8_lossy(s.expose()).into_owned();
    Ok(DevFacts {
        url: String::new(),
        org_id: org.org_id,
        environment: DEV_ENVIRONMENT.into(),
        provider_id,
        provider_token: text(&prov_token.token),
        admin_token: text(&admin_token.token),
        agent_token: Some(agent_token),
        environment_key_file: key_file,
        agent_config: None,
        mount: None,
        socket: None,
        extra: serde_json::Map::new(),
    })
}

/// The studio's address on the dev vault.
pub fn studio_url(facts: &DevFacts) -> String {
    format!("{}/studio/", facts.url.trim_end_matches('/'))
}

/// A link that signs the browser in to the dev vault's studio: the admin token rides in the
/// URL fragment, which browsers never send; the page reads it, signs in (a session cookie) and
/// removes it from the address bar. Dev mode only (loopback, a throwaway vault).
pub fn studio_sign_in_link(facts: &DevFacts) -> String {
    format!("{}#token={}", studio_url(facts), facts.admin_token)
}

/// The ready-to-paste curl commands for push, rotate and revoke, exactly as published.
pub fn curl_commands(facts: &DevFacts) -> String {
    let base = format!(
        "{}/api/v1/orgs/{}/providers/{}",
        facts.url, facts.org_id, facts.provider_id
    );
    let auth = format!(
        "-H 'Authorization: Bearer {}' -H 'Content-Type: application/json'",
        facts.provider_token
    );
    let env = &facts.environment;
    format!(
        "# push (201):\n\
         curl -sS -X POST '{base}/push' \\\n  {auth} \\\n  \
         -d '{{\"secret_name\":\"STRIPE_SK\",\"value\":\"sk_test_first\",\"environment\":\"{env}\"}}'\n\
         \n\
         # rotate (200; the previous value stays readable for the grace period):\n\
         curl -sS -X PATCH '{base}' \\\n  {auth} \\\n  \
         -d '{{\"secret_name\":\"STRIPE_SK\",\"value\":\"sk_test_second\",\"environment\":\"{env}\"}}'\n\
         \n\
         # revoke (200; gone everywhere at once):\n\
         curl -sS -X DELETE '{base}' \\\n  {auth} \\\n  \
         -d '{{\"secret_name\":\"STRIPE_SK\"}}'\n"
    )
}
