//! Per-stage logs: everything a stage says (its `tracing` events, reporter messages, a command's
//! stdout/stderr) goes to `cache/logs/<key>/<attempt>.log`, and its last lines into failure messages.
//!
//! The runner opens a `stage` span with a `log` field per running stage; [`StageLogLayer`] sends
//! every event inside such a span to that file, so stage code only needs `tracing::info!`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use indicatif::ProgressBar;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::progress::Reporter;

/// An append-only log file shared by a stage's reporter and its tracing span.
#[derive(Clone)]
pub struct LogFile(Arc<Mutex<File>>);

impl LogFile {
    pub fn open(path: &Path) -> std::io::Result<LogFile> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        Ok(LogFile(Arc::new(Mutex::new(
            OpenOptions::new().create(true).append(true).open(path)?,
        ))))
    }

    pub fn line(&self, text: &str) {
        if let Ok(mut file) = self.0.lock() {
            let _ = writeln!(file, "{text}");
        }
    }
}

/// Routes events inside a `stage` span (with a `log = "<path>"` field) to that file.
pub struct StageLogLayer;

struct LogField(Option<String>);
impl Visit for LogField {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "log" {
            self.0 = Some(value.to_string());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "log" {
            self.0 = Some(format!("{value:?}").trim_matches('"').to_string());
        }
    }
}

struct Message(String);
impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.insert_str(0, &format!("{value:?}"));
        } else {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.insert_str(0, value);
        } else {
            self.0.push_str(&format!(" {}={value}", field.name()));
        }
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for StageLogLayer {
    fn on_new_span(&self, attributes: &Attributes<'_>, id: &Id, context: Context<'_, S>) {
        if attributes.metadata().name() != "stage" {
            return;
        }
        let mut field = LogField(None);
        attributes.record(&mut field);
        if let (Some(path), Some(span)) = (field.0, context.span(id))
            && let Ok(file) = LogFile::open(Path::new(&path))
        {
            span.extensions_mut().insert(file);
        }
    }

    fn on_event(&self, event: &Event<'_>, context: Context<'_, S>) {
        let Some(scope) = context.event_scope(event) else {
            return;
        };
        for span in scope {
            if let Some(file) = span.extensions().get::<LogFile>() {
                let mut message = Message(String::new());
                event.record(&mut message);
                let metadata = event.metadata();
                file.line(&format!(
                    "[{}] {} {}: {}",
                    crate::store::rfc3339(std::time::SystemTime::now()),
                    metadata.level(),
                    metadata.target(),
                    message.0
                ));
                return;
            }
        }
    }
}

/// The level filter of per-stage log files unless `SHEARED_STAGE_LOG` says otherwise.
///
/// Never unfiltered: dependencies log through `log` at trace level (the tokenizers crate writes
/// several lines per encoded text), and an unfiltered layer both fills the cache with gigabytes of
/// them and makes every such call format its message, slowing tokenization and evaluation.
pub const DEFAULT_STAGE_LOG_FILTER: &str = "info";

/// Install the global subscriber: warnings (or `RUST_LOG`) on stderr, and per-stage log files at
/// `info` (or `SHEARED_STAGE_LOG`, same syntax as `RUST_LOG`).
pub fn init() {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::prelude::*;
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(|| ConsoleLine(Vec::new()))
        .with_target(false)
        .with_filter(filter);
    let stage_filter = EnvFilter::try_from_env("SHEARED_STAGE_LOG")
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_STAGE_LOG_FILTER));
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(StageLogLayer.with_filter(stage_filter))
        .try_init();
}

/// The live bars on the terminal, once `sheared run` draws them ([`draw_logs_above`]).
static BARS: std::sync::OnceLock<indicatif::MultiProgress> = std::sync::OnceLock::new();

/// Route console log lines through `bars`, so that a warning printed while stages run appears above
/// the live bars instead of tearing them (and leaving stale bar frames in the scrollback).
pub fn draw_logs_above(bars: &indicatif::MultiProgress) {
    let _ = BARS.set(bars.clone());
}

/// One formatted console log line, written whole when dropped: through the bars when they are drawn,
/// straight to stderr otherwise.
struct ConsoleLine(Vec<u8>);

impl std::io::Write for ConsoleLine {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for ConsoleLine {
    fn drop(&mut self) {
        let text = std::mem::take(&mut self.0);
        let write = || {
            let _ = std::io::stderr().write_all(&text);
        };
        match BARS.get() {
            Some(bars) => bars.suspend(write),
            None => write(),
        }
    }
}

/// The [`Reporter`] a running stage gets: log lines, a live bar on a terminal, and occasional plain
/// progress lines otherwise.
pub struct StageReporter {
    pub log: LogFile,
    pub bar: Option<ProgressBar>,
    pub stage: String,
    pub plain_progress: bool,
    pub last_line: Mutex<Option<Instant>>,
    /// Where the stage's stepped metrics records go as TensorBoard scalars ([`super::tensorboard`]).
    pub tensorboard: Option<super::tensorboard::TensorBoardSink>,
}

impl Reporter for StageReporter {
    fn progress(&self, done: u64, total: u64, unit: &str) {
        if let Some(bar) = &self.bar {
            if bar.length().is_none_or(|length| length != total) {
                bar.set_style(progress_style());
            }
            bar.set_length(total);
            bar.set_position(done);
        } else if self.plain_progress
            && let Ok(mut last) = self.last_line.lock()
            && last.is_none_or(|at| at.elapsed().as_secs() >= 10)
        {
            *last = Some(Instant::now());
            eprintln!("progress   {} {done}/{total} {unit}", self.stage);
        }
        self.log.line(&format!("progress {done}/{total} {unit}"));
    }

    fn message(&self, text: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(text.chars().take(80).collect::<String>());
        }
        self.log.line(text);
    }

    fn metrics(&self, record: &serde_json::Value) {
        self.log.line(&format!("metrics {record}"));
        if let Some(tensorboard) = &self.tensorboard {
            tensorboard.record(record);
        }
    }
}

/// The style of a stage bar once it reports progress.
pub fn progress_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(
        "{spinner} {prefix:<24} {elapsed:>6} {bar:30} {pos}/{len} {rate:>10} eta {eta:<4} {msg}",
    )
    .map(|style| {
        style.with_key(
            "rate",
            |state: &indicatif::ProgressState, out: &mut dyn std::fmt::Write| {
                let _ = write!(out, "{:.1}/s", state.per_sec());
            },
        )
    })
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
}
