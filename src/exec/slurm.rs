//! The Slurm executor (`settings.executor = "slurm"`, `sheared run --executor slurm`): each stage
//! that must compute runs as one Slurm batch job, while `sheared run` (the coordinator, on a login
//! node) keeps the plan, the index and the leases, and commits what the job wrote.
//!
//! A job runs this same binary as `sheared stage-job <job folder>`: it reads `spec.json` (the
//! stage's kind, config, inputs and settings), runs the stage exactly as the local executor does,
//! and writes `result.json` last. The coordinator and the compute nodes must share the cache's
//! filesystem (and see the binary at the same path), as on any cluster with a shared home or
//! scratch filesystem. One folder per stage key:
//!
//! ```text
//! jobs/<key>/spec.json     what to run (written by the coordinator)
//!            job.json      the submitted job: Slurm's id, when, by which coordinator
//!            out/          the stage's output folder; moved into the attempt on success
//!            stage.log     the stage's log lines, copied into the attempt's log as they come
//!            slurm.out     the job's stdout and stderr (`sbatch --output`)
//!            result.json   written last by the job: ok, failed (with the error) or cancelled
//! ```
//!
//! The stage's scratch folder is the key's usual `scratch/<key>/`, so a failed, timed-out or
//! cancelled job's checkpoints are resumed by the next job, as locally.
//!
//! **Adoption.** A coordinator killed with SIGKILL leaves its jobs running. The next `sheared run`
//! that takes the stage's lease finds `job.json`: a job still queued or running is waited for, and a
//! job that finished with a result the old coordinator never committed is committed, instead of
//! submitting a second job. Ctrl-C or SIGTERM of the coordinator cancels its jobs (`scancel`).
//!
//! Slurm is driven through its commands (`sbatch --parsable`, `scontrol show job -o`, `scancel`,
//! `sinfo`), as a user would; no accounting database is needed.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};

use super::logging::{LogFile, StageReporter};
use crate::stage::{CancelFlag, Registry, Resources, Settings, StageContext, StageError};

/// How often the coordinator looks at a job (state, new log lines).
const POLL: Duration = Duration::from_millis(500);

/// How long a cancelled job may take to stop before the coordinator stops waiting for it.
const CANCEL_WAIT: Duration = Duration::from_secs(90);

/// What a job runs: everything `sheared stage-job` needs besides the registry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSpec {
    /// The node id, for messages (`prune[method=magnitude]`).
    pub id: String,
    /// The stage's name in its recipe.
    pub stage: String,
    pub kind: String,
    /// The normalised config, as TOML text.
    pub config: String,
    /// Materialised inputs by dotted key.
    pub inputs: BTreeMap<String, PathBuf>,
    /// The key's persistent scratch folder.
    pub scratch_dir: PathBuf,
    pub settings: Settings,
    /// Where the stage's curves go (`logs/<key>/tensorboard/`, [`super::tensorboard`]).
    #[serde(default)]
    pub tensorboard_dir: Option<PathBuf>,
}

/// The submitted job, recorded for adoption by a later coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct JobRecord {
    job_id: String,
    submitted_unix_ms: u64,
    coordinator_pid: u32,
    coordinator_host: String,
}

/// How a job's stage ended, written by the job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
enum JobResult {
    Ok,
    Failed {
        message: String,
        /// The config key a `StageError::Config` names (the coordinator points at its recipe line).
        key: Option<String>,
    },
    Cancelled,
}

impl JobRecord {
    /// `submitted <time> by pid <pid> on <host>`.
    fn provenance(&self) -> String {
        format!(
            "submitted {} by pid {} on {}",
            crate::store::rfc3339(
                std::time::UNIX_EPOCH + Duration::from_millis(self.submitted_unix_ms)
            ),
            self.coordinator_pid,
            self.coordinator_host
        )
    }
}

/// The files of one key's job folder.
struct JobFolder(PathBuf);

impl JobFolder {
    fn spec(&self) -> PathBuf {
        self.0.join("spec.json")
    }
    fn record(&self) -> PathBuf {
        self.0.join("job.json")
    }
    fn out(&self) -> PathBuf {
        self.0.join("out")
    }
    fn stage_log(&self) -> PathBuf {
        self.0.join("stage.log")
    }
    fn slurm_out(&self) -> PathBuf {
        self.0.join("slurm.out")
    }
    fn result(&self) -> PathBuf {
        self.0.join("result.json")
    }
    fn script(&self) -> PathBuf {
        self.0.join("job.sh")
    }
    fn read_result(&self) -> Option<JobResult> {
        serde_json::from_slice(&fs::read(self.result()).ok()?).ok()
    }
    fn read_record(&self) -> Option<JobRecord> {
        serde_json::from_slice(&fs::read(self.record()).ok()?).ok()
    }
}

/// A job's state as `scontrol show job` reports it.
#[derive(Debug, Clone, PartialEq)]
struct JobState {
    /// `PENDING`, `RUNNING`, `COMPLETED`, `FAILED`, `TIMEOUT`, ...
    state: String,
    reason: String,
    /// `code:signal`.
    exit_code: String,
}

impl JobState {
    /// A state from which the job never runs again.
    fn is_final(&self) -> bool {
        matches!(
            self.state.as_str(),
            "COMPLETED"
                | "FAILED"
                | "CANCELLED"
                | "TIMEOUT"
                | "NODE_FAIL"
                | "PREEMPTED"
                | "OUT_OF_MEMORY"
                | "BOOT_FAIL"
                | "DEADLINE"
        )
    }

    /// Pending reasons with which the job can never start: its request exceeds what the
    /// partition offers (Slurm keeps such jobs pending forever instead of refusing them).
    fn never_starts(&self) -> bool {
        self.state == "PENDING"
            && matches!(
                self.reason.as_str(),
                "PartitionConfig"
                    | "PartitionNodeLimit"
                    | "PartitionTimeLimit"
                    | "BadConstraints"
                    | "InvalidAccount"
                    | "InvalidQOS"
            )
    }
}

/// Everything one stage's job needs from the runner.
pub(super) struct JobRun<'a> {
    pub spec: JobSpec,
    pub resources: Resources,
    /// `jobs/<key>/`.
    pub folder: PathBuf,
    /// The attempt's (empty) output folder, filled from the job's `out/` on success.
    pub out_dir: &'a Path,
    pub log: &'a LogFile,
    pub bar: Option<&'a indicatif::ProgressBar>,
    pub cancel: &'a CancelFlag,
}

/// Runs `run`'s stage as a Slurm job (or adopts the job a killed coordinator left) and waits for
/// it; on success the stage's outputs are in `run.out_dir`.
pub(super) fn run_stage(run: JobRun<'_>) -> Result<(), StageError> {
    let folder = JobFolder(run.folder.clone());
    let job_id = match adoptable(&folder, run.log)? {
        Some(job_id) => job_id,
        None => submit(&run, &folder)?,
    };
    let state = wait(&run, &folder, &job_id)?;
    copy_file_into_log(&folder.slurm_out(), run.log, "the job's stdout and stderr");
    match folder.read_result() {
        Some(JobResult::Ok) => {
            move_outputs(&folder.out(), run.out_dir)?;
            run.log.line(&format!(
                "slurm job {job_id}: outputs moved into the attempt"
            ));
            Ok(())
        }
        Some(JobResult::Cancelled) => Err(StageError::Cancelled),
        Some(JobResult::Failed { message, key }) => Err(match key {
            Some(key) => StageError::Config { key, message },
            None => StageError::Other(anyhow!("{message} (slurm job {job_id})")),
        }),
        None if run.cancel.is_cancelled() => Err(StageError::Cancelled),
        None => Err(StageError::Other(anyhow!(
            "slurm job {job_id} ended {} (reason {}, exit code {}) before the stage finished{}; \
             its output is in {}. Running again resumes from the stage's checkpoints",
            state.state,
            state.reason,
            state.exit_code,
            match state.state.as_str() {
                "TIMEOUT" => ": it ran out of time, raise `resources.time`",
                "OUT_OF_MEMORY" => ": it ran out of host memory, raise `resources.memory`",
                _ => "",
            },
            folder.slurm_out().display()
        ))),
    }
}

/// A job of this key a previous coordinator submitted that is still queued or running, or that
/// finished with a result nobody committed: its id. Otherwise the folder is cleared for a new job.
fn adoptable(folder: &JobFolder, log: &LogFile) -> Result<Option<String>, StageError> {
    if let Some(record) = folder.read_record() {
        let state = query(&record.job_id)?;
        let alive = state.as_ref().is_some_and(|state| !state.is_final());
        let finished_ok = matches!(folder.read_result(), Some(JobResult::Ok)) && !alive;
        if alive || finished_ok {
            log.line(&format!(
                "adopting slurm job {} ({}): {}",
                record.job_id,
                record.provenance(),
                match &state {
                    Some(state) => state.state.clone(),
                    None => "finished".into(),
                }
            ));
            return Ok(Some(record.job_id));
        }
    }
    if folder.0.exists() {
        fs::remove_dir_all(&folder.0).map_err(|error| {
            StageError::Other(anyhow!(
                "removing the old job folder {}: {error}",
                folder.0.display()
            ))
        })?;
    }
    Ok(None)
}

/// Writes the spec and script and submits them with `sbatch`; the job's id.
fn submit(run: &JobRun<'_>, folder: &JobFolder) -> Result<String, StageError> {
    let io = |what: &str, path: &Path, error: std::io::Error| {
        StageError::Other(anyhow!("{what} {}: {error}", path.display()))
    };
    fs::create_dir_all(folder.out()).map_err(|e| io("creating", &folder.out(), e))?;
    let spec = serde_json::to_vec_pretty(&run.spec).map_err(|e| StageError::Other(e.into()))?;
    crate::store::write_atomic(&folder.spec(), &spec).map_err(|e| StageError::Other(e.into()))?;
    let binary = std::env::current_exe()
        .map_err(|error| StageError::Other(anyhow!("locating the sheared binary: {error}")))?;
    let script = format!(
        "#!/bin/sh\n# sheared stage `{}`: written by `sheared run`, run by Slurm.\nexec {} stage-job {}\n",
        run.spec.id,
        shell_quote(&binary.to_string_lossy()),
        shell_quote(&folder.0.to_string_lossy())
    );
    fs::write(folder.script(), script).map_err(|e| io("writing", &folder.script(), e))?;
    let mut command = Command::new("sbatch");
    command
        .arg("--parsable")
        .arg(format!("--job-name=sheared-{}", run.spec.stage))
        .arg(format!("--output={}", folder.slurm_out().display()))
        .arg(format!("--chdir={}", folder.0.display()))
        .args(sbatch_resource_args(&run.resources))
        .arg(folder.script());
    run.log.line(&format!("submitting: {command:?}"));
    let output = command.output().map_err(|error| {
        StageError::Other(anyhow!(
            "stage `{}`: could not run `sbatch` ({error}); install Slurm's client commands on this \
             machine or set settings.executor = \"local\"",
            run.spec.id
        ))
    })?;
    if !output.status.success() {
        return Err(StageError::Other(anyhow!(
            "stage `{}`: Slurm refused the job: {} (check [stages.{}.resources] and [settings.slurm])",
            run.spec.id,
            slurm_message(&output),
            run.spec.stage
        )));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let job_id = stdout
        .trim()
        .split(';')
        .next()
        .filter(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_digit() || c == '_'))
        .ok_or_else(|| {
            StageError::Other(anyhow!(
                "stage `{}`: `sbatch --parsable` printed no job id: {stdout:?}",
                run.spec.id
            ))
        })?
        .to_string();
    let record = JobRecord {
        job_id: job_id.clone(),
        submitted_unix_ms: crate::store::now_unix_ms(),
        coordinator_pid: std::process::id(),
        coordinator_host: hostname(),
    };
    let bytes = serde_json::to_vec_pretty(&record).map_err(|e| StageError::Other(e.into()))?;
    crate::store::write_atomic(&folder.record(), &bytes)
        .map_err(|e| StageError::Other(e.into()))?;
    run.log.line(&format!("submitted slurm job {job_id}"));
    Ok(job_id)
}

/// The `sbatch` options for `resources`.
fn sbatch_resource_args(resources: &Resources) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(partition) = &resources.partition {
        args.push(format!("--partition={partition}"));
    }
    if let Some(time) = &resources.time {
        args.push(format!("--time={time}"));
    }
    if let Some(memory) = &resources.memory {
        args.push(format!("--mem={memory}"));
    }
    if let Some(cpus) = resources.cpus {
        args.push(format!("--cpus-per-task={cpus}"));
    }
    if let Some(gpus) = resources.gpus {
        args.push(format!("--gpus={gpus}"));
    }
    args.extend(resources.extra_args.iter().cloned());
    args
}

/// Waits until the job reaches a final state (or is gone), copying its log lines as they come and
/// cancelling it when the run is cancelled.
fn wait(run: &JobRun<'_>, folder: &JobFolder, job_id: &str) -> Result<JobState, StageError> {
    let mut log_offset = 0u64;
    let mut cancelled_at: Option<Instant> = None;
    let mut last_state = String::new();
    loop {
        log_offset = follow_stage_log(&folder.stage_log(), log_offset, run);
        if (run.cancel.is_cancelled() || super::interrupted()) && cancelled_at.is_none() {
            run.cancel.cancel();
            run.log
                .line(&format!("cancelling slurm job {job_id} (scancel)"));
            let _ = Command::new("scancel").arg(job_id).output();
            cancelled_at = Some(Instant::now());
        }
        let state = query(job_id)?;
        let Some(state) = state else {
            // Gone from Slurm's memory (finished long ago): the result file tells.
            follow_stage_log(&folder.stage_log(), log_offset, run);
            return Ok(JobState {
                state: "FINISHED".into(),
                reason: "no longer known to Slurm".into(),
                exit_code: "?".into(),
            });
        };
        if state.state != last_state {
            run.log.line(&format!(
                "slurm job {job_id}: {} (reason {})",
                state.state, state.reason
            ));
            if let Some(bar) = run.bar {
                bar.set_message(format!("slurm job {job_id} {}", state.state));
            }
            last_state = state.state.clone();
        }
        if state.is_final() {
            follow_stage_log(&folder.stage_log(), log_offset, run);
            return Ok(state);
        }
        if state.never_starts() {
            let _ = Command::new("scancel").arg(job_id).output();
            return Err(StageError::Other(anyhow!(
                "stage `{}`: Slurm will never start job {job_id} (pending, reason {}): it asks for \
                 more than its partition offers; cancelled it. Lower [stages.{}.resources] or choose \
                 another partition",
                run.spec.id,
                state.reason,
                run.spec.stage
            )));
        }
        if cancelled_at.is_some_and(|at| at.elapsed() > CANCEL_WAIT) {
            return Err(StageError::Cancelled);
        }
        std::thread::sleep(POLL);
    }
}

/// `scontrol show job -o ID`: the job's state, or `None` when Slurm no longer knows the id.
fn query(job_id: &str) -> Result<Option<JobState>, StageError> {
    let output = Command::new("scontrol")
        .args(["show", "job", "-o", job_id])
        .output()
        .map_err(|error| {
            StageError::Other(anyhow!(
                "could not run `scontrol` ({error}) to follow slurm job {job_id}"
            ))
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let message = slurm_message(&output);
        if message.contains("Invalid job id") {
            return Ok(None);
        }
        return Err(StageError::Other(anyhow!(
            "following slurm job {job_id}: {message}"
        )));
    }
    Ok(parse_job_state(&text))
}

/// `JobState=`, `Reason=` and `ExitCode=` of one `scontrol show job -o` line.
fn parse_job_state(text: &str) -> Option<JobState> {
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_string)
    };
    Some(JobState {
        state: field("JobState")?,
        reason: field("Reason").unwrap_or_default(),
        exit_code: field("ExitCode").unwrap_or_default(),
    })
}

/// Copies the lines of the job's `stage.log` after `offset` into the attempt's log and moves the
/// progress bar along; the new offset (after the last complete line).
fn follow_stage_log(path: &Path, offset: u64, run: &JobRun<'_>) -> u64 {
    let Ok(mut file) = fs::File::open(path) else {
        return offset;
    };
    if file.seek(SeekFrom::Start(offset)).is_err() {
        return offset;
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return offset;
    }
    let Some(end) = bytes.iter().rposition(|&b| b == b'\n') else {
        return offset;
    };
    for line in String::from_utf8_lossy(&bytes[..end]).lines() {
        run.log.line(line);
        if let (Some(bar), Some((done, total, _))) = (run.bar, parse_progress(line)) {
            bar.set_style(super::logging::progress_style());
            bar.set_length(total);
            bar.set_position(done);
        }
    }
    offset + end as u64 + 1
}

/// `progress DONE/TOTAL UNIT` (what [`StageReporter`] writes).
fn parse_progress(line: &str) -> Option<(u64, u64, String)> {
    let rest = line.strip_prefix("progress ")?;
    let (counts, unit) = rest.split_once(' ').unwrap_or((rest, ""));
    let (done, total) = counts.split_once('/')?;
    Some((done.parse().ok()?, total.parse().ok()?, unit.to_string()))
}

/// Appends a whole file (the job's own output) to the attempt's log under a heading.
fn copy_file_into_log(path: &Path, log: &LogFile, what: &str) {
    if let Ok(text) = fs::read_to_string(path)
        && !text.trim().is_empty()
    {
        log.line(&format!("--- {what} ({}) ---", path.display()));
        for line in text.lines() {
            log.line(line);
        }
        log.line("---");
    }
}

/// Moves every entry of `from` into the empty folder `to` (same filesystem: renames).
fn move_outputs(from: &Path, to: &Path) -> Result<(), StageError> {
    let entries = fs::read_dir(from)
        .map_err(|error| StageError::Other(anyhow!("reading {}: {error}", from.display())))?;
    for entry in entries {
        let entry = entry
            .map_err(|error| StageError::Other(anyhow!("reading {}: {error}", from.display())))?;
        let target = to.join(entry.file_name());
        fs::rename(entry.path(), &target).map_err(|error| {
            StageError::Other(anyhow!(
                "moving {} into {}: {error}",
                entry.path().display(),
                target.display()
            ))
        })?;
    }
    Ok(())
}

/// Slurm's own words from a failed command: its stderr (or stdout), trimmed to one line each.
fn slurm_message(output: &std::process::Output) -> String {
    let text = if output.stderr.is_empty() {
        String::from_utf8_lossy(&output.stdout).into_owned()
    } else {
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        format!("exit status {}", output.status)
    } else {
        lines.join("; ")
    }
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

fn hostname() -> String {
    hostname::get()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// The Slurm job recorded in a stage key's job folder, as `sheared plan` shows it: `(text,
/// alive)`, where `alive` means queued or running. `None` when no job is recorded or Slurm cannot
/// be asked.
pub fn job_status(folder: &Path) -> Option<(String, bool)> {
    let folder = JobFolder(folder.to_path_buf());
    let record = folder.read_record()?;
    let by = record.provenance();
    match query(&record.job_id).ok()? {
        Some(state) => Some((
            format!(
                "slurm job {}: {} (reason {}), {by}",
                record.job_id, state.state, state.reason
            ),
            !state.is_final(),
        )),
        None => Some((
            format!(
                "slurm job {}: finished, no longer known to Slurm, {by}",
                record.job_id
            ),
            false,
        )),
    }
}

/// Before a Slurm run computes anything: Slurm's commands exist and answer, and every partition
/// the plan's stages name exists. `partitions` are (stage id, partition) pairs.
pub fn preflight(partitions: &[(String, String)]) -> anyhow::Result<()> {
    let output = Command::new("sinfo")
        .args(["-h", "-o", "%P"])
        .output()
        .map_err(|error| {
            anyhow!(
                "settings.executor = \"slurm\", but Slurm's `sinfo` could not run ({error}): install \
                 Slurm's client commands (and make them reachable on PATH) or run with --executor local"
            )
        })?;
    if !output.status.success() {
        bail!(
            "settings.executor = \"slurm\", but Slurm does not answer: {} (is slurmctld running and \
             this machine configured to reach it?)",
            slurm_message(&output)
        );
    }
    let known: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| line.trim().trim_end_matches('*').to_string())
        .filter(|line| !line.is_empty())
        .collect();
    for (stage, partition) in partitions {
        if !known.contains(partition) {
            bail!(
                "stage `{stage}`: Slurm partition `{partition}` does not exist; this cluster has: {}",
                known.join(", ")
            );
        }
    }
    Ok(())
}

/// `sheared stage-job FOLDER`: the job side. Runs the stage of `FOLDER/spec.json` in this process,
/// writing its log to `stage.log`, its outputs to `out/`, and `result.json` last. Returns whether
/// the stage succeeded (the process's exit status); an error only when the spec cannot be read.
pub fn stage_job(folder: &Path, registry: &Registry) -> anyhow::Result<bool> {
    let folder = JobFolder(folder.to_path_buf());
    let spec: JobSpec = serde_json::from_slice(
        &fs::read(folder.spec()).with_context(|| format!("reading {}", folder.spec().display()))?,
    )
    .with_context(|| format!("parsing {}", folder.spec().display()))?;
    super::install_interrupt_handler();
    let cancel = CancelFlag::default();
    // scancel sends SIGTERM: the handler sets a flag that this thread turns into a cancel request.
    let watcher_cancel = cancel.clone();
    std::thread::spawn(move || {
        loop {
            if super::interrupted() {
                watcher_cancel.cancel();
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let log_path = folder.stage_log();
    let log =
        LogFile::open(&log_path).with_context(|| format!("opening {}", log_path.display()))?;
    log.line(&format!(
        "slurm job {} on {}: stage `{}` (kind {})",
        std::env::var("SLURM_JOB_ID").unwrap_or_else(|_| "?".into()),
        hostname(),
        spec.id,
        spec.kind
    ));
    let result = run_spec(&spec, &folder, &log, registry, &cancel);
    let (ok, record) = match result {
        Ok(()) => (true, JobResult::Ok),
        Err(StageError::Cancelled) => (false, JobResult::Cancelled),
        Err(StageError::Config { key, message }) => (
            false,
            JobResult::Failed {
                message,
                key: Some(key),
            },
        ),
        Err(other) => (
            false,
            JobResult::Failed {
                message: format!("{other:#}"),
                key: None,
            },
        ),
    };
    log.line(&format!("stage-job result: {record:?}"));
    crate::store::write_atomic(&folder.result(), &serde_json::to_vec(&record)?)?;
    Ok(ok)
}

fn run_spec(
    spec: &JobSpec,
    folder: &JobFolder,
    log: &LogFile,
    registry: &Registry,
    cancel: &CancelFlag,
) -> Result<(), StageError> {
    let stage = registry.get(&spec.kind).ok_or_else(|| {
        StageError::Other(anyhow!("this binary has no stage kind `{}`", spec.kind))
    })?;
    let config: toml::Table = toml::from_str(&spec.config)
        .map_err(|error| StageError::Other(anyhow!("the job's config: {error}")))?;
    let out_dir = folder.out();
    if out_dir.exists() {
        fs::remove_dir_all(&out_dir).map_err(|error| {
            StageError::Other(anyhow!("clearing {}: {error}", out_dir.display()))
        })?;
    }
    fs::create_dir_all(&out_dir)
        .map_err(|error| StageError::Other(anyhow!("creating {}: {error}", out_dir.display())))?;
    fs::create_dir_all(&spec.scratch_dir).map_err(|error| {
        StageError::Other(anyhow!("creating {}: {error}", spec.scratch_dir.display()))
    })?;
    let reporter = StageReporter {
        log: log.clone(),
        bar: None,
        stage: spec.id.clone(),
        plain_progress: false,
        last_line: std::sync::Mutex::new(None),
        tensorboard: spec
            .tensorboard_dir
            .clone()
            .map(super::tensorboard::TensorBoardSink::new),
    };
    let context = StageContext {
        name: &spec.stage,
        config: &config,
        inputs: spec.inputs.clone(),
        out_dir,
        scratch_dir: spec.scratch_dir.clone(),
        settings: &spec.settings,
        reporter: &reporter,
        cancel: cancel.clone(),
    };
    let span = tracing::info_span!("stage", stage = %spec.id, log = %folder.stage_log().display());
    span.in_scope(|| super::run_caught(stage, &context, &spec.kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_scontrol_lines_and_progress() {
        let line = "JobId=12 JobName=sheared-a UserId=root(0) JobState=FAILED Reason=NonZeroExitCode \
                    Dependency=(null) ExitCode=3:0 RunTime=00:00:01";
        let state = parse_job_state(line).unwrap();
        assert_eq!(state.state, "FAILED");
        assert_eq!(state.reason, "NonZeroExitCode");
        assert_eq!(state.exit_code, "3:0");
        assert!(state.is_final());
        let pending = parse_job_state("JobId=3 JobState=PENDING Reason=PartitionConfig").unwrap();
        assert!(!pending.is_final() && pending.never_starts());
        let waiting = parse_job_state("JobId=3 JobState=PENDING Reason=Resources").unwrap();
        assert!(!waiting.never_starts());
        assert_eq!(parse_job_state("nothing here"), None);
        assert_eq!(
            parse_progress("progress 3/10 steps"),
            Some((3, 10, "steps".to_string()))
        );
        assert_eq!(parse_progress("progress of things"), None);
    }

    #[test]
    fn resources_become_sbatch_options_stage_over_defaults() {
        let defaults = Resources {
            partition: Some("gpu".into()),
            time: Some("1:00:00".into()),
            extra_args: vec!["--account=lab".into()],
            ..Resources::default()
        };
        let stage = Resources {
            time: Some("12:00:00".into()),
            gpus: Some(8),
            memory: Some("480G".into()),
            cpus: Some(32),
            extra_args: vec!["--qos=high".into()],
            ..Resources::default()
        };
        assert_eq!(
            sbatch_resource_args(&stage.over(&defaults)),
            [
                "--partition=gpu",
                "--time=12:00:00",
                "--mem=480G",
                "--cpus-per-task=32",
                "--gpus=8",
                "--account=lab",
                "--qos=high"
            ]
        );
        assert_eq!(shell_quote("/a b/it's"), "'/a b/it'\\''s'");
    }
}
