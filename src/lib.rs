//! fyvault: providers push credentials into a vault that keeps them sealed to the environment's
//! key; a host agent serves them to local apps as a read-only FUSE filesystem and a Unix-socket
//! HTTP API, with grace periods on rotation and an access trail of every read.
//!
//! Layout (DESIGN §2): [`api`] is the wire contract, [`secret`] the zeroizing type, [`crypto`]
//! sealing and tokens, [`rfc3339`] the one time format, [`retry`] the one backoff, [`alloc`] the
//! one allocator setting,
//! [`client`] the vault HTTP client, [`vault`] the server, [`agent`] the host
//! daemon, [`cli`] one file per command family.

pub mod agent;
pub mod alloc;
pub mod api;
pub mod cli;
pub mod client;
pub mod crypto;
pub mod retry;
pub mod rfc3339;
pub mod secret;
pub mod vault;
