//! Validation of the delivery settings: `[credentials]`, `[[template]]` and `[[file]]` (see
//! [`crate::agent::delivery`]). A template is read and parsed here, so a template that does not
//! parse stops the agent at start and makes a `SIGHUP` reload fail (the old set stays), with
//! one line naming the file and the line.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, Ident, Validator};
use crate::agent::delivery::template::valid_template_name;
use crate::agent::delivery::{Delivery, FileRule, Shown, Templates, valid_credential_id};
use crate::api::valid_secret_name;

/// Largest template source accepted (1 MiB).
const MAX_TEMPLATE_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTemplate {
    name: String,
    source: PathBuf,
    #[serde(default)]
    owner: Option<Ident>,
    #[serde(default)]
    group: Option<Ident>,
    #[serde(default)]
    mode: Option<RawMode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    secrets: Vec<String>,
    #[serde(default)]
    owner: Option<Ident>,
    #[serde(default)]
    group: Option<Ident>,
    #[serde(default)]
    mode: Option<RawMode>,
}

/// `mode = 0o640` (a TOML octal integer) or `mode = "0640"` (an octal string).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawMode {
    Number(u32),
    Text(String),
}

impl Validator {
    pub(super) fn delivery(
        &mut self,
        credentials: BTreeMap<String, String>,
        templates: Vec<RawTemplate>,
        files: Vec<RawFile>,
    ) -> Result<Delivery, ConfigError> {
        for (id, name) in &credentials {
            let key = format!("credentials.{id}");
            if !valid_credential_id(id) {
                return Err(self.err(
                    key,
                    "not a systemd credential id (a file name: no '/', not '.' or '..')",
                ));
            }
            if !valid_secret_name(name) {
                return Err(self.err(
                    key,
                    format!("{name:?} is not a secret name (^[A-Z_][A-Z0-9_]{{0,127}}$)"),
                ));
            }
        }
        let mut parsed: Vec<(String, PathBuf, String, Shown)> = Vec::new();
        for (i, t) in templates.into_iter().enumerate() {
            let key = |k: &str| format!("template[{}].{k}", i + 1);
            if !valid_template_name(&t.name) {
                return Err(self.err(
                    key("name"),
                    format!(
                        "{:?} is not a template name: lowercase letters, digits, '.', '_', '-', \
                         starting with a letter or digit (so it never collides with a secret)",
                        t.name
                    ),
                ));
            }
            if parsed.iter().any(|(n, ..)| n == &t.name) {
                return Err(self.err(key("name"), format!("{:?} is listed twice", t.name)));
            }
            self.absolute(&key("source"), &t.source)?;
            let text = self.read_template(&key("source"), &t.source)?;
            let shown = self.shown(&key(""), t.owner, t.group, t.mode)?;
            parsed.push((t.name, t.source, text, shown));
        }
        let templates = Templates::load(parsed).map_err(|e| self.err("template", e.to_string()))?;
        let mut rules = Vec::new();
        for (i, f) in files.into_iter().enumerate() {
            let key = |k: &str| format!("file[{}].{k}", i + 1);
            if f.secrets.is_empty() {
                return Err(self.err(key("secrets"), "missing: list the secret names (globs)"));
            }
            rules.push(FileRule {
                secrets: self.globs(&key("secrets"), &f.secrets)?,
                shown: self.shown(&key(""), f.owner, f.group, f.mode)?,
            });
        }
        Ok(Delivery {
            credentials,
            templates,
            files: rules,
        })
    }

    fn read_template(&self, key: &str, path: &std::path::Path) -> Result<String, ConfigError> {
        let md = std::fs::metadata(path)
            .map_err(|e| self.err(key, format!("cannot read {}: {e}", path.display())))?;
        if !md.is_file() || md.len() > MAX_TEMPLATE_BYTES {
            return Err(self.err(
                key,
                format!("{} is not a regular file of at most 1 MiB", path.display()),
            ));
        }
        std::fs::read_to_string(path)
            .map_err(|e| self.err(key, format!("cannot read {} as text: {e}", path.display())))
    }

    /// `prefix` is `template[N].` or `file[N].`.
    fn shown(
        &self,
        prefix: &str,
        owner: Option<Ident>,
        group: Option<Ident>,
        mode: Option<RawMode>,
    ) -> Result<Shown, ConfigError> {
        let key = |k: &str| format!("{prefix}{k}");
        let mode = match mode {
            None => None,
            Some(m) => {
                let n = match &m {
                    RawMode::Number(n) => Some(*n),
                    RawMode::Text(s) => u32::from_str_radix(s.trim_start_matches("0o"), 8).ok(),
                };
                match n
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|n| *n <= 0o777)
                {
                    Some(n) => Some(n),
                    None => {
                        return Err(self.err(
                            key("mode"),
                            format!("{m:?} is not a permission mode (0o000 to 0o777, e.g. 0o640)"),
                        ));
                    }
                }
            }
        };
        Ok(Shown {
            owner: owner.map(|o| self.uid(&key("owner"), &o)).transpose()?,
            group: group.map(|g| self.gid(&key("group"), &g)).transpose()?,
            mode,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use std::os::unix::fs::PermissionsExt;

    fn base(dir: &std::path::Path) -> String {
        for f in ["token", "key"] {
            let p = dir.join(f);
            std::fs::write(&p, "x").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        format!(
            "vault_url = \"http://127.0.0.1:1\"\norg_id = \"o\"\nenvironment = \"prod\"\n\
             token_file = \"{0}/token\"\nkey_file = \"{0}/key\"\nsocket = \"{0}/s.sock\"\n\
             state_dir = \"{0}/state\"\ngroup = \"\"\n",
            dir.display()
        )
    }

    #[test]
    fn templates_files_and_credentials() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("app.conf.j2");
        std::fs::write(&src, "dsn={{ DB_URL }}\n").unwrap();
        let text = format!(
            "{}[credentials]\n\"db.url\" = \"DB_URL\"\n\n[[template]]\nname = \"app.conf\"\n\
             source = \"{}\"\nowner = 0\nmode = \"0600\"\n\n[[file]]\nsecrets = [\"TLS_*\"]\n\
             owner = \"root\"\ngroup = 0\nmode = 0o600\n",
            base(d.path()),
            src.display()
        );
        let c = parse(&text, &d.path().join("agent.toml")).unwrap();
        let t = c.delivery.templates.get("app.conf").unwrap();
        assert_eq!(
            (t.uses.clone(), t.shown.mode),
            (vec!["DB_URL".to_owned()], Some(0o600))
        );
        assert_eq!(c.delivery.shown_for_secret("TLS_KEY").mode, Some(0o600));
        assert_eq!(c.delivery.shown_for_secret("OTHER").mode, None);
        assert_eq!(c.delivery.credential_secret("db.url"), Some("DB_URL"));

        // A template that does not parse: one line naming the file and the line.
        std::fs::write(&src, "ok\n{% for %}\n").unwrap();
        let e = parse(&text, &d.path().join("agent.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("{}: line 2: ", src.display())), "{e}");
        assert!(!e.contains('\n'));

        for (bad, key) in [
            (
                "[[template]]\nname = \"STRIPE_SK\"\nsource = \"/x\"\n",
                "template[1].name",
            ),
            (
                "[[file]]\nsecrets = [\"A\"]\nmode = 0o1777\n",
                "file[1].mode",
            ),
            ("[credentials]\n\"a/b\" = \"A\"\n", "credentials.a/b"),
            ("[credentials]\n\"a\" = \"lower\"\n", "credentials.a"),
        ] {
            let e = parse(
                &format!("{}{bad}", base(d.path())),
                &d.path().join("agent.toml"),
            )
            .unwrap_err();
            assert_eq!(e.key, key, "{e}");
        }
    }
}
