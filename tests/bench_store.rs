//! `sheared-bench store` end to end: a small file, the table on stdout, the JSON rows.

use assert_cmd::Command;

#[test]
fn bench_store_prints_a_table_and_writes_json() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let output = Command::cargo_bin("sheared-bench")
        .unwrap()
        .args(["store", "--bytes", "1048576", "--repeats", "1", "--dir"])
        .arg(dir.path())
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.contains("| sheared |") && table.contains("Stat cache"),
        "{table}"
    );
    let rows: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rows = rows.as_array().expect("a JSON array of rows");
    for row in rows {
        for key in [
            "area",
            "name",
            "metric",
            "value",
            "unit",
            "better",
            "peer",
            "ratio",
            "machine",
            "threads",
            "load_average",
        ] {
            assert!(row.get(key).is_some(), "row without {key}: {row}");
        }
        assert_eq!(row["area"], "store");
    }
    let rehashed = rows
        .iter()
        .find(|row| row["metric"] == "bytes rehashed")
        .expect("the stat-cache row");
    assert_eq!(rehashed["value"], 0.0);
    assert!(
        rows.iter().any(|row| row["name"]
            .as_str()
            .unwrap()
            .starts_with("hash a 0.00 GB file")),
        "{rows:?}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        leftovers,
        [std::ffi::OsString::from("report.json")],
        "the 1 MB test file is removed"
    );
}

#[test]
fn bench_store_rejects_zero_bytes() {
    let output = Command::cargo_bin("sheared-bench")
        .unwrap()
        .args(["store", "--bytes", "0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--bytes must be at least 1"));
}
