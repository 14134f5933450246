//! Real third-party tools against fyvault's output. Here: the readers of the mount's environment
//! files (docs/fuse.md, "Environment files"): python-dotenv (`interpolate=False` and its default), Node's `dotenv` (its default
//! parser and `fast: true`), and bash and dash sourcing `.env.sh` under `set -eu`. Used by the
//! pure rendering test (`tests/dotenv_parsers.rs`) and by the FUSE test (`tests/fuse_files.rs`).
//!
//! The parsers are required, not optional: python-dotenv and dash come from `scripts/deps`, Node's
//! `dotenv` is installed by [`node_dir`] with `npm ci` from `tests/interop/package-lock.json`
//! ([`npm_ci`] does the same for other test directories, e.g. `tests/studio`).
//! [`sealing`]: sealing with pyhpke and `@hpke/core` (docs/vault.md).
#![allow(dead_code)]

pub mod sealing;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// One value class and what the docs promise about it.
pub struct Case {
    pub name: String,
    pub value: Vec<u8>,
    /// Present in `.env` at all (not a comment line).
    pub in_env: bool,
    /// Read exactly by Node's dotenv.
    pub node_exact: bool,
    /// Read exactly by python-dotenv with its default interpolation.
    pub py_default_exact: bool,
    /// Present in `.env.sh`.
    pub in_shell: bool,
}

fn case(i: usize, label: &str, value: impl Into<Vec<u8>>) -> Case {
    Case {
        name: format!("C{i:02}_{label}"),
        value: value.into(),
        in_env: true,
        node_exact: true,
        py_default_exact: true,
        in_shell: true,
    }
}

/// Every value class of the issue (and the corners of each quoting form), each followed by a
/// plain sentinel entry (`…_ZZ`), so that a value that breaks the parse of its neighbours shows.
/// Commands in values `touch` `canary`, which must never exist afterwards.
pub fn value_classes(canary: &Path) -> Vec<Case> {
    let c = canary.display();
    let mut big = String::new();
    while big.len() < 60 * 1024 {
        big.push_str("it's $HOME `x` #1 ñ\t€ ");
        big.push('\n');
    }
    let raw: Vec<(&str, Vec<u8>)> = vec![
        ("BOTH_QUOTES", b"it's \"quoted\"".to_vec()),
        ("BACKSLASH", b"a\\b".to_vec()),
        ("DOLLAR_VAR", b"$HOME and $NOPE".to_vec()),
        ("DOLLAR_BRACE", b"${HOME}/x".to_vec()),
        ("DOLLAR_BRACE_DEFAULT", b"${NOPE:-fallback}".to_vec()),
        ("CMD_SUBST", format!("$(touch {c})").into_bytes()),
        ("BACKQUOTES", format!("`touch {c}`").into_bytes()),
        ("QUOTE_CMD", format!("it's $(touch {c})").into_bytes()),
        ("QUOTE_BACKQUOTES", format!("it's `touch {c}`").into_bytes()),
        ("LONE_BACKQUOTE", b"it's a ` here".to_vec()),
        ("HASH_FIRST", b"#not a comment".to_vec()),
        ("HASH_MID", b"a #b".to_vec()),
        ("SPACES", b"  leading and trailing  ".to_vec()),
        ("EQUALS", b"=a=b==".to_vec()),
        ("LF", b"line1\nline2\n".to_vec()),
        ("CRLF", b"line1\r\nline2\r\n".to_vec()),
        ("CR", b"a\rb".to_vec()),
        ("TABS", b"\ttab\t".to_vec()),
        ("LITERAL_BACKSLASH_N", b"a\\nb".to_vec()),
        ("CONTROL", b"\x01\x07\x1b[0m\x7f\x0b\x0c\x1f".to_vec()),
        ("EMOJI", "key 🔑 ✓".as_bytes().to_vec()),
        ("RTL", "שלום مرحبا \u{202e}abc".as_bytes().to_vec()),
        ("JSON", br#"{"key":"va'l\u00e9","n":[1,2]}"#.to_vec()),
        ("JSON_PRETTY", b"{\n  \"a\": \"$b #c\"\n}\n".to_vec()),
        ("BIG_60K", big.into_bytes()),
        ("INJECT_LF", b"x\nC99_INJECTED=pwned\n".to_vec()),
        ("INJECT_QUOTE", b"x'\nC99_INJECTED='pwned".to_vec()),
        ("INJECT_DQUOTE", b"x\"\nC99_INJECTED=\"pwned".to_vec()),
        ("TWO_BACKSLASHES", b"C:\\\\share".to_vec()),
        ("TRAILING_BACKSLASH", b"dir\\".to_vec()),
        ("TRAILING_BACKSLASH_QUOTES", b"it's \"x\" \\".to_vec()),
        ("TRAILING_BACKSLASH_SPACE", b" x\\".to_vec()),
        ("EMPTY", b"".to_vec()),
        ("ONLY_QUOTE", b"'".to_vec()),
        ("ONLY_DQUOTE", b"\"".to_vec()),
        (
            "LINE_SEPARATORS",
            "a\u{2028}b\u{2029}c\u{85}d".as_bytes().to_vec(),
        ),
        ("EXPORT_TEXT", b"export X=1".to_vec()),
        ("BACKSLASH_QUOTES", b"a\\'b\\\"c".to_vec()),
        ("NOT_UTF8", b"\xff\xfe".to_vec()),
        ("NUL", b"a\0b".to_vec()),
    ];
    let mut cases: Vec<Case> = raw
        .into_iter()
        .enumerate()
        .map(|(i, (label, value))| case(i + 1, label, value))
        .collect();
    for c in &mut cases {
        let label = &c.name[4..];
        // The docs: form 3 (a quote, CR or `\\`, and a `"` or `\`) is python-dotenv only.
        if matches!(
            label,
            "BOTH_QUOTES" | "JSON" | "TWO_BACKSLASHES" | "BACKSLASH_QUOTES"
        ) {
            c.node_exact = false;
        }
        if label.starts_with("DOLLAR_BRACE") {
            c.py_default_exact = false;
        }
        if matches!(label, "TRAILING_BACKSLASH_SPACE" | "NOT_UTF8" | "NUL") {
            c.in_env = false;
        }
        if matches!(label, "NOT_UTF8" | "NUL") {
            c.in_shell = false;
        }
    }
    // A name the shell evaluates as code: kept out of `.env.sh` only.
    let mut ps4 = case(0, "", format!("$(touch {c})"));
    ps4.name = "PS4".into();
    ps4.in_shell = false;
    cases.push(ps4);
    let sentinels: Vec<Case> = cases
        .iter()
        .map(|c| {
            let mut s = case(0, "", format!("sentinel after {}", c.name));
            s.name = format!("{}_ZZ", c.name);
            s
        })
        .collect();
    cases.extend(sentinels);
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    cases
}

/// `tests/interop` with its npm packages installed ([`npm_ci`], once per test process).
pub fn node_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| npm_ci(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")))
}

/// Installs `dir`'s npm packages with `npm ci` when `node_modules` is missing or older than
/// `package-lock.json`; returns `dir`.
pub fn npm_ci(dir: &Path) -> PathBuf {
    let modified = |p: PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let installed = modified(dir.join("node_modules/.package-lock.json"));
    if installed.is_none() || installed < modified(dir.join("package-lock.json")) {
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(dir)
            .output()
            .expect("npm (Node.js) is needed for these tests: run scripts/deps");
        assert!(
            out.status.success(),
            "npm ci in {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir.to_owned()
}

/// Every distinct Python interpreter here that has python-dotenv (at least one).
pub fn python_dotenv() -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut found = Vec::new();
    for py in ["python3", "/usr/bin/python3"] {
        let Ok(out) = Command::new(py)
            .args(["-c", "import dotenv, sys; print(sys.executable)"])
            .output()
        else {
            continue;
        };
        let exe = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() && seen.insert(exe) {
            found.push(py.to_owned());
        }
    }
    assert!(
        !found.is_empty(),
        "python-dotenv is missing (scripts/deps installs python3-dotenv)"
    );
    found
}

type Parsed = BTreeMap<String, Option<String>>;

fn run_json(cmd: &mut Command) -> BTreeMap<String, Parsed> {
    let out = cmd.output().expect("run a parser");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("parser output is JSON")
}

/// Checks one parser's reading of `.env` against `cases`: exactly the expected names (nothing
/// injected, nothing lost), every value exact where `exact(case)`.
fn check_parsed(parser: &str, parsed: &Parsed, cases: &[Case], exact: impl Fn(&Case) -> bool) {
    let want: BTreeSet<&str> = cases
        .iter()
        .filter(|c| c.in_env)
        .map(|c| c.name.as_str())
        .collect();
    let got: BTreeSet<&str> = parsed.keys().map(String::as_str).collect();
    assert_eq!(got, want, "{parser}: names differ");
    for c in cases.iter().filter(|c| c.in_env) {
        let value = parsed[&c.name].as_deref().map(str::as_bytes);
        if exact(c) {
            assert_eq!(
                value,
                Some(&c.value[..]),
                "{parser} read {} differently",
                c.name
            );
        } else {
            assert_ne!(
                value,
                Some(&c.value[..]),
                "{parser} read {} exactly, which the docs say it does not",
                c.name
            );
        }
    }
}

/// Reads the `.env` at `path` with python-dotenv (both settings, every interpreter that has
/// it) and Node's dotenv (both parsers) and checks each reading against `cases`.
pub fn check_dotenv_file(path: &Path, cases: &[Case]) {
    let dir = node_dir();
    for py in python_dotenv() {
        let got = run_json(
            Command::new(&py)
                .arg(dir.join("dotenv_py.py"))
                .arg(path)
                .env_remove("NOPE"),
        );
        check_parsed(
            &format!("{py} python-dotenv interpolate=False"),
            &got["off"],
            cases,
            |_| true,
        );
        check_parsed(
            &format!("{py} python-dotenv default"),
            &got["default"],
            cases,
            |c| c.py_default_exact,
        );
    }
    let got = run_json(Command::new("node").arg(dir.join("dotenv.js")).arg(path));
    check_parsed("node dotenv", &got["default"], cases, |c| c.node_exact);
    check_parsed("node dotenv fast", &got["fast"], cases, |c| c.node_exact);
}

/// Sources the `.env.sh` at `path` with bash and with dash under `set -eu` and checks every
/// exported variable against `cases` (and that nothing else was set).
pub fn check_shell_file(path: &Path, cases: &[Case]) {
    let baseline = ["PATH", "PWD", "OLDPWD", "SHLVL", "_"];
    for sh in ["bash", "dash"] {
        let out = Command::new(sh)
            .args(["-c", "set -eu; . \"$1\"; exec env -0", sh])
            .arg(path)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .output()
            .unwrap_or_else(|e| panic!("{sh} is needed (scripts/deps installs it): {e}"));
        assert!(
            out.status.success(),
            "{sh} failed to source the file: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut got: BTreeMap<&str, &[u8]> = BTreeMap::new();
        for var in out.stdout.split(|b| *b == 0).filter(|v| !v.is_empty()) {
            let eq = var.iter().position(|b| *b == b'=').unwrap();
            let name = std::str::from_utf8(&var[..eq]).unwrap();
            if !baseline.contains(&name) {
                got.insert(name, &var[eq + 1..]);
            }
        }
        let want: BTreeMap<&str, &[u8]> = cases
            .iter()
            .filter(|c| c.in_shell)
            .map(|c| (c.name.as_str(), &c.value[..]))
            .collect();
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{sh}"
        );
        for (name, value) in want {
            assert_eq!(got[name], value, "{sh} read {name} differently");
        }
    }
}
