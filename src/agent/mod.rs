//! The host agent (DESIGN §4). `view` is pure logic and `secret_view` its one shared home (lock,
//! grace clock, cache invalidation, change feed); `fs` and `socket` are thin adapters that share
//! one access check (`access`) and one audit call (`audit`); only `run` knows every part.
//! `docs/architecture.md` draws the whole.

pub mod access;
pub mod audit;
pub mod cache;
pub mod config;
pub mod delivery;
pub mod dotenv;
pub mod fs;
pub mod gate;
pub mod hygiene;
pub mod mount;
pub mod restore;
pub mod run;
pub mod secret_view;
pub mod ship;
pub mod socket;
pub mod spool;
pub mod state;
pub mod sync;
pub mod tokenfile;
pub mod users;
pub mod view;
