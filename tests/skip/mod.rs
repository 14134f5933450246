//! The one way a test skips: a line on stderr (`SKIP test: reason`; cargo shows it with
//! `--nocapture`) and, when `FYVAULT_SKIP_LOG` names a file (`scripts/test` sets it), one line
//! `test<TAB>reason` appended there, so that `scripts/test` prints one visible
//! `SKIPPED n tests: …` line after the run instead of letting skips pass silently.
#![allow(dead_code)] // each test file uses a different part

use std::io::Write as _;

pub fn skip(test: &str, reason: &str) {
    eprintln!("SKIP {test}: {reason}");
    if let Some(path) = std::env::var_os("FYVAULT_SKIP_LOG") {
        let line = format!("{test}\t{reason}\n");
        // One write(2) with O_APPEND: lines from tests running in parallel never interleave.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = f.write_all(line.as_bytes());
        }
    }
}
