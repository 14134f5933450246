//! `.env` and `.env.sh` as rendered (no mount), read by the real third-party parsers: every value
//! class is read back as docs/fuse.md promises, no entry disturbs its neighbours, and nothing in
//! a value ever runs.

mod common_interop;

use common_interop::{Case, check_dotenv_file, check_shell_file, value_classes};
use fyvault::agent::dotenv::{Form, render};
use fyvault::secret::Secret;

fn write(dir: &std::path::Path, file: &str, form: Form, cases: &[Case]) -> std::path::PathBuf {
    let secrets: Vec<(&str, Secret)> = cases
        .iter()
        .map(|c| (c.name.as_str(), Secret::copy_from(&c.value)))
        .collect();
    let out = render(form, secrets.iter().map(|(n, s)| (*n, s)));
    let path = dir.join(file);
    std::fs::write(&path, out.expose()).unwrap();
    path
}

#[test]
fn dotenv_parsers_read_every_value_class_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let canary = dir.path().join("canary");
    let cases = value_classes(&canary);
    let env = write(dir.path(), ".env", Form::Dotenv, &cases);
    check_dotenv_file(&env, &cases);
    assert!(!canary.exists(), "a value ran a command");
}

#[test]
fn shells_source_every_value_class_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let canary = dir.path().join("canary");
    let cases = value_classes(&canary);
    let sh = write(dir.path(), ".env.sh", Form::Shell, &cases);
    check_shell_file(&sh, &cases);
    // xtrace expands PS4 (left out of the file): sourcing with `set -x` runs nothing either.
    for shell in ["bash", "dash"] {
        let out = std::process::Command::new(shell)
            .args(["-c", "set -eux; . \"$1\"", shell])
            .arg(&sh)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(!canary.exists(), "a value ran a command");
}
