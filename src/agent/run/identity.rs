//! Who this agent is to the vault's audit trail: a stable `agent_id` (the vault de-duplicates
//! access events on `(agent_id, seq)`) and the host name shown by `fyvault audit`.
//!
//! The id is kept in `STATE_DIR/agent-id`, next to the spool whose `seq` numbers it qualifies,
//! so the two always travel together. On first start it is derived from the host name and a
//! hash of `/etc/machine-id`, the org, the environment and the state directory: two agents on
//! one host (different state directories) get different ids, and a wiped state directory gets
//! the same id back (the spool's `seq` numbering resumes above the current time, so old and
//! new events never collide). Without a machine id, random bytes stand in.

use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::api::valid_agent_id as valid;

/// Where the id is kept inside the state directory.
pub const AGENT_ID_FILE: &str = "agent-id";

/// This host's name, when the kernel has one.
pub fn host_name() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|h| h.trim().to_owned())
        .find(|h| !h.is_empty())
}

/// The id derived for a first start (see the module docs).
fn derive(
    host: Option<&str>,
    machine_id: Option<&[u8]>,
    org: &str,
    env: &str,
    state: &Path,
) -> String {
    let mut h = Sha256::new();
    match machine_id {
        Some(m) => h.update(m.trim_ascii()),
        None => h.update(rand::random::<[u8; 32]>()),
    }
    for part in [
        org.as_bytes(),
        env.as_bytes(),
        state.as_os_str().as_encoded_bytes(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    let digest = hex::encode(&h.finalize()[..8]);
    let host: String = host
        .unwrap_or("host")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    format!("{host}-{digest}")
}

/// Reads `STATE_DIR/agent-id`, or derives and writes it on first start.
pub fn agent_id(state_dir: &Path, org: &str, env: &str) -> std::io::Result<String> {
    let path = state_dir.join(AGENT_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) if valid(s.trim()) => return Ok(s.trim().to_owned()),
        Ok(_) => tracing::warn!(
            "{} does not hold a valid agent id; writing a new one",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let machine_id = std::fs::read("/etc/machine-id").ok();
    let state = state_dir
        .canonicalize()
        .unwrap_or_else(|_| state_dir.to_owned());
    let id = derive(
        host_name().as_deref(),
        machine_id.as_deref().filter(|m| !m.trim_ascii().is_empty()),
        org,
        env,
        &state,
    );
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{id}\n"))?;
    std::fs::rename(&tmp, &path)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_valid_stable_and_distinct() {
        let p = Path::new("/var/lib/fyvault");
        let a = derive(Some("web 1.example"), Some(b"abc\n"), "org_a", "prod", p);
        assert!(valid(&a), "{a}");
        assert!(a.starts_with("web_1.example-"));
        assert_eq!(
            a,
            derive(Some("web 1.example"), Some(b"abc"), "org_a", "prod", p)
        );
        assert_ne!(
            a,
            derive(Some("web 1.example"), Some(b"abc"), "org_a", "dev", p)
        );
        assert_ne!(
            a,
            derive(
                Some("web 1.example"),
                Some(b"abc"),
                "org_a",
                "prod",
                Path::new("/x")
            )
        );
        assert!(valid(&derive(None, None, "o", "e", p)));
        assert!(valid(&derive(Some(&"h".repeat(300)), None, "o", "e", p)));
    }

    #[test]
    fn the_id_is_kept_in_the_state_dir() {
        let d = tempfile::tempdir().unwrap();
        let a = agent_id(d.path(), "org_a", "prod").unwrap();
        assert_eq!(agent_id(d.path(), "org_a", "prod").unwrap(), a);
        std::fs::write(d.path().join(AGENT_ID_FILE), "custom-id\n").unwrap();
        assert_eq!(agent_id(d.path(), "org_a", "prod").unwrap(), "custom-id");
        std::fs::write(d.path().join(AGENT_ID_FILE), "bad id!").unwrap();
        assert!(valid(&agent_id(d.path(), "org_a", "prod").unwrap()));
    }
}
