//! Shared by every benchmark: statistics, tables and the JSON report, cleanup of mounts and
//! child processes (even on panic or Ctrl-C), and a real vault / real agent as subprocesses.
#![allow(dead_code)] // each benchmark uses a different part

pub mod cleanup;
pub mod floor_fs;
pub mod longpoll;
pub mod reader;
pub mod report;
pub mod sdk;
pub mod uds;
pub mod world;

#[allow(unused_imports)]
pub use cleanup::{MountGuard, install_cleanup};
#[allow(unused_imports)]
pub use report::{Report, Samples, Table, fmt_dur, fmt_rate};
