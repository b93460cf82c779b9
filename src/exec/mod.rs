//! Running a plan: topological order, `--jobs N` stages at once, cache hits skipped, leases shared
//! with other processes, failures recorded with their log tail, Ctrl-C keeps scratch for resume.
//!
//! Keys resolve as upstream stages commit (their output digests enter downstream keys), so a stage
//! whose upstream reproduced identical bytes is a cache hit even though the upstream re-ran.

pub mod cli;
pub mod device_memory;
pub mod events;
pub mod logging;
pub mod slurm;
pub mod tensorboard;

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::plan::status::{Committed, KeyRecord, explain, resolve_key};
use crate::plan::{InputSource, Plan};
use crate::stage::{
    CancelFlag, Executor, PreviewInput, PreviewInputs, Registry, StageContext, StageError,
};
use crate::store::{Acquire, CommitRecord, FailureInfo, Store, log_tail};
use device_memory::DeviceMemoryProbe;
pub use events::{Event, Output};

/// How a run behaves (`sheared run` flags).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stages run at once (at least 1).
    pub jobs: usize,
    /// Run only these stages (and what they need).
    pub only: Vec<String>,
    /// Rerun these stages and everything downstream of them even if cached.
    pub force: Vec<String>,
    /// Keep running independent stages after a failure.
    pub keep_going: bool,
}

/// What a run did, stage ids per outcome.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub committed: Vec<String>,
    pub cached: Vec<String>,
    pub failed: Vec<String>,
    pub skipped: Vec<String>,
    /// Requested stages that did not end cached or committed (failed, skipped, not started).
    pub incomplete_requested: Vec<String>,
    pub cancelled: bool,
}

impl RunSummary {
    pub fn success(&self) -> bool {
        self.incomplete_requested.is_empty() && !self.cancelled
    }
}

#[derive(Clone)]
enum State {
    NotSelected,
    Waiting,
    Running,
    Done(Box<Committed>),
    Failed,
    Skipped,
}

enum Outcome {
    Committed {
        commit: Committed,
        seconds: f64,
    },
    /// Another process committed the key while we waited on its lease.
    CommittedElsewhere(Committed),
    Failed {
        message: String,
        log: Option<PathBuf>,
    },
    Cancelled,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Turn Ctrl-C / SIGTERM into a cancel request: running stages stop at their next check, scratch is
/// kept, nothing committed is touched. A second Ctrl-C exits at once.
pub fn install_interrupt_handler() {
    extern "C" fn on_interrupt(_signal: libc::c_int) {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            // SAFETY: `_exit` is async-signal-safe.
            unsafe { libc::_exit(130) };
        }
    }
    // SAFETY: the handler only touches an atomic (and `_exit`, which is async-signal-safe).
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_interrupt as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_interrupt as *const () as libc::sighandler_t,
        );
    }
}

/// Whether Ctrl-C was pressed.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Execute `plan`. Errors are returned only for problems of the run itself (the store broke); stage
/// failures are in the summary.
pub fn run(
    plan: &Plan,
    store: &Store,
    registry: &Registry,
    options: &RunOptions,
    output: &Output,
    cancel: &CancelFlag,
) -> anyhow::Result<RunSummary> {
    let all: BTreeSet<usize> = (0..plan.nodes.len()).collect();
    let (selected, requested) = if options.only.is_empty() {
        (all.clone(), all.clone())
    } else {
        let mut selected = BTreeSet::new();
        let mut requested = BTreeSet::new();
        for name in &options.only {
            for index in plan.find(name)? {
                selected.extend(plan.with_ancestors(index));
                requested.insert(index);
            }
        }
        (selected, requested)
    };
    let mut forced = BTreeSet::new();
    for name in &options.force {
        for index in plan.find(name)? {
            forced.extend(
                plan.with_descendants(index)
                    .intersection(&selected)
                    .copied(),
            );
        }
    }
    let jobs = options.jobs.max(1);
    let mut state: Vec<State> = (0..plan.nodes.len())
        .map(|index| {
            if selected.contains(&index) {
                State::Waiting
            } else {
                State::NotSelected
            }
        })
        .collect();
    let mut summary = RunSummary::default();
    let (sender, receiver) = mpsc::channel::<(usize, Outcome)>();
    let mut failure_seen = false;
    // Keys resolved (and looked up) once per node, not on every scan while `--jobs` is saturated.
    let mut records: Vec<Option<KeyRecord>> = vec![None; plan.nodes.len()];
    let memory = DeviceMemoryProbe::default();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        // A broken store stops scheduling; running stages are cancelled (scratch kept) rather than
        // left to finish unobserved.
        let mut schedule = || -> anyhow::Result<()> {
            let mut running = 0usize;
            loop {
                if interrupted() {
                    cancel.cancel();
                }
                let stop = cancel.is_cancelled() || (failure_seen && !options.keep_going);
                let mut progressed = false;
                // One index open for the whole scan (key resolution, cache lookups); dropped before
                // waiting on running stages so that other processes can use the index meanwhile.
                let session = store.index_session()?;
                for &index in &plan.order {
                    if !matches!(state[index], State::Waiting) {
                        continue;
                    }
                    let node = &plan.nodes[index];
                    let upstream = plan.upstream(index);
                    if let Some(&bad) = upstream
                        .iter()
                        .find(|&&up| matches!(state[up], State::Failed | State::Skipped))
                    {
                        state[index] = State::Skipped;
                        summary.skipped.push(node.id.clone());
                        let mut event = Event::new("skipped", &node.id);
                        event.reason = Some(format!(
                            "upstream stage `{}` did not complete",
                            plan.nodes[bad].id
                        ));
                        output.emit(&event);
                        progressed = true;
                        continue;
                    }
                    if stop
                        || !upstream
                            .iter()
                            .all(|&up| matches!(state[up], State::Done(_)))
                    {
                        continue;
                    }
                    let lookup = |up: usize| match &state[up] {
                        State::Done(commit) => Some(commit.as_ref().clone()),
                        _ => None,
                    };
                    let resolved = match &records[index] {
                        Some(record) => Ok(Some(record.clone())),
                        None => resolve_key(plan, index, &lookup, store),
                    };
                    let record = match resolved {
                        Ok(Some(record)) => record,
                        Ok(None) => continue,
                        Err(error) => {
                            state[index] = State::Failed;
                            summary.failed.push(node.id.clone());
                            failure_seen = true;
                            let mut event = Event::new("failed", &node.id);
                            event.reason = Some(error.to_string());
                            output.emit(&event);
                            progressed = true;
                            continue;
                        }
                    };
                    let first_look = records[index].is_none();
                    records[index] = Some(record.clone());
                    if first_look
                        && !forced.contains(&index)
                        && let Some(manifest) = store.lookup(&record.key)?
                    {
                        record_use(plan, store, index, &record);
                        let mut event = Event::new("cached", &node.id);
                        event.key = Some(record.key.to_hex());
                        output.emit(&event);
                        summary.cached.push(node.id.clone());
                        state[index] = State::Done(Box::new(Committed {
                            key: record.key,
                            manifest,
                        }));
                        progressed = true;
                        continue;
                    }
                    if running >= jobs {
                        continue;
                    }
                    let inputs = match materialise_inputs(plan, index, store, &state) {
                        Ok(inputs) => inputs,
                        Err(error) => {
                            state[index] = State::Failed;
                            summary.failed.push(node.id.clone());
                            failure_seen = true;
                            let mut event = Event::new("failed", &node.id);
                            event.reason = Some(format!("{error:#}"));
                            output.emit(&event);
                            progressed = true;
                            continue;
                        }
                    };
                    state[index] = State::Running;
                    running += 1;
                    progressed = true;
                    let sender = sender.clone();
                    let force = forced.contains(&index);
                    let memory = &memory;
                    scope.spawn(move || {
                        let outcome = execute(
                            plan, index, &record, inputs, force, store, registry, output, cancel,
                            memory,
                        );
                        let _ = sender.send((index, outcome));
                    });
                }
                drop(session);
                if progressed {
                    continue;
                }
                if running == 0 {
                    break;
                }
                // Wait for a stage to finish; Ctrl-C only needs the flag set (running stages watch it).
                let (index, outcome) = loop {
                    match receiver.recv_timeout(Duration::from_millis(100)) {
                        Ok(message) => break message,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            if interrupted() {
                                cancel.cancel();
                            }
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
                    }
                };
                running -= 1;
                let node = &plan.nodes[index];
                match outcome {
                    Outcome::Committed { commit, seconds } => {
                        let mut event = Event::new("committed", &node.id);
                        event.key = Some(commit.key.to_hex());
                        event.seconds = Some(seconds);
                        output.emit(&event);
                        summary.committed.push(node.id.clone());
                        state[index] = State::Done(Box::new(commit));
                    }
                    Outcome::CommittedElsewhere(commit) => {
                        let mut event = Event::new("cached", &node.id);
                        event.key = Some(commit.key.to_hex());
                        event.reason = Some(
                            "committed by another sheared process while this one waited".into(),
                        );
                        output.emit(&event);
                        summary.cached.push(node.id.clone());
                        state[index] = State::Done(Box::new(commit));
                    }
                    Outcome::Failed { message, log } => {
                        let mut event = Event::new("failed", &node.id);
                        event.reason = Some(message);
                        if let Some(log) = &log {
                            event.log = Some(log.display().to_string());
                            event.log_tail = Some(log_tail(log, 20));
                        }
                        output.emit(&event);
                        summary.failed.push(node.id.clone());
                        failure_seen = true;
                        state[index] = State::Failed;
                    }
                    Outcome::Cancelled => {
                        output.emit(&Event::new("cancelled", &node.id));
                        state[index] = State::Waiting;
                        summary.cancelled = true;
                    }
                }
            }
            Ok(())
        };
        let result = schedule();
        if result.is_err() {
            cancel.cancel();
        }
        result
    })?;
    summary.cancelled |= cancel.is_cancelled();
    for &index in &requested {
        if !matches!(state[index], State::Done(_)) {
            summary
                .incomplete_requested
                .push(plan.nodes[index].id.clone());
        }
    }
    Ok(summary)
}

/// One line on why a stage is about to run: forced, never run, or what changed since its last run.
fn why_it_runs(
    store: &Store,
    recipe: &str,
    stage: &str,
    record: &KeyRecord,
    force: bool,
) -> String {
    if force {
        return "forced (--force)".into();
    }
    let previous = match store.last_committed(recipe, stage) {
        Ok(Some(previous)) => previous,
        Ok(None) => return format!("never committed in recipe `{recipe}`"),
        Err(error) => return format!("(history unavailable: {error})"),
    };
    let Some(old) = KeyRecord::from_json(&previous.preimage) else {
        return "not cached".into();
    };
    if old.key == record.key {
        return "its cached output was lost (dropped by verify, gc or a missing object); recomputing".into();
    }
    match explain(store, record, &old, 0) {
        Ok(reasons) if !reasons.is_empty() => reasons
            .iter()
            .map(|reason| reason.one_line())
            .collect::<Vec<_>>()
            .join("; "),
        Ok(_) => "not cached".into(),
        Err(error) => format!("(history unavailable: {error})"),
    }
}

/// Record that every (recipe, stage) this node stands for used `record.key` (history for `plan`).
/// The history is bookkeeping: when it cannot be written (the index's disk is full), the stage's
/// result stands and the run goes on with a warning.
fn record_use(plan: &Plan, store: &Store, index: usize, record: &KeyRecord) {
    for member in &plan.nodes[index].members {
        if let Err(error) = store.record_use(
            &plan.recipes[member.recipe].name,
            &member.stage,
            &record.key,
        ) {
            tracing::warn!(
                "`{}` is done, but `sheared plan`'s history of it could not be written: {error}",
                plan.nodes[index].id
            );
            return;
        }
    }
}

/// Input paths by dotted key: upstream output folders (or files in them) and external paths.
fn materialise_inputs(
    plan: &Plan,
    index: usize,
    store: &Store,
    state: &[State],
) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut inputs = BTreeMap::new();
    for input in &plan.nodes[index].inputs {
        let path = match &input.source {
            InputSource::Stage { node, file } => {
                let State::Done(commit) = &state[*node] else {
                    anyhow::bail!(
                        "input `{}`: stage `{}` is not committed",
                        input.key,
                        plan.nodes[*node].id
                    );
                };
                let folder = store.outputs(&commit.manifest).with_context(|| {
                    format!("materialising the outputs of `{}`", plan.nodes[*node].id)
                })?;
                match file {
                    Some(file) => folder.join(file),
                    None => folder,
                }
            }
            InputSource::Path(path) => path.clone(),
        };
        inputs.insert(input.key.clone(), path);
    }
    Ok(inputs)
}

/// `message` with what to do when the failure was a full disk: the error (or the tail of the stage's
/// log, where a command stage's own "No space left on device" lands) names ENOSPC or EDQUOT. The
/// cache is where stages write, so the hint names it and its free space. Nothing of a failed attempt
/// is committed, so freeing space and running again is all it takes.
fn with_disk_full_hint(message: String, log: Option<&Path>, cache: &Path) -> String {
    const SIGNS: [&str; 4] = [
        "No space left on device",
        "os error 28",
        "Disk quota exceeded",
        "os error 122",
    ];
    let tail = log.map(|log| log_tail(log, 20)).unwrap_or_default();
    if !SIGNS
        .iter()
        .any(|sign| message.contains(sign) || tail.contains(sign))
    {
        return message;
    }
    let free = fs4::available_space(cache)
        .map(|bytes| format!("{} free", crate::util::fmt::human_bytes(bytes)))
        .unwrap_or_else(|_| "free space unknown".into());
    format!(
        "{message}; the disk is full: the cache {} has {free}. Free space (`sheared gc` removes what no \
         recipe uses) or move the cache to a larger disk (`--cache DIR`), then run again: nothing of this \
         attempt was committed and committed outputs are intact",
        cache.display()
    )
}

/// The error for a stage that panicked. libtorch reports running out of device memory by panicking
/// ("CUDA out of memory. Tried to allocate ..."): that is the user's sizing, not a bug, so it gets
/// the fix instead of a bug report. Either way the attempt's scratch (its checkpoints) is kept and
/// committed outputs are untouched, so running again resumes.
fn panic_error(kind: &str, text: &str) -> StageError {
    let lower = text.to_lowercase();
    if lower.contains("out of memory") || lower.contains("cuda error: out of memory") {
        let first_line = text.lines().next().unwrap_or(text);
        return StageError::Other(anyhow::anyhow!(
            "the device ran out of memory ({first_line}); make each step smaller and run again, which \
             resumes from the stage's last checkpoint: lower batch_size or raise grad_accum, shorten \
             seq_len, set activation_checkpointing = true, or settings.precision = \"bf16\" (`sheared \
             plan` shows each stage's estimated peak memory)"
        ));
    }
    StageError::Other(anyhow::anyhow!(
        "the stage panicked: {text} (a bug in kind `{kind}`; please report it)"
    ))
}

/// Runs `stage` in this thread; a panic becomes the stage's error ([`panic_error`]).
pub(crate) fn run_caught(
    stage: &dyn crate::stage::Stage,
    context: &StageContext<'_>,
    kind: &str,
) -> Result<(), StageError> {
    catch_unwind(AssertUnwindSafe(|| stage.run(context))).unwrap_or_else(|panic| {
        let text = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(panic_error(kind, &text))
    })
}

/// The preview inputs of a stage about to run: every input exists now, so previews read the real
/// files (`config.json`, the tokenizer's manifest) rather than upstream predictions.
fn materialised_preview_inputs<'a>(
    inputs: &'a BTreeMap<String, PathBuf>,
    settings: &crate::stage::Settings,
) -> PreviewInputs<'a> {
    PreviewInputs {
        precision: settings.precision,
        inputs: inputs
            .iter()
            .map(|(key, path)| {
                let input = PreviewInput {
                    path: Some(path.as_path()),
                    upstream: None,
                };
                (key.clone(), input)
            })
            .collect(),
    }
}

/// Run one stage under its lease (or wait for another process that holds it).
#[allow(clippy::too_many_arguments)]
fn execute(
    plan: &Plan,
    index: usize,
    record: &KeyRecord,
    inputs: BTreeMap<String, PathBuf>,
    force: bool,
    store: &Store,
    registry: &Registry,
    output: &Output,
    cancel: &CancelFlag,
    memory: &DeviceMemoryProbe,
) -> Outcome {
    match execute_inner(
        plan, index, record, inputs, force, store, registry, output, cancel, memory,
    ) {
        Ok(outcome) => outcome,
        Err(error) => Outcome::Failed {
            message: with_disk_full_hint(format!("{error:#}"), None, store.root()),
            log: None,
        },
    }
}

#[allow(clippy::too_many_arguments)]
fn execute_inner(
    plan: &Plan,
    index: usize,
    record: &KeyRecord,
    inputs: BTreeMap<String, PathBuf>,
    force: bool,
    store: &Store,
    registry: &Registry,
    output: &Output,
    cancel: &CancelFlag,
    memory: &DeviceMemoryProbe,
) -> anyhow::Result<Outcome> {
    let node = &plan.nodes[index];
    let (recipe_name, _) = plan.record_name(index);
    let recipe = &plan.recipes[node.recipe];
    let stage = registry
        .get(&node.kind)
        .with_context(|| format!("unknown stage kind `{}`", node.kind))?;
    let lease = loop {
        match store.acquire(&record.key)? {
            Acquire::Acquired(lease) => break lease,
            Acquire::HeldBy(holder) => {
                let mut event = Event::new("waiting", &node.id);
                event.key = Some(record.key.to_hex());
                event.reason = Some(format!(
                    "another sheared process holds this stage (pid {} on {}, since {}); waiting for its result",
                    holder.pid,
                    holder.host,
                    holder.started_at()
                ));
                output.emit(&event);
                store.wait_released(&record.key, Duration::from_millis(100), &|| {
                    cancel.is_cancelled() || interrupted()
                })?;
                if cancel.is_cancelled() || interrupted() {
                    return Ok(Outcome::Cancelled);
                }
                if !force && let Some(manifest) = store.lookup(&record.key)? {
                    record_use(plan, store, index, record);
                    return Ok(Outcome::CommittedElsewhere(Committed {
                        key: record.key,
                        manifest,
                    }));
                }
            }
        }
    };
    if !force && let Some(manifest) = store.lookup(&record.key)? {
        record_use(plan, store, index, record);
        return Ok(Outcome::CommittedElsewhere(Committed {
            key: record.key,
            manifest,
        }));
    }
    let attempt = store.begin(&record.key)?;
    let log = logging::LogFile::open(&attempt.log_path)
        .with_context(|| format!("opening the log {}", attempt.log_path.display()))?;
    log.line(&format!(
        "stage `{}` (kind {} v{}) key {}",
        node.id,
        node.kind,
        node.version,
        record.key.to_hex()
    ));
    log.line(&format!("preimage {}", record.preimage));
    // Before any compute: the stage's peak-memory estimate, from its real inputs, against the device.
    let preview = stage.preview(
        &node.config,
        &materialised_preview_inputs(&inputs, &recipe.settings),
    );
    // The attempt's log, failure record and outcome, for a stage refused before it runs or failed.
    let fail = |message: String| -> anyhow::Result<Outcome> {
        let message = with_disk_full_hint(message, Some(&attempt.log_path), store.root());
        log.line(&format!("failed: {message}"));
        store.fail(
            &attempt,
            FailureInfo {
                stage: node.stage.clone(),
                recipe: recipe_name.to_string(),
                error: message.clone(),
            },
        )?;
        Ok(Outcome::Failed {
            message,
            log: Some(attempt.log_path.clone()),
        })
    };
    // A Slurm job computes on another machine: this one's memory says nothing about it, unless the
    // recipe states the compute nodes' memory (`settings.device_memory_gb`).
    let slurm = recipe.settings.executor == Executor::Slurm;
    if (!slurm || recipe.settings.device_memory_gb > 0.0)
        && let Err(refusal) = memory.check(&node.id, &preview, &recipe.settings)
    {
        return fail(refusal.to_string());
    }
    if !slurm && let Err(refusal) = memory.check_precision(&node.id, &preview, &recipe.settings) {
        return fail(refusal.to_string());
    }
    let mut started = Event::new("started", &node.id);
    started.key = Some(record.key.to_hex());
    started.reason = Some(why_it_runs(store, recipe_name, &node.stage, record, force));
    output.emit(&started);
    let bar = output.bar(&node.id);
    // Beside the attempt's log: `logs/<key>/tensorboard/`.
    let tensorboard_dir = attempt
        .log_path
        .parent()
        .unwrap_or(store.root())
        .join("tensorboard");
    let reporter = logging::StageReporter {
        log: log.clone(),
        bar: bar.clone(),
        stage: node.id.clone(),
        plain_progress: !output.is_json() && bar.is_none(),
        last_line: Mutex::new(None),
        tensorboard: Some(tensorboard::TensorBoardSink::new(tensorboard_dir.clone())),
    };
    let span = tracing::info_span!("stage", stage = %node.id, key = %record.key.short(), log = %attempt.log_path.display());
    let job_folder = store.jobs_path(&record.key);
    let clock = Instant::now();
    let result = if slurm {
        let spec = slurm::JobSpec {
            id: node.id.clone(),
            stage: node.stage.clone(),
            kind: node.kind.clone(),
            config: toml::to_string(&node.config).context("writing the stage's config")?,
            inputs,
            scratch_dir: attempt.scratch_dir.clone(),
            settings: recipe.settings.clone(),
            tensorboard_dir: Some(tensorboard_dir.clone()),
        };
        span.in_scope(|| {
            slurm::run_stage(slurm::JobRun {
                spec,
                resources: node.resources.over(&recipe.settings.slurm),
                folder: job_folder.clone(),
                out_dir: &attempt.out_dir,
                log: &log,
                bar: bar.as_ref(),
                cancel,
            })
        })
    } else {
        let context = StageContext {
            name: &node.stage,
            config: &node.config,
            inputs,
            out_dir: attempt.out_dir.clone(),
            scratch_dir: attempt.scratch_dir.clone(),
            settings: &recipe.settings,
            reporter: &reporter,
            cancel: cancel.clone(),
        };
        span.in_scope(|| run_caught(stage, &context, &node.kind))
    };
    let seconds = clock.elapsed().as_secs_f64();
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    match result {
        Ok(()) => {
            log.line(&format!("finished in {seconds:.3} s; committing"));
            let manifest = store.commit(
                &attempt,
                CommitRecord {
                    stage: node.stage.clone(),
                    recipe: recipe_name.to_string(),
                    kind: node.kind.clone(),
                    version: node.version,
                    preimage: record.to_json(),
                    started_at: attempt.started_at,
                    seconds,
                },
            )?;
            record_use(plan, store, index, record);
            if job_folder.exists()
                && let Err(error) = std::fs::remove_dir_all(&job_folder)
            {
                tracing::warn!(
                    "could not remove the job folder {}: {error}",
                    job_folder.display()
                );
            }
            drop(lease);
            Ok(Outcome::Committed {
                commit: Committed {
                    key: record.key,
                    manifest,
                },
                seconds,
            })
        }
        Err(StageError::Cancelled) => {
            log.line("cancelled; scratch kept for the next attempt");
            let _ = std::fs::remove_dir_all(&attempt.out_dir);
            Ok(Outcome::Cancelled)
        }
        Err(error) => {
            let message = match &error {
                StageError::Config { key, message } => {
                    format!("{}: `{key}`: {message}", recipe.locate(&node.stage, key))
                }
                other => format!("{other:#}"),
            };
            fail(message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::{LoadOptions, load};
    use crate::stage::Stage;

    #[test]
    fn out_of_memory_panics_get_the_fix_other_panics_a_bug_report() {
        let oom = panic_error(
            "train",
            "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.10 GiB total capacity)\nException raised from malloc",
        )
        .to_string();
        assert!(
            oom.contains("ran out of memory (CUDA out of memory. Tried to allocate 2.00 GiB"),
            "{oom}"
        );
        assert!(
            oom.contains("grad_accum") && oom.contains("activation_checkpointing"),
            "{oom}"
        );
        assert!(!oom.contains("Exception raised"), "{oom}");
        let bug = panic_error("train", "index out of bounds").to_string();
        assert!(bug.contains("a bug in kind `train`"), "{bug}");
    }

    /// Writes `value` into `out/value.txt`, logs through `tracing`, and reports progress.
    struct Echo;
    impl Stage for Echo {
        fn kind(&self) -> &'static str {
            "echo"
        }
        fn version(&self) -> u32 {
            1
        }
        fn about(&self) -> &'static str {
            "test kind"
        }
        fn normalize(&self, table: &toml::Table) -> Result<toml::Table, StageError> {
            Ok(table.clone())
        }
        fn run(&self, ctx: &StageContext<'_>) -> Result<(), StageError> {
            tracing::info!(stage = ctx.name, "hello from the stage");
            ctx.reporter.progress(1, 2, "steps");
            if ctx.config.get("fail").and_then(toml::Value::as_bool) == Some(true) {
                return Err(StageError::Other(anyhow::anyhow!("asked to fail")));
            }
            let value = ctx
                .config
                .get("value")
                .map(ToString::to_string)
                .unwrap_or_default();
            std::fs::write(ctx.out_dir.join("value.txt"), value).map_err(anyhow::Error::from)?;
            Ok(())
        }
    }

    #[test]
    fn runs_in_order_logs_per_stage_and_reports_failures() {
        logging::init();
        let dir = tempfile::tempdir().unwrap();
        let recipe = dir.path().join("r.toml");
        std::fs::write(
            &recipe,
            "[stages.a]\nkind = \"echo\"\nvalue = 1\n[stages.b]\nkind = \"echo\"\nvalue = { stage = \"a\" }\n\
             [stages.c]\nkind = \"echo\"\nfail = true\n[stages.d]\nkind = \"echo\"\nafter = { stage = \"c\" }\n",
        )
        .unwrap();
        let mut registry = Registry::new();
        registry.register(Box::new(Echo));
        let recipes = load(&recipe, &LoadOptions::default(), &registry).unwrap();
        let plan = Plan::build(recipes, &registry).unwrap();
        let store = Store::open(dir.path().join("cache")).unwrap();
        let options = RunOptions {
            jobs: 2,
            keep_going: true,
            ..RunOptions::default()
        };
        let summary = run(
            &plan,
            &store,
            &registry,
            &options,
            &Output::Lines,
            &CancelFlag::default(),
        )
        .unwrap();
        let mut committed = summary.committed.clone();
        committed.sort();
        assert_eq!(committed, ["a", "b"]);
        assert_eq!(summary.failed, ["c"]);
        assert_eq!(summary.skipped, ["d"]);
        assert!(!summary.success());
        let logs: Vec<String> = walk_files(&store.root().join("logs"))
            .into_iter()
            .map(|path| std::fs::read_to_string(path).unwrap_or_default())
            .collect();
        assert_eq!(logs.len(), 3, "one log per attempt");
        assert!(
            logs.iter().all(|log| log.contains("hello from the stage")),
            "{logs:?}"
        );
        assert!(
            logs.iter().any(|log| log.contains("failed: asked to fail")),
            "{logs:?}"
        );
        let again = run(
            &plan,
            &store,
            &registry,
            &RunOptions::default(),
            &Output::Lines,
            &CancelFlag::default(),
        )
        .unwrap();
        let mut cached = again.cached.clone();
        cached.sort();
        assert_eq!(cached, ["a", "b"]);
        assert_eq!(again.failed, ["c"]);
    }

    fn walk_files(root: &std::path::Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                files.extend(walk_files(&path))
            } else {
                files.push(path)
            }
        }
        files
    }
}
