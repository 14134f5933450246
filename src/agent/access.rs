//! Caller identity and the access policy (DESIGN §4.4): one check, used by FUSE `open`/`access`
//! and by the socket.
//!
//! The caller is resolved once (at socket accept, or per FUSE request from the kernel's
//! uid/gid/pid) into a typed [`Caller`]; [`Policy::allows`] is the only decision point.
//! Default deny for everyone but root and the configured group. A rule grants secrets (glob
//! patterns) to callers that match *every* selector kind it names (users, groups, executables,
//! units); within one kind, any listed entry matches. A rule naming no selector matches nobody.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// Supplementary groups (from `/proc/PID/status`), when known.
    pub groups: Vec<u32>,
    /// `/proc/PID/exe`, when readable.
    pub exe: Option<PathBuf>,
    /// The systemd unit from `/proc/PID/cgroup`, when the process runs in one.
    pub unit: Option<String>,
}

impl Caller {
    /// Builds a caller from kernel-given credentials, reading the rest from `/proc/PID`.
    /// Missing `/proc` entries (the process exited, or hidepid) leave the fields empty, which
    /// can only make rules match less.
    pub fn from_proc(uid: u32, gid: u32, pid: u32) -> Caller {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        Caller {
            uid,
            gid,
            pid,
            groups: std::fs::read_to_string(proc.join("status"))
                .map(|s| parse_groups(&s))
                .unwrap_or_default(),
            exe: std::fs::read_link(proc.join("exe")).ok(),
            unit: std::fs::read_to_string(proc.join("cgroup"))
                .ok()
                .and_then(|s| parse_unit(&s)),
        }
    }

    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// `Groups:` line of `/proc/PID/status`.
fn parse_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The innermost `.service` (else `.scope`) of the unified cgroup path in `/proc/PID/cgroup`.
fn parse_unit(cgroup: &str) -> Option<String> {
    let path = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .or_else(|| cgroup.lines().find_map(|l| l.split(':').nth(2)))?;
    let parts: Vec<&str> = path.split('/').collect();
    parts
        .iter()
        .rev()
        .find(|p| p.ends_with(".service"))
        .or_else(|| parts.iter().rev().find(|p| p.ends_with(".scope")))
        .map(|s| (*s).to_owned())
}

/// (pid, uid, gid)
type CallerKey = (u32, u32, u32);

/// Resolves callers from `/proc` once per process and caches them briefly, so a hot read path
/// does not re-read `/proc` on every open. Entries live `ttl` (default 1 s): a pid reused or a
/// process that `exec`s is seen correctly after at most that long.
#[derive(Debug)]
pub struct CallerCache {
    ttl: Duration,
    entries: Mutex<HashMap<CallerKey, (Instant, Arc<Caller>)>>,
}

impl Default for CallerCache {
    fn default() -> Self {
        CallerCache::new(Duration::from_secs(1))
    }
}

impl CallerCache {
    pub fn new(ttl: Duration) -> Self {
        CallerCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn resolve(&self, uid: u32, gid: u32, pid: u32) -> Arc<Caller> {
        let now = Instant::now();
        let key = (pid, uid, gid);
        if let Some((at, c)) = self.entries.lock().expect("cache lock").get(&key)
            && now.duration_since(*at) < self.ttl
        {
            return c.clone();
        }
        let caller = Arc::new(Caller::from_proc(uid, gid, pid));
        let mut map = self.entries.lock().expect("cache lock");
        if map.len() > 4096 {
            map.retain(|_, (at, _)| now.duration_since(*at) < self.ttl);
        }
        map.insert(key, (now, caller.clone()));
        caller
    }
}

/// A secret-name glob: `*` any run of characters, `?` one character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    pub fn new(pattern: &str) -> Self {
        Glob(pattern.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, name: &str) -> bool {
        glob_match(self.0.as_bytes(), name.as_bytes())
    }
}

fn glob_match(p: &[u8], s: &[u8]) -> bool {
    // Iterative wildcard match with single backtrack point (linear in practice).
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

/// One grant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    pub secrets: Vec<Glob>,
    pub users: Vec<u32>,
    pub groups: Vec<u32>,
    pub executables: Vec<PathBuf>,
    pub units: Vec<String>,
}

impl Rule {
    /// A rule that names no selector would match nobody; config validation refuses it.
    pub fn has_selector(&self) -> bool {
        !(self.users.is_empty()
            && self.groups.is_empty()
            && self.executables.is_empty()
            && self.units.is_empty())
    }

    fn matches_caller(&self, c: &Caller) -> bool {
        self.has_selector()
            && (self.users.is_empty() || self.users.contains(&c.uid))
            && (self.groups.is_empty() || self.groups.iter().any(|g| c.in_group(*g)))
            && (self.executables.is_empty()
                || c.exe
                    .as_deref()
                    .is_some_and(|e| self.executables.iter().any(|x| Path::new(x) == e)))
            && (self.units.is_empty()
                || c.unit
                    .as_deref()
                    .is_some_and(|u| self.units.iter().any(|x| x == u)))
    }

    fn matches_secret(&self, name: &str) -> bool {
        self.secrets.iter().any(|g| g.matches(name))
    }
}

/// The access policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Members of this group (primary or supplementary) may read every secret.
    pub group: Option<u32>,
    pub rules: Vec<Rule>,
}

impl Policy {
    pub fn new(group: Option<u32>, rules: Vec<Rule>) -> Self {
        Policy { group, rules }
    }

    /// May `caller` read `secret`?
    pub fn allows(&self, caller: &Caller, secret: &str) -> bool {
        caller.uid == 0
            || self.group.is_some_and(|g| caller.in_group(g))
            || self
                .rules
                .iter()
                .any(|r| r.matches_secret(secret) && r.matches_caller(caller))
    }

    /// May systemd unit `unit` be given `secret` as a credential? Only rules whose one selector
    /// kind is `units` and that name `unit` grant it: root's blanket grant and the configured
    /// group do not apply (PID 1 asks on behalf of every unit), and a rule that also names
    /// users, groups or executables cannot be checked before the unit runs, so it grants
    /// nothing here.
    pub fn allows_unit(&self, unit: &str, secret: &str) -> bool {
        self.rules.iter().any(|r| {
            r.users.is_empty()
                && r.groups.is_empty()
                && r.executables.is_empty()
                && r.units.iter().any(|u| u == unit)
                && r.matches_secret(secret)
        })
    }

    /// Does the policy admit `caller` at all (root, the group, or a rule naming it, whatever
    /// secrets the rule grants)? Such callers see the agent's details in `/v1/health`; the
    /// others get liveness only.
    pub fn admits(&self, caller: &Caller) -> bool {
        caller.uid == 0
            || self.group.is_some_and(|g| caller.in_group(g))
            || self.rules.iter().any(|r| r.matches_caller(caller))
    }

    /// The group shown as the owner group of files (the policy's coarse shape).
    pub fn group_gid(&self) -> u32 {
        self.group.unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(uid: u32, gid: u32) -> Caller {
        Caller {
            uid,
            gid,
            pid: 1,
            groups: vec![],
            exe: None,
            unit: None,
        }
    }

    #[test]
    fn globs() {
        let g = Glob::new("STRIPE_*");
        assert!(g.matches("STRIPE_SK") && g.matches("STRIPE_") && !g.matches("XSTRIPE_SK"));
        assert!(Glob::new("*").matches("ANY"));
        assert!(Glob::new("A?C").matches("ABC") && !Glob::new("A?C").matches("AC"));
        assert!(Glob::new("*_KEY").matches("AWS_KEY") && !Glob::new("*_KEY").matches("AWS_KEYS"));
        assert!(Glob::new("A*B*C").matches("AXXBYYC") && !Glob::new("A*B*C").matches("AXXBYY"));
    }

    #[test]
    fn default_deny_root_and_group_allowed() {
        let p = Policy::new(Some(900), vec![]);
        assert!(p.allows(&caller(0, 0), "X"));
        assert!(p.allows(&caller(1000, 900), "X"));
        let mut c = caller(1000, 1000);
        assert!(!p.allows(&c, "X"));
        c.groups = vec![900];
        assert!(p.allows(&c, "X"));
        assert!(!Policy::default().allows(&caller(65534, 65534), "X"));
    }

    #[test]
    fn rules_and_across_kinds_or_within() {
        let rule = Rule {
            secrets: vec![Glob::new("STRIPE_*")],
            users: vec![1000, 1001],
            executables: vec![PathBuf::from("/usr/bin/node")],
            ..Rule::default()
        };
        let p = Policy::new(None, vec![rule]);
        let mut c = caller(1001, 1001);
        assert!(!p.allows(&c, "STRIPE_SK"), "exe missing");
        c.exe = Some(PathBuf::from("/usr/bin/node"));
        assert!(p.allows(&c, "STRIPE_SK"));
        assert!(!p.allows(&c, "AWS_KEY"), "secret not granted");
        c.uid = 1002;
        assert!(!p.allows(&c, "STRIPE_SK"), "user not listed");
        let unit_rule = Rule {
            secrets: vec![Glob::new("*")],
            units: vec!["app.service".into()],
            ..Rule::default()
        };
        let p = Policy::new(None, vec![unit_rule, Rule::default()]);
        let mut c = caller(5, 5);
        assert!(!p.allows(&c, "A"));
        c.unit = Some("app.service".into());
        assert!(p.allows(&c, "A"));
        assert!(p.allows_unit("app.service", "A"));
        assert!(!p.allows_unit("other.service", "A"));
    }

    #[test]
    fn units_get_only_unit_only_rules() {
        let narrowed = Rule {
            secrets: vec![Glob::new("DB_*")],
            units: vec!["app.service".into()],
            users: vec![1000],
            ..Rule::default()
        };
        let plain = Rule {
            secrets: vec![Glob::new("STRIPE_*")],
            units: vec!["app.service".into()],
            ..Rule::default()
        };
        let p = Policy::new(Some(0), vec![narrowed, plain]);
        assert!(p.allows_unit("app.service", "STRIPE_SK"));
        assert!(
            !p.allows_unit("app.service", "DB_URL"),
            "rule also needs a user"
        );
        assert!(
            !p.allows_unit("app.service", "OTHER"),
            "no root or group grant"
        );
    }

    #[test]
    fn proc_parsing() {
        assert_eq!(
            parse_groups("Name:\tx\nGroups:\t4 24 27 \nNSpid:\t1\n"),
            vec![4, 24, 27]
        );
        assert_eq!(
            parse_unit("0::/system.slice/nginx.service\n").as_deref(),
            Some("nginx.service")
        );
        assert_eq!(
            parse_unit("0::/user.slice/user-1000.slice/session-2.scope\n").as_deref(),
            Some("session-2.scope")
        );
        assert_eq!(
            parse_unit("0::/system.slice/app.service/worker\n").as_deref(),
            Some("app.service")
        );
        assert_eq!(parse_unit("0::/\n"), None);
        let me = Caller::from_proc(0, 0, std::process::id());
        assert!(me.exe.is_some());
    }
}
