//! Every command and every option of the CLI has help text (`--help` and the manual pages are
//! generated from it), checked by walking the whole clap command tree.

use clap::CommandFactory;

fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
    if cmd.get_about().is_none() && path != "fyvault" {
        missing.push(format!("{path}: no about"));
    }
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if matches!(id, "help" | "version") {
            continue;
        }
        let blank = arg
            .get_help()
            .is_none_or(|h| h.to_string().trim().is_empty());
        if blank {
            missing.push(format!("{path} --{id}: no help"));
        }
    }
    for sub in cmd.get_subcommands() {
        walk(sub, &format!("{path} {}", sub.get_name()), missing);
    }
}

#[test]
fn every_command_and_option_has_help_text() {
    let mut cmd = fyvault::cli::Cli::command();
    cmd.build();
    let mut missing = Vec::new();
    walk(&cmd, "fyvault", &mut missing);
    assert!(
        missing.is_empty(),
        "help text missing:\n{}",
        missing.join("\n")
    );
    // The walk reached the leaves.
    let leaves = ["server init", "admin token agent", "audit"];
    for leaf in leaves {
        let mut c = &cmd;
        for part in leaf.split(' ') {
            c = c.find_subcommand(part).unwrap();
        }
        assert!(c.get_arguments().count() > 1, "{leaf}");
    }
}
