//! The host agent (DESIGN §4). `view` is pure logic; `fs` and `socket` are thin adapters that
//! share one access check (`access`) and one audit call (`audit`); only `run` knows every part.

pub mod access;
pub mod audit;
pub mod cache;
pub mod config;
pub mod dotenv;
pub mod fs;
pub mod hygiene;
pub mod mount;
pub mod run;
pub mod ship;
pub mod socket;
pub mod spool;
pub mod state;
pub mod sync;
pub mod tokenfile;
pub mod view;
