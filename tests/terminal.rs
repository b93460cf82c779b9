//! What a person sees in a terminal: `sheared run` in a real pseudo-terminal (a tmux pane, 160 × 24)
//! draws one live line per running stage, with its bar, position, rate and ETA, and prints each event
//! once; the pane is captured while a train stage runs and after the run ends.
//!
//! Without tmux the test says so on stderr and checks nothing else.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{CORPUS_TOKENS_STAGE, SHEARED, write_corpus};

/// The recipe: [`CORPUS_TOKENS_STAGE`] and what this test adds.
fn recipe() -> String {
    format!("{HEAD}{CORPUS_TOKENS_STAGE}{TAIL}")
}

const HEAD: &str = r#"
name = "terminal"

"#;

const TAIL: &str = r#"
[stages.train]
kind = "train"
init = { config = { hidden_size = 32, intermediate_size = 64, num_hidden_layers = 2, num_attention_heads = 4, num_key_value_heads = 4, max_position_embeddings = 32 } }
data = { stage = "tokens" }
steps = 600
batch_size = 4
seq_len = 16
warmup_steps = 0
eval_every = 0
eval_batches = 0
checkpoint_every = 600
"#;

fn tmux(args: &[&str]) -> Option<String> {
    let output = Command::new("tmux").args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).to_string())
}

/// Kills the tmux session however the test ends.
struct Session(String);

impl Drop for Session {
    fn drop(&mut self) {
        let _ = tmux(&["kill-session", "-t", &self.0]);
    }
}

fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}

#[test]
fn a_terminal_shows_a_live_bar_per_running_stage() {
    if tmux(&["-V"]).is_none() {
        eprintln!("skipped: tmux is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_corpus(dir.path());
    std::fs::write(dir.path().join("r.toml"), recipe()).unwrap();
    let name = format!("sheared-test-{}", std::process::id());
    // The pane's shell gets its environment from the tmux server, which may predate this test:
    // pass on what the binary needs (the libtorch half sets a device and a library path).
    let exports: String = [
        "SHEARED_DEVICE",
        "LD_LIBRARY_PATH",
        "LIBTORCH",
        "LIBTORCH_USE_PYTORCH",
    ]
    .iter()
    .filter_map(|name| {
        let value = std::env::var(name).ok()?;
        Some(format!(
            "export {name}={}; ",
            shell_quote(Path::new(&value))
        ))
    })
    .collect();
    let command = format!(
        "{exports}cd {} && SHEARED_CACHE=cache {} run r.toml; echo RUN-ENDED; sleep 60",
        shell_quote(dir.path()),
        shell_quote(Path::new(SHEARED))
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &name,
        "-x",
        "160",
        "-y",
        "24",
        &command,
    ])
    .expect("tmux new-session");
    let _session = Session(name.clone());

    let deadline = Instant::now() + Duration::from_secs(180);
    let mut live_bar = None;
    let screen = loop {
        let screen = tmux(&["capture-pane", "-p", "-t", &name]).unwrap_or_default();
        if live_bar.is_none()
            && let Some(line) = screen.lines().find(|line| {
                line.contains("train") && line.contains("/600") && line.contains("eta")
            })
        {
            live_bar = Some(line.to_string());
        }
        if screen.contains("RUN-ENDED") {
            break screen;
        }
        assert!(Instant::now() < deadline, "the run did not end:\n{screen}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let bar =
        live_bar.unwrap_or_else(|| panic!("no live bar for `train` was drawn; the end:\n{screen}"));
    // The whole scrollback, not just the visible pane.
    let screen = tmux(&["capture-pane", "-p", "-S", "-", "-t", &name]).unwrap_or(screen);
    assert!(
        bar.contains("/s") && !bar.contains(".00000"),
        "the bar shows a readable rate: {bar}"
    );
    assert!(bar.chars().count() <= 160, "the bar fits the pane: {bar}");
    // Each event once, and no bar left behind.
    for event in ["committed  tokens", "committed  train"] {
        assert_eq!(screen.matches(event).count(), 1, "{event}:\n{screen}");
    }
    assert!(
        !screen.contains("/600"),
        "a finished stage's bar is cleared:\n{screen}"
    );
}
