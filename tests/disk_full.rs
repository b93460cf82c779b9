//! A cache on a full disk: the cache is a 3 MiB tmpfs mounted by the test (root only, as in CI). A
//! stage that writes more than fits fails with an error that says the disk is full and names the
//! cache; what committed before stays committed and nothing partial is committed; once the disk has
//! room (the tmpfs is remounted larger), running again finishes, and `verify` is clean.
//!
//! Without root (or without tmpfs), the test says so on stderr and checks nothing else.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SHEARED: &str = env!("CARGO_BIN_EXE_sheared");

/// Unmounts the tmpfs however the test ends.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn mount_tmpfs(at: &Path, size: &str) -> Option<Mount> {
    let root = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&root.stdout).trim() != "0" {
        return None;
    }
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(at)
        .status()
        .ok()?;
    status.success().then(|| Mount(at.to_path_buf()))
}

fn sheared(dir: &Path, cache: &Path, args: &[&str]) -> Output {
    Command::new(SHEARED)
        .args(args)
        .current_dir(dir)
        .env("SHEARED_CACHE", cache)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr)
}

#[test]
fn a_full_cache_disk_fails_clearly_and_the_next_run_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let Some(mount) = mount_tmpfs(&cache, "3m") else {
        eprintln!("skipped: mounting a tmpfs for the cache needs root (CI runs as root)");
        return;
    };
    std::fs::write(
        dir.path().join("r.toml"),
        "[stages.small]\nkind = \"command\"\nargv = [\"/bin/sh\", \"-c\", \"head -c 100000 /dev/zero > {out}/small.bin\"]\n\n\
         [stages.big]\nkind = \"command\"\nargv = [\"/bin/sh\", \"-c\", \"head -c 5000000 /dev/zero > {out}/big.bin\"]\n\
         inputs = { s = { stage = \"small\" } }\n",
    )
    .unwrap();

    let output = sheared(dir.path(), &cache, &["run", "r.toml", "--json"]);
    assert!(!output.status.success(), "{}", text(&output));
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let failed = events
        .iter()
        .find(|event| event["event"] == "failed" && event["stage"] == "big")
        .unwrap_or_else(|| panic!("big did not fail: {}", text(&output)));
    let reason = failed["reason"].as_str().unwrap();
    for part in [
        "the disk is full",
        cache.to_str().unwrap(),
        "free",
        "sheared gc",
        "--cache",
        "nothing of this attempt was committed",
    ] {
        assert!(reason.contains(part), "{part:?} not in {reason}");
    }
    assert!(
        events
            .iter()
            .any(|event| event["event"] == "committed" && event["stage"] == "small"),
        "{}",
        text(&output)
    );
    let plan = text(&sheared(dir.path(), &cache, &["plan", "r.toml"]));
    assert!(
        plan.contains("cached") && plan.contains("failed"),
        "small stays committed, big is recorded as failed: {plan}"
    );

    // Room again: the same run finishes, reusing `small`.
    let status = Command::new("mount")
        .args(["-o", "remount,size=32m"])
        .arg(&mount.0)
        .status()
        .unwrap();
    assert!(status.success());
    let output = sheared(dir.path(), &cache, &["run", "r.toml", "--json"]);
    assert!(output.status.success(), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("\"cached\"") && stdout.contains("\"committed\""),
        "{stdout}"
    );
    let verify = sheared(dir.path(), &cache, &["verify"]);
    assert!(verify.status.success(), "{}", text(&verify));
    drop(mount);
}
