//! `sheared-bench all` regenerates BENCHMARKS.md; the product binary `sheared` carries no benchmarks.

use assert_cmd::Command;

#[test]
fn all_builds_the_tables_from_the_rows_of_each_area() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("BENCHMARKS.md");
    Command::cargo_bin("sheared-bench")
        .unwrap()
        .args(["all", "--out"])
        .arg(&out)
        .args([
            "--only",
            "store",
            "--arg",
            "store=--bytes 100000 --repeats 1",
        ])
        .assert()
        .success();
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.starts_with("# Benchmarks\n"), "{text}");
    assert!(
        text.contains("- machine: ") && text.contains(" cores"),
        "{text}"
    );
    assert!(
        text.contains("| store | stat-cache hit, unchanged file | bytes rehashed ↓ | 0 B |"),
        "{text}"
    );
    assert!(
        text.contains(
            "- store: `sheared-bench store --bytes 100000 --repeats 1 --json store.json`"
        ),
        "{text}"
    );
    assert!(
        !text.contains("printed no rows") && !text.contains("failed"),
        "{text}"
    );
}

#[test]
fn all_rejects_an_unknown_area() {
    let assert = Command::cargo_bin("sheared-bench")
        .unwrap()
        .args(["all", "--only", "no-such-area"])
        .assert()
        .failure();
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    assert!(
        stderr.contains("no such area")
            && stderr.contains("model, prune, data, eval, runner, store, train"),
        "{stderr}"
    );
}

#[test]
fn benchmarks_reports_an_unwritable_destination() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("missing-folder").join("BENCHMARKS.md");
    let assert = Command::cargo_bin("sheared-bench")
        .unwrap()
        .args(["all", "--out"])
        .arg(&out)
        .args(["--only", "store", "--arg", "store=--bytes 1000 --repeats 1"])
        .assert()
        .failure();
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    assert!(
        stderr.contains("writing") && stderr.contains("missing-folder"),
        "{stderr}"
    );
}

#[test]
fn the_product_binary_has_no_benchmarks() {
    let output = Command::cargo_bin("sheared")
        .unwrap()
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|line| line.trim_end() != "Commands:")
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert!(commands.contains(&"run"), "{help}");
    assert!(
        !commands.contains(&"bench") && !commands.contains(&"benchmarks"),
        "{help}"
    );
    Command::cargo_bin("sheared")
        .unwrap()
        .args(["bench", "store"])
        .assert()
        .failure();
}
