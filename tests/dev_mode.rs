//! `fyvault dev`, complete: the vault and the agent in one process. Pushes with the printed
//! curl commands, reads through the mount and the socket, Ctrl-C unmounts and exits 0, a
//! re-run keeps everything; `--no-agent` writes a config a separate `fyvault agent` runs with;
//! without FUSE (not root) it serves the socket only and says why.

mod common_fuse;
mod dev_support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common_fuse::{fuse_available, is_mounted};
use dev_support::{Dev, eventually, fyvault};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

fn sh(cmd: &str) -> Value {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn cli(args: &[&str], socket: &Path) -> Output {
    Command::new(fyvault())
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .unwrap()
}

fn get(name: &str, socket: &Path) -> Option<Vec<u8>> {
    let out = cli(&["get", name], socket);
    out.status.success().then_some(out.stdout)
}

/// A temp dir every uid may traverse.
fn open_tempdir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

#[test]
fn dev_serves_through_mount_and_socket_and_ctrl_c_unmounts() {
    let fuse = fuse_available("dev_serves_through_mount_and_socket_and_ctrl_c_unmounts");
    let dir = open_tempdir();
    let data = dir.path().join("data");
    let mount = dir.path().join("mnt");
    let socket = dir.path().join("agent.sock");
    let dev = Dev::start(&data, &mount, &socket, &["--grace", "120"]);

    let f = dev.facts();
    for key in [
        "url",
        "org_id",
        "environment",
        "provider_id",
        "provider_token",
        "admin_token",
        "agent_token",
        "agent_config",
        "mount",
        "socket",
    ] {
        assert!(
            f[key].as_str().is_some_and(|v| !v.is_empty()),
            "dev.json lacks {key}: {f}"
        );
    }
    assert_eq!(f["environment"], "production");
    assert_eq!(f["mount"], mount.to_str().unwrap());
    assert_eq!(f["socket"], socket.to_str().unwrap());
    assert!(f["agent_token"].as_str().unwrap().starts_with("fvagent_"));
    assert_eq!(f["mount_active"], fuse, "{f}");
    let provider_token = std::fs::read_to_string(data.join("provider.token")).unwrap();
    assert_eq!(provider_token.trim(), f["provider_token"].as_str().unwrap());
    for file in [
        "dev.json",
        "agent.toml",
        "agent.token",
        "admin.token",
        "provider.token",
    ] {
        let mode = std::fs::metadata(data.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{file} is readable by others");
    }
    let printed = dev.stdout().join("\n");
    let sock = socket.to_str().unwrap();
    assert!(
        printed.contains(&format!("fyvault get STRIPE_SK --socket {sock}")),
        "{printed}"
    );
    assert!(printed.contains("fyvault audit --url"), "{printed}");
    if fuse {
        assert!(
            printed.contains(&format!("cat {}/STRIPE_SK", mount.display())),
            "{printed}"
        );
        assert!(
            is_mounted(&mount),
            "the dev agent mounted {}",
            mount.display()
        );
    }

    // The two demo secrets are there.
    assert_eq!(
        get("DEMO_GREETING", &socket).unwrap(),
        b"hello from fyvault"
    );
    assert!(get("DEMO_DATABASE_URL", &socket).is_some());

    // Push and rotate with the printed commands; read through the socket and the mount.
    let cmds = dev.curl_commands();
    assert_eq!(cmds.len(), 3, "{printed}");
    let pushed = sh(&cmds[0]);
    assert_eq!(pushed["version"], 1);
    eventually("the pushed value on the socket", || {
        (get("STRIPE_SK", &socket)? == b"sk_test_first").then_some(())
    });
    if fuse {
        assert_eq!(
            std::fs::read(mount.join("STRIPE_SK")).unwrap(),
            b"sk_test_first"
        );
    }
    sh(&cmds[1]);
    eventually("the rotated value", || {
        (get("STRIPE_SK", &socket)? == b"sk_test_second").then_some(())
    });
    let prev = cli(&["get", "STRIPE_SK", "--previous"], &socket);
    assert_eq!(prev.stdout, b"sk_test_first");
    if fuse {
        assert_eq!(
            std::fs::read(mount.join("STRIPE_SK")).unwrap(),
            b"sk_test_second"
        );
        assert_eq!(
            std::fs::read(mount.join(".previous/STRIPE_SK")).unwrap(),
            b"sk_test_first"
        );
    }
    let status = cli(&["status"], &socket);
    let status_text = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status.status.success(), "{status_text}");
    assert!(status_text.contains("audit: "), "{status_text}");
    if fuse {
        assert!(
            status_text.contains(&format!("mount: {} (mounted", mount.display())),
            "{status_text}"
        );
    }

    // The printed `fyvault audit` command shows who read it.
    let audit_cmd = dev
        .stdout()
        .iter()
        .find_map(|l| l.trim().strip_prefix("fyvault audit ").map(str::to_owned))
        .expect("an audit command is printed");
    let table = eventually("the reads in the printed audit command's output", || {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("{} audit {audit_cmd}", fyvault()))
            .output()
            .unwrap();
        let t = String::from_utf8_lossy(&out.stdout).into_owned();
        let done = t.contains("accessed (socket)") && (!fuse || t.contains("accessed (fuse)"));
        done.then_some(t)
    });
    assert!(
        table.contains("STRIPE_SK") && table.contains("HOST"),
        "{table}"
    );

    assert!(dev.stop(Signal::SIGINT), "Ctrl-C exits 0");
    assert!(!is_mounted(&mount), "the mount is gone after Ctrl-C");
    assert!(!socket.exists(), "the socket file is removed");
    let after =
        serde_json::from_slice::<Value>(&std::fs::read(data.join("dev.json")).unwrap()).unwrap();
    assert!(
        after.get("pid").is_none(),
        "a stopped dev leaves no pid: {after}"
    );

    // Same data dir again: same org, tokens and secrets. SIGTERM stops it as cleanly.
    let dev = Dev::start(&data, &mount, &socket, &[]);
    let g = dev.facts();
    for key in [
        "org_id",
        "provider_id",
        "provider_token",
        "admin_token",
        "agent_token",
        "environment_key_file",
    ] {
        assert_eq!(f[key], g[key], "{key} changed across runs");
    }
    assert_eq!(get("STRIPE_SK", &socket).unwrap(), b"sk_test_second");
    if fuse {
        assert_eq!(
            std::fs::read(mount.join("STRIPE_SK")).unwrap(),
            b"sk_test_second"
        );
    }
    let again = sh(&dev.curl_commands()[0]);
    assert_eq!(again["version"], 3, "history survived the restart");
    assert!(dev.stop(Signal::SIGTERM), "SIGTERM exits 0");
    assert!(!is_mounted(&mount));
}

#[test]
fn dev_no_agent_writes_a_config_for_a_separate_agent() {
    let fuse = fuse_available("dev_no_agent_writes_a_config_for_a_separate_agent");
    let dir = open_tempdir();
    let data = dir.path().join("data");
    let mount = dir.path().join("mnt");
    let socket = dir.path().join("agent.sock");
    let dev = Dev::start(&data, &mount, &socket, &["--no-agent"]);
    assert!(!socket.exists(), "--no-agent starts no agent");
    assert!(!is_mounted(&mount));
    let f = dev.facts();
    let config = PathBuf::from(f["agent_config"].as_str().unwrap());
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.contains(&format!("socket = \"{}\"", socket.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!("mount = \"{}\"", mount.display())),
        "{text}"
    );
    assert!(
        dev.stdout()
            .join("\n")
            .contains(&format!("fyvault agent --config {}", config.display()))
    );

    let mut cmd = Command::new(fyvault());
    cmd.arg("agent").arg("--config").arg(&config);
    if !fuse {
        // Without FUSE here the separate agent runs without a mount.
        let no_fuse = format!("fuse = false\n{text}");
        std::fs::write(&config, no_fuse).unwrap();
    }
    let mut agent = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut Child, &'a Path);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            if matches!(self.0.try_wait(), Ok(None)) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
            if is_mounted(self.1) {
                let _ = nix::mount::umount2(self.1, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
    let guard = Kill(&mut agent, &mount);
    eventually("the separate agent to serve", || {
        get("DEMO_GREETING", &socket)
    });
    if fuse {
        // The socket answers from the agent's first second, before the mount is up (issue 17):
        // the mount is waited for on its own.
        assert_eq!(
            eventually("the separate agent's mount", || std::fs::read(
                mount.join("DEMO_GREETING")
            )
            .ok()),
            b"hello from fyvault"
        );
    }
    kill(Pid::from_raw(guard.0.id() as i32), Signal::SIGTERM).unwrap();
    let status = eventually("the agent to exit", || guard.0.try_wait().unwrap());
    assert!(status.success());
    assert!(!is_mounted(&mount));
    drop(guard);
    assert!(dev.stop(Signal::SIGINT));
}

/// As a user who cannot mount (uid 65534 here): without XDG_RUNTIME_DIR and paths, a clear
/// error; with paths, the socket only, and the walkthrough says why there is no mount.
#[test]
fn dev_as_non_root_runs_socket_only_and_says_why() {
    if !nix::unistd::geteuid().is_root() {
        common_fuse::skip::skip(
            "dev_as_non_root_runs_socket_only_and_says_why",
            "needs root for setpriv",
        );
        return;
    }
    let nobody = ["--reuid", "65534", "--regid", "65534", "--clear-groups"];
    let runs = Command::new("setpriv")
        .args(nobody)
        .args(["test", "-x", fyvault()])
        .status()
        .is_ok_and(|s| s.success());
    if !runs {
        common_fuse::skip::skip(
            "dev_as_non_root_runs_socket_only_and_says_why",
            "uid 65534 cannot run the binary here",
        );
        return;
    }
    let out = Command::new("setpriv")
        .args(nobody)
        .args([fyvault(), "dev", "--listen", "127.0.0.1:0"])
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("XDG_RUNTIME_DIR") && err.contains("--mount"),
        "{err}"
    );

    let dir = open_tempdir();
    let home = dir.path().join("nobody");
    std::fs::create_dir(&home).unwrap();
    nix::unistd::chown(&home, Some(65534.into()), Some(65534.into())).unwrap();
    let data = home.join("data");
    let mount = home.join("mnt");
    let socket = home.join("agent.sock");
    let mut cmd = Command::new("setpriv");
    cmd.args(nobody).arg(fyvault());
    let dev = Dev::start_with(cmd, &data, &mount, &socket, &[]);
    assert!(!is_mounted(&mount));
    let printed = dev.stdout().join("\n");
    assert!(printed.contains("mount:        none: "), "{printed}");
    assert!(printed.contains("socket only"), "{printed}");
    assert!(
        !printed.contains("cat "),
        "no cat command without a mount: {printed}"
    );
    assert_eq!(dev.facts()["mount_active"], false);
    // The user who runs dev mode reads its secrets (a rule grants them).
    let got = Command::new("setpriv")
        .args(nobody)
        .args([fyvault(), "get", "DEMO_GREETING", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert_eq!(
        got.stdout,
        b"hello from fyvault",
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    let status = cli(&["status"], &socket);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("unavailable: "), "{text}");
    // Signals from root to a process of uid 65534 are allowed.
    assert!(dev.stop(Signal::SIGINT));
}
