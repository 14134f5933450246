//! The fuzzing harness: proptest on stable, time-bounded, with a corpus kept in the repo.
//!
//! Each target is a function of one input (`Input`: serializable, so that interesting inputs
//! can be kept as files). A run of a target:
//! 1. replays every file of `tests/fuzz/corpus/TARGET/` (seeds and the inputs of crashes
//!    found earlier: each crash fixed is kept there as its regression test);
//! 2. replays the seeds proptest persisted in `tests/fuzz/regressions/TARGET.txt`;
//! 3. generates fresh inputs (structure-aware strategies, mixed with raw bytes) for
//!    `FYVAULT_FUZZ_SECONDS` seconds (default 3; CI's bound) in batches, shrinking any failure
//!    to a minimal input, which it prints and persists.
//!
//! A failure is a panic inside the target (the code under test panicked, or the target's
//! assertion about the answer did not hold). Longer runs: `FYVAULT_FUZZ_SECONDS=600 cargo test
//! --test fuzz -- TARGET`.
#![allow(dead_code)] // each target uses a different part

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Inputs of each batch; a batch ends every few hundred milliseconds at most.
const BATCH: u32 = 32;

fn budget() -> Duration {
    let secs = std::env::var("FYVAULT_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(secs.max(0.0))
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(target)
}

/// Replays the corpus, then fuzzes `target` for the time budget. Returns the number of inputs
/// tried (corpus included).
pub fn fuzz<I, S>(target: &'static str, strategy: S, run: impl Fn(&I)) -> u64
where
    I: Serialize + DeserializeOwned + std::fmt::Debug,
    S: Strategy<Value = I>,
{
    let mut tried = 0u64;
    let dir = corpus_dir(target);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut files: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files {
            let text = std::fs::read(&f).unwrap();
            let input: I = serde_json::from_slice(&text)
                .unwrap_or_else(|e| panic!("corpus file {} is not an input: {e}", f.display()));
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&input)));
            assert!(ok.is_ok(), "corpus input {} fails", f.display());
            tried += 1;
        }
    }
    // Persisted regressions live next to the corpus; proptest resolves the path from the
    // package root (cargo's working directory for tests).
    let regressions: &'static str =
        Box::leak(format!("tests/fuzz/regressions/{target}.txt").into_boxed_str());
    let deadline = Instant::now() + budget();
    loop {
        let config = Config {
            cases: BATCH,
            failure_persistence: Some(Box::new(FileFailurePersistence::Direct(regressions))),
            max_shrink_time: 30_000,
            ..Config::default()
        };
        let mut runner = TestRunner::new(config);
        let result = runner.run(&strategy, |input| {
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&input)));
            ok.map_err(|p| {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                TestCaseError::fail(msg)
            })
        });
        if let Err(e) = result {
            let shown = match &e {
                proptest::test_runner::TestError::Fail(why, input) => format!(
                    "{why}\nminimal input (save it as a file in {} once fixed):\n{}",
                    dir.display(),
                    serde_json::to_string_pretty(input).unwrap_or_default()
                ),
                other => other.to_string(),
            };
            panic!("fuzz target {target} failed: {shown}");
        }
        tried += u64::from(BATCH);
        if Instant::now() >= deadline {
            return tried;
        }
    }
}

/// Strings a parser of untrusted input should meet: empty, huge, control characters, NUL,
/// odd Unicode, path tricks, percent-encoding, numbers at their limits, and arbitrary text.
pub fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<String>(),
        2 => "[A-Z_][A-Z0-9_]{0,130}",
        1 => "[a-z0-9-]{0,70}",
        1 => prop::sample::select(vec![
            String::new(),
            " ".into(),
            "\0".into(),
            "\u{7f}\u{1b}[2J".into(),
            "../../etc/passwd".into(),
            "%2e%2e%2f".into(),
            "%00".into(),
            "production".into(),
            "API_KEY".into(),
            "18446744073709551615".into(),
            "18446744073709551616".into(),
            "-1".into(),
            "1e309".into(),
            "NaN".into(),
            "\u{202e}gnp.exe".into(),
            "\u{fffd}\u{10ffff}".into(),
            "a".repeat(70_000),
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
            "=".into(),
            "fvprov_".into(),
        ]),
    ]
}

/// Any JSON value, biased towards objects whose keys are the API's real field names.
pub fn json_value(fields: &'static [&'static str]) -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::num::f64::NORMAL.prop_map(Value::from),
        nasty_string().prop_map(Value::from),
    ];
    let key = prop_oneof![
        4 => prop::sample::select(fields).prop_map(str::to_owned),
        1 => nasty_string(),
    ];
    leaf.prop_recursive(3, 32, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A body: JSON built from the API's field names, raw bytes, or JSON with bytes flipped.
pub fn body(fields: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => json_value(fields).prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..256),
        1 => (json_value(fields), any::<prop::sample::Index>(), any::<u8>()).prop_map(
            |(v, at, b)| {
                let mut s = v.to_string().into_bytes();
                if !s.is_empty() {
                    let i = at.index(s.len());
                    s[i] = b;
                }
                s
            }
        ),
    ]
}
