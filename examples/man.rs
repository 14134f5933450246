//! Writes the manual pages of `fyvault` and of every subcommand (`fyvault-server-init.1`, …),
//! generated from the clap definitions, into the directory given (the package's
//! `usr/share/man/man1`; `scripts/deb-check` runs this before `cargo deb`).
//!
//! Usage: `cargo run --example man -- target/man`

use clap::CommandFactory;

fn write(cmd: &clap::Command, name: &str, dir: &std::path::Path) -> std::io::Result<usize> {
    // The page's title and NAME section use the full name (`fyvault-admin-token`).
    let cmd = cmd
        .clone()
        .display_name(name.to_owned())
        .version(env!("CARGO_PKG_VERSION"));
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    std::fs::write(dir.join(format!("{name}.1")), page)?;
    let mut n = 1;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        n += write(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(n)
}

fn main() -> std::io::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "target/man".into());
    std::fs::create_dir_all(&dir)?;
    let mut cmd = fyvault::cli::Cli::command();
    cmd.build();
    let n = write(&cmd, "fyvault", &dir)?;
    println!("{n} manual pages in {}", dir.display());
    Ok(())
}
