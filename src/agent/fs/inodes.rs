//! The inode scheme: fixed inodes for the root, `.previous`, `.env` and `.env.sh`, and one inode
//! per secret name, version and place (`/NAME` or `.previous/NAME`), computed from an interned
//! name table: `FIRST + (name index << 33 | low 32 bits of the version << 1 | place)`.
//!
//! An inode per version is what lets FUSE passthrough pin a handle to its version (the kernel
//! requires all passthrough handles of one inode to read one backing file, see `passthrough`)
//! and keeps any kernel cache of one inode to one version's bytes. A name entry the kernel
//! still holds for an older version leads `open` to that version's inode, which answers ESTALE
//! (the kernel then looks the name up again and retries). Versions that differ by a multiple
//! of 2^32 would share an inode; the vault numbers versions one by one, and at most two
//! versions of a name (current and previous) are served at once.
//!
//! Template names (`[[template]]`, never valid secret names) are interned in the same table
//! and use only the current place, with version 0.
//!
//! Names are interned only once the view has held them (a lookup of a name the view does not
//! hold allocates nothing), so the table is bounded by the secrets the agent has ever served.
//! An inode number never changes meaning while the agent runs.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::agent::dotenv::Form;
use crate::agent::view::Which;

pub const ROOT: u64 = 1;
pub const PREVIOUS_DIR: u64 = 2;
pub const DOTENV: u64 = 3;
pub const DOTENV_SH: u64 = 4;
/// First per-secret inode (see the module docs for the layout).
const FIRST: u64 = 16;
/// Names beyond this many are not given inodes (the layout keeps 30 bits for the index).
const MAX_NAMES: u64 = 1 << 30;

pub const PREVIOUS_DIR_NAME: &str = ".previous";
pub const DOTENV_NAME: &str = ".env";
pub const DOTENV_SH_NAME: &str = ".env.sh";

/// What an inode stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Root,
    PreviousDir,
    /// `.env` or `.env.sh`.
    DotEnv(Form),
    Secret(String, Which),
    /// A `[[template]]` file (its name is never a secret name; only the current slot is used).
    Template(String),
}

#[derive(Debug, Default)]
struct Table {
    by_name: HashMap<String, u64>,
    names: Vec<String>,
}

/// The interned name table. Every method takes the lock briefly and does no I/O.
#[derive(Debug, Default)]
pub struct Inodes {
    table: RwLock<Table>,
}

fn ino_of(index: u64, which: Which, version: u64) -> u64 {
    let place = match which {
        Which::Current => 0,
        Which::Previous => 1,
    };
    FIRST + ((index << 33) | ((version & 0xffff_ffff) << 1) | place)
}

impl Inodes {
    pub fn new() -> Self {
        Self::default()
    }

    /// The inode of `name` at `version` as `which` (interning the name), or None once the
    /// table is full (2^30 names).
    pub fn intern(&self, name: &str, which: Which, version: u64) -> Option<u64> {
        if let Some(i) = self.index(name) {
            return Some(ino_of(i, which, version));
        }
        let mut t = self.table.write().expect("inode table lock");
        let index = match t.by_name.get(name) {
            Some(i) => *i,
            None => {
                let i = t.names.len() as u64;
                if i >= MAX_NAMES {
                    return None;
                }
                t.names.push(name.to_owned());
                t.by_name.insert(name.to_owned(), i);
                i
            }
        };
        Some(ino_of(index, which, version))
    }

    fn index(&self, name: &str) -> Option<u64> {
        let t = self.table.read().expect("inode table lock");
        t.by_name.get(name).copied()
    }

    /// Was `name` ever given an inode (so that the kernel may hold entries for it)?
    pub fn known(&self, name: &str) -> bool {
        self.index(name).is_some()
    }

    /// The inode of `name` at `version` as `which`, if the name was interned.
    pub fn get(&self, name: &str, which: Which, version: u64) -> Option<u64> {
        self.index(name).map(|i| ino_of(i, which, version))
    }

    /// What `ino` stands for.
    pub fn node(&self, ino: u64) -> Option<Node> {
        match ino {
            ROOT => Some(Node::Root),
            PREVIOUS_DIR => Some(Node::PreviousDir),
            DOTENV => Some(Node::DotEnv(Form::Dotenv)),
            DOTENV_SH => Some(Node::DotEnv(Form::Shell)),
            i if i >= FIRST => {
                let rel = i - FIRST;
                let which = if rel.is_multiple_of(2) {
                    Which::Current
                } else {
                    Which::Previous
                };
                let t = self.table.read().expect("inode table lock");
                let name = t.names.get(usize::try_from(rel >> 33).ok()?)?;
                if crate::api::valid_secret_name(name) {
                    Some(Node::Secret(name.clone(), which))
                } else if which == Which::Current {
                    Some(Node::Template(name.clone()))
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// Whether a secret inode stands for `version` (compared on the version's low 32 bits, as
    /// the inode carries them).
    pub fn is_version(ino: u64, version: u64) -> bool {
        ino >= FIRST && ((ino - FIRST) >> 1) & 0xffff_ffff == version & 0xffff_ffff
    }
}

/// Why a name given to `lookup` is refused before the table is even consulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadName {
    /// `/`, NUL, `.`, `..`: never a valid component here.
    Invalid,
    /// Longer than any secret name can be.
    TooLong,
    /// Not a secret name (so it cannot exist).
    NoSuchName,
}

/// Checks a directory entry name: `Ok` only for a syntactically valid secret name
/// (`^[A-Z_][A-Z0-9_]{0,127}$`).
pub fn check_name(raw: &[u8]) -> Result<&str, BadName> {
    if raw.is_empty() || raw == b"." || raw == b".." || raw.contains(&b'/') || raw.contains(&0) {
        return Err(BadName::Invalid);
    }
    if raw.len() > 128 {
        return Err(BadName::TooLong);
    }
    let s = std::str::from_utf8(raw).map_err(|_| BadName::NoSuchName)?;
    if crate::api::valid_secret_name(s) {
        Ok(s)
    } else {
        Err(BadName::NoSuchName)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inodes_are_stable_and_distinct() {
        let t = Inodes::new();
        let a = t.intern("A", Which::Current, 1).unwrap();
        let ap = t.intern("A", Which::Previous, 1).unwrap();
        let a2 = t.intern("A", Which::Current, 2).unwrap();
        let b = t.intern("B", Which::Current, 1).unwrap();
        let all = [a, ap, a2, b];
        for (i, x) in all.iter().enumerate() {
            for y in &all[i + 1..] {
                assert_ne!(x, y);
            }
        }
        assert_eq!(t.intern("A", Which::Current, 1), Some(a));
        assert_eq!(t.get("B", Which::Current, 1), Some(b));
        assert_eq!(t.node(a), Some(Node::Secret("A".into(), Which::Current)));
        assert_eq!(t.node(a2), Some(Node::Secret("A".into(), Which::Current)));
        assert_eq!(t.node(ap), Some(Node::Secret("A".into(), Which::Previous)));
        assert!(Inodes::is_version(a, 1) && Inodes::is_version(ap, 1));
        assert!(Inodes::is_version(a2, 2) && !Inodes::is_version(a2, 1));
        assert!(Inodes::is_version(a, 1 + (1 << 32)), "low 32 bits");
        assert_eq!(t.node(ROOT), Some(Node::Root));
        assert_eq!(t.node(DOTENV), Some(Node::DotEnv(Form::Dotenv)));
        assert_eq!(t.node(DOTENV_SH), Some(Node::DotEnv(Form::Shell)));
        assert_eq!(t.node(PREVIOUS_DIR), Some(Node::PreviousDir));
        assert_eq!(t.node(5), None);
        assert_eq!(t.node(ino_of(2, Which::Current, 1)), None, "no third name");
        assert_eq!(t.get("C", Which::Current, 1), None);
        assert!(t.known("A") && !t.known("C"));
        let tpl = t.intern("app.conf", Which::Current, 0).unwrap();
        assert_eq!(t.node(tpl), Some(Node::Template("app.conf".into())));
        assert_eq!(t.node(tpl + 1), None);
        assert!(
            [ROOT, PREVIOUS_DIR, DOTENV, DOTENV_SH]
                .iter()
                .all(|f| *f < a)
        );
        // The largest index and version still fit in 64 bits.
        let _ = ino_of(MAX_NAMES - 1, Which::Previous, u64::MAX);
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(check_name(b"STRIPE_SK"), Ok("STRIPE_SK"));
        assert_eq!(check_name(b"_X1"), Ok("_X1"));
        for bad in [&b"."[..], b"..", b"a/b", b"A\0B", b""] {
            assert_eq!(check_name(bad), Err(BadName::Invalid), "{bad:?}");
        }
        assert_eq!(check_name(&[b'A'; 129]), Err(BadName::TooLong));
        assert_eq!(check_name(&[b'A'; 128]).map(str::len), Ok(128));
        for bad in [&b"lower"[..], b"1ABC", b"A-B", b"\xff", b"etc"] {
            assert_eq!(check_name(bad), Err(BadName::NoSuchName), "{bad:?}");
        }
    }
}
