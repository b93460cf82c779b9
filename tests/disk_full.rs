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

/// The disk holding the index fills while a stage runs (another process takes the space). Where
/// sled can no longer write depends on its preallocated log: the commit's record may still fit
/// (then only the history after it fails, a warning) or not (then the commit fails, naming the
/// stored output and its manifest copy). Either way the run fails on the next stage with a
/// full-disk error naming the index, and once there is room the next run reuses the output without
/// running the stage again, and `verify` is clean. sled leaves an unfinished snapshot behind when
/// a write fails, which the next open must not take for a corrupt index (it did: "Read corrupted
/// data", until `verify --rebuild-index`).
#[test]
fn a_full_index_disk_during_a_run_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let index = cache.join("index");
    std::fs::create_dir_all(&index).unwrap();
    let Some(mount) = mount_tmpfs(&index, "1m") else {
        eprintln!("skipped: mounting a tmpfs for the index needs root (CI runs as root)");
        return;
    };
    let filler = index.join("filler");
    std::fs::write(
        dir.path().join("r.toml"),
        format!(
            "[stages.first]\nkind = \"command\"\nargv = [\"/bin/sh\", \"-c\", \"echo first > {{out}}/first.txt\"]\n\n\
             [stages.fills]\nkind = \"command\"\n\
             argv = [\"/bin/sh\", \"-c\", \"echo fills > {{out}}/fills.txt; head -c 4000000 /dev/zero > {} 2>/dev/null; true\"]\n\
             inputs = {{ first = {{ stage = \"first\" }} }}\n\n\
             [stages.after]\nkind = \"command\"\nargv = [\"/bin/sh\", \"-c\", \"echo after > {{out}}/after.txt\"]\n\
             inputs = {{ fills = {{ stage = \"fills\" }} }}\n",
            filler.display()
        ),
    )
    .unwrap();
    let output = sheared(dir.path(), &cache, &["run", "r.toml", "--only", "first"]);
    assert!(output.status.success(), "{}", text(&output));

    let output = sheared(dir.path(), &cache, &["run", "r.toml", "--json"]);
    assert!(!output.status.success(), "{}", text(&output));
    let all = text(&output);
    let full = format!("no space left on the device holding {}", index.display());
    assert!(all.contains(&full), "{full:?} not in {all}");
    let events = json_events(&output);
    if let Some(failed) = stage_event(&events, "failed", "fills") {
        let reason = failed["reason"].as_str().unwrap();
        for part in ["output is stored", "manifests/", "without recomputing"] {
            assert!(reason.contains(part), "{part:?} not in {reason}");
        }
    }
    assert!(
        stage_event(&events, "committed", "after").is_none(),
        "after committed on a full index disk: {all}"
    );

    std::fs::remove_file(&filler).unwrap();
    let output = sheared(dir.path(), &cache, &["run", "r.toml", "--json"]);
    assert!(output.status.success(), "{}", text(&output));
    let events = json_events(&output);
    assert!(
        stage_event(&events, "cached", "fills").is_some()
            && stage_event(&events, "started", "fills").is_none(),
        "the stored output of fills is reused: {}",
        text(&output)
    );
    assert!(stage_event(&events, "committed", "after").is_some());
    let verify = sheared(dir.path(), &cache, &["verify"]);
    assert!(verify.status.success(), "{}", text(&verify));
    drop(mount);
}

fn json_events(output: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

fn stage_event<'a>(
    events: &'a [serde_json::Value],
    event: &str,
    stage: &str,
) -> Option<&'a serde_json::Value> {
    events
        .iter()
        .find(|value| value["event"] == event && value["stage"] == stage)
}
