//! The separate-process reader (`reader.c`): what apps do, in a process of its own, so every
//! read-path and socket figure includes the cross-process cost apps pay (issue 18).
//!
//! [`Reader::build`] compiles `reader.c` with the system C compiler into `target/bench/`
//! (again only when the source changed); [`Reader::file`], [`Reader::http`] and
//! [`Reader::list`] run it once and return its figures.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::cleanup;
use super::report::target_dir;

const SOURCE: &str = include_str!("reader.c");

/// One run of the reader: every operation of every thread, over the timed window.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub n: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub ops_per_s: f64,
    /// Bytes the last operation returned (file: bytes read; http: body length; list: entries).
    pub bytes: u64,
}

/// The compiled reader.
#[derive(Debug, Clone)]
pub struct Reader {
    exe: PathBuf,
}

impl Reader {
    /// Compiles the reader (gcc -O2 -pthread) unless the binary for this source exists.
    pub fn build() -> Reader {
        let dir = target_dir().join("bench");
        std::fs::create_dir_all(&dir).expect("create target/bench");
        let hash = crc32fast::hash(SOURCE.as_bytes());
        let exe = dir.join(format!("reader-{hash:08x}"));
        if !exe.exists() {
            let src = dir.join("reader.c");
            std::fs::write(&src, SOURCE).expect("write reader.c");
            let cc = std::env::var("CC").unwrap_or_else(|_| "gcc".into());
            let tmp = exe.with_extension("tmp");
            let out = Command::new(&cc)
                .args(["-O2", "-pthread", "-Wall", "-o"])
                .arg(&tmp)
                .arg(&src)
                .output()
                .unwrap_or_else(|e| panic!("run {cc} (a C compiler is needed): {e}"));
            assert!(
                out.status.success(),
                "compiling the reader failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::rename(&tmp, &exe).expect("install the reader");
        }
        Reader { exe }
    }

    /// `open` + `read` 4 KiB + `close` of `path` in a loop, `threads` threads, `secs` seconds.
    pub fn file(&self, path: &Path, secs: f64, threads: usize) -> Run {
        self.run(&[
            "file".as_ref(),
            path.as_os_str(),
            secs.to_string().as_ref(),
            threads.to_string().as_ref(),
        ])
    }

    /// Keep-alive `GET url` over the Unix socket `sock`, one connection per thread.
    pub fn http(&self, sock: &Path, url: &str, secs: f64, threads: usize) -> Run {
        self.run(&[
            "http".as_ref(),
            sock.as_os_str(),
            url.as_ref(),
            secs.to_string().as_ref(),
            threads.to_string().as_ref(),
        ])
    }

    /// `opendir` + `readdir` to the end + `closedir` of `dir`, one thread.
    pub fn list(&self, dir: &Path, secs: f64) -> Run {
        self.run(&["list".as_ref(), dir.as_os_str(), secs.to_string().as_ref()])
    }

    fn run(&self, args: &[&std::ffi::OsStr]) -> Run {
        let mut cmd = Command::new(&self.exe);
        cmd.args(args);
        cleanup::clean_signal_mask(&mut cmd);
        let out = cmd.output().expect("run the reader");
        assert!(
            out.status.success(),
            "the reader failed ({:?}): {}",
            args,
            String::from_utf8_lossy(&out.stderr)
        );
        parse(&String::from_utf8_lossy(&out.stdout))
            .unwrap_or_else(|| panic!("reader output: {}", String::from_utf8_lossy(&out.stdout)))
    }
}

fn parse(line: &str) -> Option<Run> {
    let field = |k: &str| -> Option<f64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))?
            .parse()
            .ok()
    };
    Some(Run {
        n: field("n")? as u64,
        p50: Duration::from_nanos(field("p50_ns")? as u64),
        p99: Duration::from_nanos(field("p99_ns")? as u64),
        ops_per_s: field("ops_per_s")?,
        bytes: field("bytes")? as u64,
    })
}
