//! Sealing a value as a third party would (docs/vault.md, "Sealing a value yourself"): with
//! pyhpke (`tests/interop/seal.py`, installed by [`pyhpke_dir`] with pip from
//! `tests/interop/requirements.txt`), with `@hpke/core` (`tests/interop/seal.mjs`) and with the
//! studio's WebCrypto module `web/hpke.js` (`tests/interop/seal_webcrypto.mjs`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// `tests/interop/pydeps`, holding pyhpke and its dependencies (`pip install --target`, once
/// per test process, again whenever `requirements.txt` changed).
pub fn pyhpke_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let interop = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
        let dir = interop.join("pydeps");
        let wanted = std::fs::read(interop.join("requirements.txt")).unwrap();
        let stamp = dir.join("requirements.txt");
        if std::fs::read(&stamp).ok() != Some(wanted.clone()) {
            let _ = std::fs::remove_dir_all(&dir);
            let out = Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .args(["--no-warn-script-location", "--target"])
                .arg(&dir)
                .arg("-r")
                .arg(interop.join("requirements.txt"))
                .output()
                .expect("python3 with pip is needed for the sealing tests (scripts/deps)");
            assert!(
                out.status.success(),
                "pip install pyhpke failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::write(&stamp, &wanted).unwrap();
        }
        dir
    })
}

/// A sealing tool's run: `value` on stdin, the sealed value (one line of base64) on stdout.
fn run(mut cmd: Command, value: &[u8]) -> String {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the sealing tool");
    child.stdin.take().unwrap().write_all(value).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// What to get wrong on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mistake {
    None,
    /// The library's default info (empty) instead of `fyvault sealed secret v1`.
    DefaultInfo,
    /// An AAD for another secret name.
    WrongAad,
}

/// Seals `value` for (org, env, name) to `public_key` with pyhpke.
pub fn seal_python(
    public_key: &str,
    place: (&str, &str, &str),
    value: &[u8],
    mistake: Mistake,
) -> String {
    let (org, env, name) = place;
    let mut cmd = Command::new("python3");
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/seal.py"))
        .args([public_key, org, env, name])
        .env("PYTHONPATH", pyhpke_dir());
    match mistake {
        Mistake::None => {}
        Mistake::DefaultInfo => {
            cmd.env("FYVAULT_TEST_INFO", "");
        }
        Mistake::WrongAad => {
            cmd.env("FYVAULT_TEST_AAD", format!("fyvault-v1|{org}|{env}|OTHER"));
        }
    }
    run(cmd, value)
}

/// Seals `value` for (org, env, name) to `public_key` with `@hpke/core` under Node.
pub fn seal_node(public_key: &str, place: (&str, &str, &str), value: &[u8]) -> String {
    let (org, env, name) = place;
    let dir = super::node_dir();
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("seal.mjs"))
        .args([public_key, org, env, name])
        .current_dir(dir);
    run(cmd, value)
}

/// Seals `value` for (org, env, name) to `public_key` with the studio's `web/hpke.js` under Node
/// (WebCrypto, no npm package).
pub fn seal_webcrypto(public_key: &str, place: (&str, &str, &str), value: &[u8]) -> String {
    let (org, env, name) = place;
    let mut cmd = Command::new("node");
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/seal_webcrypto.mjs"))
        .args([public_key, org, env, name]);
    run(cmd, value)
}
