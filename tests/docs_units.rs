//! Every unit file example in docs/delivery.md passes `systemd-analyze verify` (the examples'
//! program paths, `/usr/bin/fyvault` and `/srv/app/bin/server`, are swapped for programs that
//! exist here; everything else is checked as written). The agent's own unit
//! (`systemd/fyvault-agent.service`) is put on the unit path, as the examples require it.

#[allow(clippy::duplicate_mod)]
#[path = "skip/mod.rs"]
mod skip;

use std::path::Path;
use std::process::Command;

/// The ```ini blocks whose first line is `# /etc/systemd/system/NAME`: (NAME, text).
fn unit_examples(doc: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(l) = lines.next() {
        if l.trim() != "```ini" {
            continue;
        }
        let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        if let Some(name) = block
            .first()
            .and_then(|f| f.strip_prefix("# /etc/systemd/system/"))
        {
            out.push((name.trim().to_owned(), block.join("\n") + "\n"));
        }
    }
    out
}

#[test]
fn delivery_unit_examples_verify() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/delivery.md")).unwrap();
    let units = unit_examples(&doc);
    assert!(units.len() >= 4, "the unit examples were not found");
    if !Path::new("/usr/bin/systemd-analyze").exists() {
        skip::skip(
            "delivery_unit_examples_verify",
            "systemd-analyze is not installed",
        );
        return;
    }
    // The examples require the agent's unit: the project's own, beside them.
    let dir = tempfile::tempdir().unwrap();
    let agent_unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/fyvault-agent.service"
    ))
    .unwrap()
    .replace("/usr/bin/fyvault", env!("CARGO_BIN_EXE_fyvault"));
    std::fs::write(dir.path().join("fyvault-agent.service"), agent_unit).unwrap();
    let mut paths = Vec::new();
    for (name, text) in &units {
        let text = text
            .replace("/usr/bin/fyvault", env!("CARGO_BIN_EXE_fyvault"))
            .replace("/srv/app/bin/server", "/bin/true");
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        paths.push(p);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.path().display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{err}"
    );
    // verify exits 0 for some warnings: none of ours may have any.
    for (name, _) in &units {
        assert!(!err.contains(name.as_str()), "{name}: {err}");
    }
}
