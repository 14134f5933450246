//! The inode scheme: fixed inodes for the root, `.previous`, `.env` and `.env.sh`, and two stable inodes
//! per secret name (current and previous), allocated from an interned name table.
//!
//! Template names (`[[template]]`, never valid secret names) are interned in the same table
//! and use only the current slot.
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
/// First per-secret inode; `FIRST + 2*i` is secret `i`'s current file, `+1` its previous.
const FIRST: u64 = 16;

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

fn ino_of(index: u64, which: Which) -> u64 {
    FIRST
        + 2 * index
        + match which {
            Which::Current => 0,
            Which::Previous => 1,
        }
}

impl Inodes {
    pub fn new() -> Self {
        Self::default()
    }

    /// The inode of `name` (interning it).
    pub fn intern(&self, name: &str, which: Which) -> u64 {
        if let Some(ino) = self.get(name, which) {
            return ino;
        }
        let mut t = self.table.write().expect("inode table lock");
        let index = match t.by_name.get(name) {
            Some(i) => *i,
            None => {
                let i = t.names.len() as u64;
                t.names.push(name.to_owned());
                t.by_name.insert(name.to_owned(), i);
                i
            }
        };
        ino_of(index, which)
    }

    /// The inode of `name` if it was interned.
    pub fn get(&self, name: &str, which: Which) -> Option<u64> {
        let t = self.table.read().expect("inode table lock");
        t.by_name.get(name).map(|i| ino_of(*i, which))
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
                let name = t.names.get(usize::try_from(rel / 2).ok()?)?;
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

    /// Every interned name (for invalidating everything after a lost change notification).
    pub fn all_names(&self) -> Vec<String> {
        self.table.read().expect("inode table lock").names.clone()
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
        let a = t.intern("A", Which::Current);
        let ap = t.intern("A", Which::Previous);
        let b = t.intern("B", Which::Current);
        assert_ne!(a, ap);
        assert_ne!(a, b);
        assert_ne!(ap, b);
        assert_eq!(t.intern("A", Which::Current), a);
        assert_eq!(t.get("B", Which::Previous), Some(b + 1));
        assert_eq!(t.node(a), Some(Node::Secret("A".into(), Which::Current)));
        assert_eq!(t.node(ap), Some(Node::Secret("A".into(), Which::Previous)));
        assert_eq!(t.node(ROOT), Some(Node::Root));
        assert_eq!(t.node(DOTENV), Some(Node::DotEnv(Form::Dotenv)));
        assert_eq!(t.node(DOTENV_SH), Some(Node::DotEnv(Form::Shell)));
        assert_eq!(t.node(PREVIOUS_DIR), Some(Node::PreviousDir));
        assert_eq!(t.node(5), None);
        assert_eq!(t.node(b + 2), None);
        assert_eq!(t.get("C", Which::Current), None);
        let tpl = t.intern("app.conf", Which::Current);
        assert_eq!(t.node(tpl), Some(Node::Template("app.conf".into())));
        assert_eq!(t.node(tpl + 1), None);
        assert!(
            [ROOT, PREVIOUS_DIR, DOTENV, DOTENV_SH]
                .iter()
                .all(|f| *f < a)
        );
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
