//! The kill loop: the whole method (`recipes/tiny.toml`, shrunk to a few steps per stage) run again
//! and again while SIGKILL stops `sheared run` at seeded random moments, spread over every stage
//! (tokenizing, training, pruning, consolidating, evaluating, committing, checkpointing). After the
//! kills a last run must finish; then every committed output must equal an uninterrupted run's
//! (byte for byte, except the wall-clock fields of metrics files), `sheared verify` must find
//! nothing wrong, and the recomputation each kill cost is reported.
//!
//! CI runs 6 kills (about a minute). The long soak: `SOAK_KILLS=50 SOAK_REPORT=soak.json cargo test
//! --test soak -- --nocapture` (docs/reliability.md has its figures); `SOAK_SEED` picks other kill
//! moments.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use common::{PIPELINE_STAGES, SHEARED};

const STAGES: &[&str] = &PIPELINE_STAGES;

/// `recipes/tiny.toml` at a few steps per stage, checkpointing often (so kills land mid-checkpoint
/// as well as between them).
const SETS: &[&str] = &[
    "stages.source.steps=12",
    "stages.source.checkpoint_every=3",
    "stages.source.eval_every=6",
    "stages.prune.steps=8",
    "stages.prune.checkpoint_every=2",
    "stages.prune.eval_every=4",
    "stages.train.steps=12",
    "stages.train.checkpoint_every=3",
    "stages.train.eval_every=6",
    "stages.eval.sequences_per_domain=4",
    "stages.eval-source.sequences_per_domain=4",
];

fn recipe() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/tiny.toml")
}

fn command(cache: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(SHEARED);
    command
        .args(args)
        .arg(recipe())
        .env("SHEARED_CACHE", cache)
        .env_remove("RUST_LOG")
        .env_remove("SHEARED_DEVICE");
    for set in SETS {
        command.args(["--set", set]);
    }
    command
}

/// `sheared run` to completion; its wall time.
fn run_whole(cache: &Path) -> f64 {
    let started = Instant::now();
    let output = command(cache, &["run"]).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    started.elapsed().as_secs_f64()
}

/// Every file under `dir` (relative path → contents), metrics files without their wall-clock fields.
fn contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path.strip_prefix(dir).unwrap().display().to_string();
            let bytes = std::fs::read(&path).unwrap();
            let bytes = if name.starts_with("metrics.json") {
                without_clock(&bytes)
            } else {
                bytes
            };
            files.push((name, bytes));
        }
    }
    files.sort();
    files
}

/// A metrics file (JSON or JSON lines) without the fields that measure time or say the run was
/// resumed: what must be identical is everything the run computed.
fn without_clock(bytes: &[u8]) -> Vec<u8> {
    fn strip(value: &mut Value) {
        match value {
            Value::Object(map) => {
                map.retain(|key, _| {
                    !(key == "seconds"
                        || key == "timing"
                        || key == "tokens_per_s"
                        || key == "outside_model_fraction"
                        || key.starts_with("resumed_from")
                        || key.ends_with("_s")
                        || key.ends_with("_seconds"))
                });
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let text = String::from_utf8_lossy(bytes);
    if let Ok(mut whole) = serde_json::from_str::<Value>(&text) {
        strip(&mut whole);
        return whole.to_string().into_bytes();
    }
    text.lines()
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(mut value) => {
                strip(&mut value);
                value.to_string()
            }
            Err(_) => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        .into_bytes()
}

fn committed_path(cache: &Path, stage: &str) -> PathBuf {
    let output = command(cache, &["path"]).arg(stage).output().unwrap();
    assert!(
        output.status.success(),
        "{stage}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// One `sheared run` on `cache`, SIGKILLed after `delay` unless it finishes first: (finished,
/// the stage the kill interrupted, seconds).
fn attempt(cache: &Path, delay: Option<Duration>) -> (bool, Option<String>, f64) {
    let started = Instant::now();
    // Output to files, not pipes: nobody drains a pipe while the run goes, and a full one would
    // block it.
    let stdout_path = cache.with_extension("stdout");
    let stderr_path = cache.with_extension("stderr");
    let mut child = command(cache, &["run", "--json"])
        .stdout(Stdio::from(std::fs::File::create(&stdout_path).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&stderr_path).unwrap()))
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if delay.is_some_and(|delay| started.elapsed() >= delay) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if status.is_none() {
        child.kill().unwrap(); // SIGKILL
    }
    child.wait().unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    if let Some(status) = status {
        assert!(
            status.success(),
            "a run that was not killed failed ({status}):\n{stdout}\n{}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
        return (true, None, seconds);
    }
    // The stage the kill interrupted: the last one that started and has not committed.
    let mut running = "(between stages)".to_string();
    for line in stdout.lines() {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let stage = event["stage"].as_str().unwrap_or_default().to_string();
        match event["event"].as_str() {
            Some("started") => running = stage,
            Some("committed") if stage == running => running = "(between stages)".into(),
            _ => {}
        }
    }
    (false, Some(running), seconds)
}

/// Every stage's committed output in `cache` equals the reference's (see [`contents`]).
fn check_identical(reference: &Path, cache: &Path, killed_in: &[String]) {
    for stage in STAGES {
        let (expected, got) = (
            contents(&committed_path(reference, stage)),
            contents(&committed_path(cache, stage)),
        );
        let names = |files: &[(String, Vec<u8>)]| -> Vec<String> {
            files.iter().map(|(name, _)| name.clone()).collect()
        };
        assert_eq!(names(&got), names(&expected), "{stage}: other files");
        for ((name, a), (_, b)) in expected.iter().zip(&got) {
            if a != b {
                let show = |bytes: &[u8]| -> String {
                    if name.starts_with("metrics") {
                        String::from_utf8_lossy(bytes).chars().take(4000).collect()
                    } else {
                        format!("{} bytes", bytes.len())
                    }
                };
                panic!(
                    "{stage}/{name} differs after the kills {killed_in:?}:\nuninterrupted: {}\nkilled:        {}",
                    show(a),
                    show(b)
                );
            }
        }
    }
}

#[test]
fn killed_runs_lose_nothing_and_end_byte_identical() {
    let kills: usize = std::env::var("SOAK_KILLS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(6);
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference");

    let whole_s = run_whole(&reference);

    // Rounds on fresh caches: in each, `sheared run` is started again and again, each attempt killed
    // after a delay uniform over an uninterrupted run's length, until one attempt finishes first.
    // Each attempt resumes what the last left, so the kills walk through the pipeline.
    let seed = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(7);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut total_s, mut rounds, mut killed_in) = (0.0, 0, Vec::new());
    while killed_in.len() < kills {
        rounds += 1;
        let cache = dir.path().join(format!("killed-{rounds}"));
        let mut round_s = 0.0;
        loop {
            let last = killed_in.len() >= kills;
            let delay = if last {
                None // the round's last attempt runs to the end
            } else {
                Some(Duration::from_secs_f64(
                    rng.random_range(0.05..whole_s.max(0.2)),
                ))
            };
            let (finished, interrupted, seconds) = attempt(&cache, delay);
            round_s += seconds;
            if let Some(stage) = interrupted {
                killed_in.push(stage);
            }
            if finished {
                break;
            }
        }
        total_s += round_s - whole_s;
        check_identical(&reference, &cache, &killed_in);
        let verify = Command::new(SHEARED)
            .args(["verify"])
            .env("SHEARED_CACHE", &cache)
            .output()
            .unwrap();
        assert!(
            verify.status.success(),
            "verify after the kills {killed_in:?}: {}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
    }
    let lost_per_kill_s = total_s.max(0.0) / kills.max(1) as f64;
    let report = serde_json::json!({
        "seed": seed,
        "kills": kills,
        "rounds": rounds,
        "killed_in": killed_in,
        "uninterrupted_s": whole_s,
        "seconds_lost_per_kill": lost_per_kill_s,
        "stages_identical_each_round": STAGES.len(),
        "verify": "clean after every round",
    });
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    if let Ok(path) = std::env::var("SOAK_REPORT") {
        std::fs::write(path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    }
}
