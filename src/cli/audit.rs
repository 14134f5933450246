//! `fyvault audit`: the audit trail as a readable table (or `--json`). Admin token from
//! `--token-file` or `FYVAULT_ADMIN_TOKEN`.

use std::process::ExitCode;

use clap::Args;

use crate::api::{AuditQuery, AuditRecord};
use crate::cli::admin::{VaultConn, connect, print_json, runtime};

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub conn: VaultConn,
    /// The org (`org_…`); without it, every org plus org-less records (admin tokens).
    #[arg(long, env = "FYVAULT_ORG")]
    pub org: Option<String>,
    /// Only records about this secret name.
    #[arg(long)]
    pub secret: Option<String>,
    /// Only records about this environment.
    #[arg(long)]
    pub environment: Option<String>,
    /// issued, rotated, revoked, accessed, denied, dropped, token_created, token_revoked, …
    #[arg(long)]
    pub action: Option<String>,
    /// RFC 3339 time, e.g. 2025-01-31T00:00:00Z: only records at or after it.
    #[arg(long)]
    pub since: Option<String>,
    /// RFC 3339 time: only records before it.
    #[arg(long)]
    pub until: Option<String>,
    /// At most this many records (default 1000).
    #[arg(long)]
    pub limit: Option<u32>,
}

const HEADERS: [&str; 13] = [
    "TIME",
    "ACTION",
    "SECRET",
    "VERSION",
    "ENV",
    "ACTOR",
    "SOURCE IP",
    "HOST",
    "PID",
    "UID",
    "EXE",
    "UNIT",
    "COUNT",
];

/// `time` in one fixed width, UTC with milliseconds (`2025-01-31T08:00:00.440Z`), so the
/// column lines up; a time that does not parse is shown as it came.
fn fixed_time(time: &str) -> String {
    use time::format_description::well_known::Rfc3339;
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::parse(time, &Rfc3339)
        .ok()
        .and_then(|t| t.to_offset(time::UtcOffset::UTC).format(&fmt).ok())
        .unwrap_or_else(|| time.to_owned())
}

fn cells(r: &AuditRecord) -> [String; 13] {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let num = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
    let via = r
        .via
        .map(|v| format!(" ({})", v.as_str()))
        .unwrap_or_default();
    let why = r
        .reason
        .as_deref()
        .map(|w| format!(" ({w})"))
        .unwrap_or_default();
    [
        fixed_time(&r.time),
        format!("{}{via}{why}", r.action),
        opt(&r.secret),
        num(r.version),
        opt(&r.environment),
        r.actor.clone(),
        opt(&r.source_ip),
        opt(&r.host),
        num(r.pid.map(u64::from)),
        num(r.uid.map(u64::from)),
        opt(&r.exe),
        opt(&r.unit),
        num(r.count),
    ]
}

/// Renders records as an aligned table.
pub fn table(records: &[AuditRecord]) -> String {
    let rows: Vec<[String; 13]> = records.iter().map(cells).collect();
    let mut widths = HEADERS.map(str::len);
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cols: &[String]| {
        cols.iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(&HEADERS.map(String::from));
    out.push('\n');
    for row in &rows {
        out.push_str(&line(row));
        out.push('\n');
    }
    out
}

pub fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&args.conn, "FYVAULT_ADMIN_TOKEN")?;
    let query = AuditQuery {
        secret: args.secret,
        environment: args.environment,
        action: args.action,
        since: args.since,
        until: args.until,
        limit: args.limit,
    };
    let resp = runtime()?.block_on(async {
        match &args.org {
            Some(org) => client.audit(org, &query).await,
            None => client.audit_all(&query).await,
        }
    })?;
    if args.conn.json {
        print_json(&resp)?;
    } else if resp.records.is_empty() {
        println!("no audit records match");
    } else {
        print!("{}", table(&resp.records));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AccessVia;

    #[test]
    fn times_have_one_width() {
        assert_eq!(
            fixed_time("2025-01-31T08:00:00.44Z"),
            "2025-01-31T08:00:00.440Z"
        );
        assert_eq!(
            fixed_time("2025-01-31T08:00:00.262Z"),
            "2025-01-31T08:00:00.262Z"
        );
        assert_eq!(
            fixed_time("2025-01-31T08:00:00Z"),
            "2025-01-31T08:00:00.000Z"
        );
        assert_eq!(
            fixed_time("2025-01-31T09:00:00.123456+01:00"),
            "2025-01-31T08:00:00.123Z"
        );
        assert_eq!(fixed_time("not a time"), "not a time");
    }

    #[test]
    fn table_aligns_and_shows_dashes() {
        let r = AuditRecord {
            id: 1,
            time: "2025-01-01T00:00:00Z".into(),
            org_id: "org_a".into(),
            environment: Some("production".into()),
            secret: Some("STRIPE_SK".into()),
            version: Some(2),
            action: "accessed".into(),
            actor: "agent:tok_x".into(),
            source_ip: Some("10.0.0.1".into()),
            host: Some("web-1".into()),
            via: Some(AccessVia::Fuse),
            pid: Some(42),
            uid: Some(1000),
            gid: None,
            exe: Some("/usr/bin/python3".into()),
            unit: None,
            count: Some(7),
            reason: None,
            user_id: None,
        };
        let t = table(&[r]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("TIME"));
        assert!(lines[1].contains("accessed (fuse)"));
        assert!(lines[1].contains("/usr/bin/python3"));
        assert!(lines[1].contains(" - "));
        assert_eq!(lines[0].find("ACTION"), lines[1].find("accessed"));
    }
}
