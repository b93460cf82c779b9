//! What a run tells the person (lines or live bars) or the machine (`--json` NDJSON).

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// One thing that happened to a stage.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// `started`, `waiting`, `cached`, `committed`, `failed`, `skipped`, `cancelled`.
    pub event: &'static str,
    pub stage: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The stage's log file (failed stages).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// The last lines of the log (failed stages).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<String>,
}

impl Event {
    pub fn new(event: &'static str, stage: &str) -> Event {
        Event {
            event,
            stage: stage.to_string(),
            key: None,
            seconds: None,
            reason: None,
            log: None,
            log_tail: None,
        }
    }
}

/// Prints events and draws progress. `Json` writes one JSON object per line on stdout.
pub enum Output {
    Json(Mutex<std::io::Stdout>),
    Lines,
    Bars(MultiProgress),
}

impl Output {
    /// Bars on a terminal, lines otherwise, NDJSON with `--json`.
    pub fn choose(json: bool) -> Output {
        if json {
            Output::Json(Mutex::new(std::io::stdout()))
        } else if std::io::stderr().is_terminal() {
            let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            super::logging::draw_logs_above(&bars);
            Output::Bars(bars)
        } else {
            Output::Lines
        }
    }

    pub fn emit(&self, event: &Event) {
        match self {
            Output::Json(stdout) => {
                if let (Ok(mut out), Ok(line)) = (stdout.lock(), serde_json::to_string(event)) {
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
            }
            Output::Lines => eprintln!("{}", human(event)),
            Output::Bars(multi) => {
                let _ = multi.println(human(event));
            }
        }
    }

    /// A live bar for a running stage (terminal only).
    pub fn bar(&self, stage: &str) -> Option<ProgressBar> {
        let Output::Bars(multi) = self else {
            return None;
        };
        let bar = multi.add(ProgressBar::new_spinner());
        // No bar until the stage reports progress (see `StageReporter::progress`).
        let style = ProgressStyle::with_template("{spinner} {prefix:<24} {elapsed:>6} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.set_prefix(stage.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        Some(bar)
    }

    pub fn is_json(&self) -> bool {
        matches!(self, Output::Json(_))
    }

    /// Free text for people (not in JSON mode).
    pub fn note(&self, text: &str) {
        match self {
            Output::Json(_) => {}
            Output::Lines => eprintln!("{text}"),
            Output::Bars(multi) => {
                let _ = multi.println(text);
            }
        }
    }
}

fn human(event: &Event) -> String {
    let key = event
        .key
        .as_deref()
        .map(|key| format!(" [{}]", &key[..key.len().min(12)]))
        .unwrap_or_default();
    let seconds = event
        .seconds
        .map(|seconds| format!(" in {}", format_seconds(seconds)))
        .unwrap_or_default();
    let reason = event
        .reason
        .as_deref()
        .map(|reason| format!(": {reason}"))
        .unwrap_or_default();
    let mut line = format!("{:<10} {}{key}{seconds}{reason}", event.event, event.stage);
    if let Some(tail) = &event.log_tail
        && !tail.trim().is_empty()
    {
        line.push_str(&format!(
            "\n--- last lines of {} ---\n{}",
            event.log.as_deref().unwrap_or("the log"),
            tail.trim_end()
        ));
    }
    line
}

pub fn format_seconds(seconds: f64) -> String {
    if seconds < 60.0 {
        format!("{seconds:.2} s")
    } else {
        humantime::format_duration(Duration::from_secs(seconds.round() as u64)).to_string()
    }
}
