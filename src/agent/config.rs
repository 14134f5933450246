//! The agent's TOML config (`/etc/fyvault/agent.toml`; annotated example in
//! `packaging/agent.toml`).
//!
//! [`load`] parses and validates everything before the agent binds or mounts anything: unknown
//! keys are refused, names are resolved (users, groups), the token and key files must exist and
//! must not be readable or writable by group or others. Every mistake is reported as one line
//! naming the key: `agent.toml: access.rule[2].users: no such user "bob"` (rules are numbered
//! from 1, in file order).

use std::fmt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::agent::access::{Glob, Policy, Rule};
use crate::agent::fs::ReadPathChoice;

mod delivery;
mod error;

pub use error::ConfigError;
use error::toml_error;

pub const DEFAULT_SOCKET: &str = "/run/fyvault.sock";
pub const DEFAULT_MOUNT: &str = "/run/fyvault";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/fyvault";
pub const DEFAULT_GROUP: &str = "fyvault";
/// Default long-poll wait asked of the vault.
/// Default of `cache_max_age_seconds`: a day.
pub const DEFAULT_CACHE_MAX_AGE_SECONDS: u64 = 24 * 3600;
/// Largest `cache_max_age_seconds`: 30 days.
pub const MAX_CACHE_MAX_AGE_SECONDS: u64 = 30 * 24 * 3600;
pub const DEFAULT_SYNC_WAIT_SECONDS: u64 = 30;

/// The validated config.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where it was read from (for messages).
    pub path: PathBuf,
    pub vault_url: reqwest::Url,
    pub org_id: String,
    pub environment: String,
    pub token_file: PathBuf,
    pub key_file: PathBuf,
    pub socket: PathBuf,
    /// The FUSE mount point; `None` when `fuse = false`.
    pub mount: Option<PathBuf>,
    /// How secret files' bytes reach readers (`fuse_read_path`: `auto`, `passthrough`,
    /// `direct_io`; see `fs::passthrough`).
    pub fuse_read_path: ReadPathChoice,
    /// FUSE worker threads (`fuse_threads`, 1 to 64; default `mount::FUSE_THREADS`).
    pub fuse_threads: usize,
    pub state_dir: PathBuf,
    /// Caps how long a previous version stays readable after a rotation (the vault's grace is
    /// used when shorter). `Some(0)`: previous versions are never served.
    pub grace_cap: Option<Duration>,
    /// Long-poll wait asked of the vault.
    pub sync_wait: Duration,
    /// How old the offline cache may be to be served when the vault is unreachable at start
    /// (`cache_max_age_seconds`, default 24 h); `None`: never served (0).
    pub cache_max_age: Option<Duration>,
    /// CA certificates (PEM) trusted instead of the system roots for an `https` vault.
    pub ca_file: Option<PathBuf>,
    /// Bound of the access-event spool on disk (`[audit] spool_max_mb`; None: the default,
    /// 64 MiB).
    pub audit_spool_max_bytes: Option<u64>,
    /// The access policy (group gid resolved, rules resolved).
    pub policy: Policy,
    /// `[credentials]`, `[[template]]`, `[[file]]` (see [`crate::agent::delivery`]).
    pub delivery: crate::agent::delivery::Delivery,
    /// Things worth a warning that do not stop the agent (e.g. the group does not exist).
    pub warnings: Vec<String>,
}

/// `users = ["www-data", 1001]`: a name or a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Ident {
    Name(String),
    Id(u32),
}

impl<'de> Deserialize<'de> for Ident {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Ident;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a name or a numeric id")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Ident, E> {
                Ok(Ident::Name(v.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Ident, E> {
                u32::try_from(v)
                    .map(Ident::Id)
                    .map_err(|_| E::custom(format!("{v} is not a valid id")))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Ident, E> {
                u32::try_from(v)
                    .map(Ident::Id)
                    .map_err(|_| E::custom(format!("{v} is not a valid id")))
            }
        }
        d.deserialize_any(V)
    }
}

fn default_socket() -> PathBuf {
    DEFAULT_SOCKET.into()
}
fn default_mount() -> PathBuf {
    DEFAULT_MOUNT.into()
}
fn default_state_dir() -> PathBuf {
    DEFAULT_STATE_DIR.into()
}
fn default_group() -> String {
    DEFAULT_GROUP.into()
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    vault_url: String,
    org_id: String,
    environment: String,
    token_file: PathBuf,
    key_file: PathBuf,
    #[serde(default = "default_socket")]
    socket: PathBuf,
    #[serde(default = "default_mount")]
    mount: PathBuf,
    #[serde(default = "default_true")]
    fuse: bool,
    #[serde(default)]
    fuse_read_path: ReadPathChoice,
    #[serde(default)]
    fuse_threads: Option<usize>,
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    #[serde(default)]
    grace_seconds: Option<u64>,
    #[serde(default)]
    sync_wait_seconds: Option<u64>,
    #[serde(default)]
    cache_max_age_seconds: Option<u64>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default = "default_group")]
    group: String,
    #[serde(default)]
    access: RawAccess,
    #[serde(default)]
    audit: RawAudit,
    /// `[credentials]`: systemd credential id → secret name.
    #[serde(default)]
    credentials: std::collections::BTreeMap<String, String>,
    /// `[[template]]` files in the mount.
    #[serde(default)]
    template: Vec<delivery::RawTemplate>,
    /// `[[file]]` owner/group/mode entries.
    #[serde(default)]
    file: Vec<delivery::RawFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    #[serde(default)]
    spool_max_mb: Option<u64>,
}

/// Largest accepted `[audit] spool_max_mb` (64 GiB).
pub const MAX_SPOOL_MB: u64 = 65_536;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    #[serde(default)]
    rule: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    secrets: Vec<String>,
    #[serde(default)]
    users: Vec<Ident>,
    #[serde(default)]
    groups: Vec<Ident>,
    #[serde(default)]
    executables: Vec<PathBuf>,
    #[serde(default)]
    units: Vec<String>,
}

/// Reads and validates the config at `path`.
pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
    let label = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: label.clone(),
        key: "(file)".into(),
        message: format!("cannot read: {e}"),
    })?;
    parse(&text, path)
}

/// Parses and validates config text; `path` names the file in messages (and is kept).
pub fn parse(text: &str, path: &Path) -> Result<AgentConfig, ConfigError> {
    let label = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(&label, text, &e))?;
    Validator {
        file: label,
        warnings: Vec::new(),
    }
    .validate(raw, path)
}

struct Validator {
    file: String,
    warnings: Vec<String>,
}

impl Validator {
    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            key: key.into(),
            message: message.into(),
        }
    }

    fn validate(mut self, raw: RawConfig, path: &Path) -> Result<AgentConfig, ConfigError> {
        let vault_url = self.vault_url(&raw.vault_url)?;
        if raw.org_id.is_empty()
            || raw.org_id.len() > 64
            || !raw
                .org_id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        {
            return Err(self.err(
                "org_id",
                format!(
                    "{:?} is not an org id (1 to 64 of A-Z a-z 0-9 _ -)",
                    raw.org_id
                ),
            ));
        }
        if !crate::api::valid_environment(&raw.environment) {
            return Err(self.err(
                "environment",
                format!(
                    "{:?} is not an environment name (^[a-z0-9][a-z0-9-]{{0,62}}$)",
                    raw.environment
                ),
            ));
        }
        self.private_file("token_file", &raw.token_file)?;
        self.private_file("key_file", &raw.key_file)?;
        if let Some(ca) = &raw.ca_file {
            self.absolute("ca_file", ca)?;
            if !ca.is_file() {
                return Err(self.err("ca_file", format!("{} is not a file", ca.display())));
            }
        }
        self.absolute("socket", &raw.socket)?;
        match raw.socket.parent() {
            Some(dir) if dir.is_dir() => {}
            _ => {
                return Err(self.err(
                    "socket",
                    format!("the directory of {} does not exist", raw.socket.display()),
                ));
            }
        }
        self.absolute("mount", &raw.mount)?;
        self.absolute("state_dir", &raw.state_dir)?;
        if raw.mount == raw.socket {
            return Err(self.err("mount", "must differ from socket"));
        }
        let grace_cap = match raw.grace_seconds {
            Some(s) if s > crate::api::MAX_GRACE_SECONDS => {
                return Err(self.err(
                    "grace_seconds",
                    format!("{s} is more than {}", crate::api::MAX_GRACE_SECONDS),
                ));
            }
            other => other.map(Duration::from_secs),
        };
        let sync_wait = match raw.sync_wait_seconds {
            None => DEFAULT_SYNC_WAIT_SECONDS,
            Some(s) if (1..=crate::api::MAX_WAIT_SECONDS).contains(&s) => s,
            Some(s) => {
                return Err(self.err(
                    "sync_wait_seconds",
                    format!("{s} is not between 1 and {}", crate::api::MAX_WAIT_SECONDS),
                ));
            }
        };
        let cache_max_age = match raw.cache_max_age_seconds {
            None => Some(Duration::from_secs(DEFAULT_CACHE_MAX_AGE_SECONDS)),
            Some(0) => None,
            Some(s) if s <= MAX_CACHE_MAX_AGE_SECONDS => Some(Duration::from_secs(s)),
            Some(s) => {
                return Err(self.err(
                    "cache_max_age_seconds",
                    format!("{s} is more than {MAX_CACHE_MAX_AGE_SECONDS} (30 days)"),
                ));
            }
        };
        let audit_spool_max_bytes = match raw.audit.spool_max_mb {
            None => None,
            Some(mb) if (1..=MAX_SPOOL_MB).contains(&mb) => Some(mb * 1024 * 1024),
            Some(mb) => {
                return Err(self.err(
                    "audit.spool_max_mb",
                    format!("{mb} is not between 1 and {MAX_SPOOL_MB}"),
                ));
            }
        };
        let fuse_threads = match raw.fuse_threads {
            None => crate::agent::mount::FUSE_THREADS,
            Some(n) if (1..=64).contains(&n) => n,
            Some(n) => return Err(self.err("fuse_threads", format!("{n} is not between 1 and 64"))),
        };
        let group = self.group(&raw.group)?;
        let mut rules = Vec::new();
        for (i, r) in raw.access.rule.into_iter().enumerate() {
            rules.push(self.rule(i + 1, r)?);
        }
        Ok(AgentConfig {
            path: path.to_owned(),
            vault_url,
            org_id: raw.org_id,
            environment: raw.environment,
            token_file: raw.token_file,
            key_file: raw.key_file,
            socket: raw.socket,
            mount: raw.fuse.then_some(raw.mount),
            fuse_read_path: raw.fuse_read_path,
            fuse_threads,
            state_dir: raw.state_dir,
            grace_cap,
            sync_wait: Duration::from_secs(sync_wait),
            cache_max_age,
            ca_file: raw.ca_file,
            audit_spool_max_bytes,
            policy: Policy::new(group, rules),
            delivery: self.delivery(raw.credentials, raw.template, raw.file)?,
            warnings: self.warnings,
        })
    }

    fn vault_url(&self, s: &str) -> Result<reqwest::Url, ConfigError> {
        let url = reqwest::Url::parse(s)
            .map_err(|e| self.err("vault_url", format!("{s:?} is not a URL: {e}")))?;
        match url.scheme() {
            "https" => {}
            "http" => {
                let host = url.host_str().unwrap_or("");
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let loopback = host == "localhost"
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|a| a.is_loopback());
                if !loopback {
                    return Err(self.err(
                        "vault_url",
                        "plain http is only allowed to a loopback address; use https",
                    ));
                }
            }
            other => {
                return Err(self.err(
                    "vault_url",
                    format!("scheme {other:?} is not http or https"),
                ));
            }
        }
        if url.host().is_none() || !url.username().is_empty() || url.password().is_some() {
            return Err(self.err("vault_url", "expected https://HOST[:PORT][/PATH]"));
        }
        Ok(url)
    }

    fn absolute(&self, key: &str, p: &Path) -> Result<(), ConfigError> {
        if p.is_absolute() {
            Ok(())
        } else {
            Err(self.err(key, format!("{} is not an absolute path", p.display())))
        }
    }

    /// The file exists, is a regular file, and is not readable/writable by group or others.
    fn private_file(&self, key: &str, p: &Path) -> Result<(), ConfigError> {
        self.absolute(key, p)?;
        let md = std::fs::metadata(p)
            .map_err(|e| self.err(key, format!("cannot read {}: {e}", p.display())))?;
        if !md.is_file() {
            return Err(self.err(key, format!("{} is not a regular file", p.display())));
        }
        let mode = md.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(self.err(
                key,
                format!(
                    "{} is accessible by group or others (mode {mode:04o}); run: chmod 600 {}",
                    p.display(),
                    p.display()
                ),
            ));
        }
        let me = nix::unistd::geteuid().as_raw();
        if me != 0 && md.uid() != me {
            return Err(self.err(
                key,
                format!(
                    "{} is owned by uid {}, not by the agent's uid {me}",
                    p.display(),
                    md.uid()
                ),
            ));
        }
        std::fs::File::open(p)
            .map_err(|e| self.err(key, format!("cannot read {}: {e}", p.display())))?;
        Ok(())
    }

    fn group(&mut self, name: &str) -> Result<Option<u32>, ConfigError> {
        if name.is_empty() {
            return Ok(None);
        }
        if let Ok(gid) = name.parse::<u32>() {
            return Ok(Some(gid));
        }
        match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Ok(Some(g.gid.as_raw())),
            Ok(None) => {
                self.warnings.push(format!(
                    "{}: group: no such group {name:?}; only root (and access rules) may read \
                     secrets",
                    self.file
                ));
                Ok(None)
            }
            Err(e) => Err(self.err("group", format!("cannot look up group {name:?}: {e}"))),
        }
    }

    /// Secret-name globs (A-Z 0-9 _ with `*` and `?`).
    fn globs(&self, key: &str, list: &[String]) -> Result<Vec<Glob>, ConfigError> {
        let mut secrets = Vec::new();
        for s in list {
            let ok = !s.is_empty()
                && s.len() <= 128
                && s.bytes().all(|c| {
                    c.is_ascii_uppercase()
                        || c.is_ascii_digit()
                        || c == b'_'
                        || c == b'*'
                        || c == b'?'
                });
            if !ok {
                return Err(self.err(
                    key,
                    format!(
                        "{s:?} can never match a secret name (A-Z 0-9 _, with * and ? as \
                         wildcards)"
                    ),
                ));
            }
            secrets.push(Glob::new(s));
        }
        Ok(secrets)
    }

    /// A user name or uid, resolved to a uid.
    fn uid(&self, key: &str, u: &Ident) -> Result<u32, ConfigError> {
        match u {
            Ident::Id(id) => Ok(*id),
            Ident::Name(name) => match nix::unistd::User::from_name(name) {
                Ok(Some(u)) => Ok(u.uid.as_raw()),
                Ok(None) => Err(self.err(key, format!("no such user {name:?}"))),
                Err(e) => Err(self.err(key, format!("cannot look up user {name:?}: {e}"))),
            },
        }
    }

    /// A group name or gid, resolved to a gid.
    fn gid(&self, key: &str, g: &Ident) -> Result<u32, ConfigError> {
        match g {
            Ident::Id(id) => Ok(*id),
            Ident::Name(name) => match nix::unistd::Group::from_name(name) {
                Ok(Some(g)) => Ok(g.gid.as_raw()),
                Ok(None) => Err(self.err(key, format!("no such group {name:?}"))),
                Err(e) => Err(self.err(key, format!("cannot look up group {name:?}: {e}"))),
            },
        }
    }

    fn rule(&self, n: usize, r: RawRule) -> Result<Rule, ConfigError> {
        let key = |k: &str| format!("access.rule[{n}].{k}");
        if r.secrets.is_empty() {
            return Err(self.err(
                key("secrets"),
                "missing: list the secret names (globs allowed) this rule grants",
            ));
        }
        let secrets = self.globs(&key("secrets"), &r.secrets)?;
        let users = r
            .users
            .iter()
            .map(|u| self.uid(&key("users"), u))
            .collect::<Result<Vec<_>, _>>()?;
        let groups = r
            .groups
            .iter()
            .map(|g| self.gid(&key("groups"), g))
            .collect::<Result<Vec<_>, _>>()?;
        let mut executables = Vec::new();
        for e in &r.executables {
            if !e.is_absolute() {
                return Err(self.err(
                    key("executables"),
                    format!("{} is not an absolute path", e.display()),
                ));
            }
            // /proc/PID/exe shows the resolved path: resolve symlinks now (an executable that
            // does not exist yet is kept as written).
            executables.push(std::fs::canonicalize(e).unwrap_or_else(|_| e.clone()));
        }
        let mut units = Vec::new();
        for u in &r.units {
            let ok = !u.contains('/')
                && [".service", ".scope"]
                    .iter()
                    .any(|s| u.len() > s.len() && u.ends_with(s));
            if !ok {
                return Err(self.err(
                    key("units"),
                    format!("{u:?} is not a unit name (expected e.g. \"app.service\")"),
                ));
            }
            units.push(u.clone());
        }
        let rule = Rule {
            secrets,
            users,
            groups,
            executables,
            units,
        };
        if !rule.has_selector() {
            return Err(self.err(
                format!("access.rule[{n}]"),
                "names no users, groups, executables or units, so it would match nobody",
            ));
        }
        Ok(rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_spool_bound() {
        let d = tempfile::tempdir().unwrap();
        for f in ["t", "k"] {
            std::fs::write(d.path().join(f), "x").unwrap();
            std::fs::set_permissions(d.path().join(f), std::fs::Permissions::from_mode(0o600))
                .unwrap();
        }
        let text = |audit: &str| {
            format!(
                "vault_url = \"http://127.0.0.1:1\"\norg_id = \"o\"\nenvironment = \"e\"\n\
                 token_file = \"{0}/t\"\nkey_file = \"{0}/k\"\nsocket = \"{0}/s\"\n\
                 group = \"\"\n{audit}",
                d.path().display()
            )
        };
        let p = Path::new("agent.toml");
        assert_eq!(parse(&text(""), p).unwrap().audit_spool_max_bytes, None);
        let c = parse(&text("[audit]\nspool_max_mb = 2\n"), p).unwrap();
        assert_eq!(c.audit_spool_max_bytes, Some(2 << 20));
        let e = parse(&text("[audit]\nspool_max_mb = 0\n"), p).unwrap_err();
        assert_eq!(e.key, "audit.spool_max_mb");
        let e = parse(&text("[audit]\nspool = 1\n"), p).unwrap_err();
        assert!(e.key.starts_with("audit"), "{e}");
    }
}
