//! `sheared run --executor slurm` against a real Slurm: `scripts/slurm-local.sh start` gives this
//! machine a one-node cluster (slurmctld, slurmd, munge on localhost), which `.ci/run` starts.
//!
//! Without a Slurm that answers, each test prints why and passes, unless `SHEARED_REQUIRE_SLURM=1`
//! (set by `.ci/run` after starting the cluster), which makes a missing Slurm a failure.
//!
//! Every `sbatch` goes through a shim on `PATH` that logs its arguments, so the tests count
//! submissions: a cached rerun must submit nothing, a killed coordinator's jobs must be adopted,
//! not submitted again.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{CORPUS_TOKENS_STAGE, SHEARED, text, write_corpus};

/// Whether a Slurm controller answers here; panics when it must (`SHEARED_REQUIRE_SLURM=1`).
fn slurm_ready(test: &str) -> bool {
    let answers = Command::new("sinfo")
        .args(["-h", "-o", "%T"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !answers {
        assert!(
            std::env::var("SHEARED_REQUIRE_SLURM").as_deref() != Ok("1"),
            "SHEARED_REQUIRE_SLURM=1 but Slurm does not answer (`sinfo` failed): start it with \
             scripts/slurm-local.sh start"
        );
        eprintln!("{test}: skipped, no Slurm answers here (scripts/slurm-local.sh start)");
    }
    answers
}

/// A test folder: the corpus, the sweep recipe, the counters and the `sbatch` shim.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    /// Four variants of a `make` command stage (each appends a line to its counter, fails while its
    /// flag file exists, sleeps the seconds in the `pause` file), all reading one shared `tokens`
    /// stage (a built-in kind).
    fn new(pause_s: u32) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write_corpus(root);
        for folder in ["counters", "flags", "bin"] {
            std::fs::create_dir_all(root.join(folder)).unwrap();
        }
        let real_sbatch = String::from_utf8(
            Command::new("sh")
                .args(["-c", "command -v sbatch"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let shim = root.join("bin/sbatch");
        std::fs::write(
            &shim,
            format!(
                "#!/bin/sh\necho \"$@\" >> '{}'\nexec '{}' \"$@\"\n",
                root.join("submissions.txt").display(),
                real_sbatch.trim()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&shim, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let script = "echo run >> COUNTERS/make-$VARIANT; \
                      if [ -e FLAGS/fail-$VARIANT ]; then echo failing on purpose >&2; exit 3; fi; \
                      sleep $(cat PAUSE); ls {inputs.tokens} > {out}/listing.txt; echo $VARIANT > {out}/variant.txt"
            .replace("COUNTERS", &root.join("counters").to_string_lossy())
            .replace("FLAGS", &root.join("flags").to_string_lossy())
            .replace("PAUSE", &root.join("pause").to_string_lossy());
        std::fs::write(root.join("pause"), pause_s.to_string()).unwrap();
        let recipe = format!(
            "name = \"sweep\"\n{CORPUS_TOKENS_STAGE}\n\
             [stages.make]\nkind = \"command\"\nargv = [\"/bin/sh\", \"-c\", {script:?}]\n\
             env = {{ VARIANT = \"a\" }}\ninputs = {{ tokens = {{ stage = \"tokens\" }} }}\n\
             resources = {{ cpus = 1, time = \"10:00\" }}\n\n\
             [sweep]\n\"stages.make.env.VARIANT\" = [\"a\", \"b\", \"c\", \"d\"]\n"
        );
        std::fs::write(root.join("sweep.toml"), recipe).unwrap();
        Setup { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn command(&self, extra: &[&str]) -> Command {
        let mut command = Command::new(SHEARED);
        command
            .args([
                "run",
                "sweep.toml",
                "--executor",
                "slurm",
                "--jobs",
                "4",
                "--json",
            ])
            .args(extra)
            .current_dir(self.root())
            .env("SHEARED_CACHE", self.root().join("cache"))
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    self.root().join("bin").display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .env_remove("RUST_LOG");
        command
    }

    fn run(&self, extra: &[&str]) -> Output {
        self.command(extra).output().unwrap()
    }

    fn submissions(&self) -> usize {
        std::fs::read_to_string(self.root().join("submissions.txt"))
            .unwrap_or_default()
            .lines()
            .count()
    }

    /// How many times variant `variant`'s command ran.
    fn runs_of(&self, variant: &str) -> usize {
        std::fs::read_to_string(self.root().join(format!("counters/make-{variant}")))
            .unwrap_or_default()
            .lines()
            .count()
    }

    fn set_pause(&self, seconds: u32) {
        std::fs::write(self.root().join("pause"), seconds.to_string()).unwrap();
    }

    /// Blocks until some variant's command has started (its job runs).
    fn wait_for_a_running_make(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while ["a", "b", "c", "d"]
            .iter()
            .all(|variant| self.runs_of(variant) == 0)
        {
            assert!(Instant::now() < deadline, "no make job started in 120 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts a coordinator and SIGKILLs it once a `make` job's command has started, leaving its
    /// jobs to Slurm.
    fn kill_the_coordinator_once_a_make_runs(&self) {
        let mut coordinator = self
            .command(&[])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.wait_for_a_running_make();
        coordinator.kill().unwrap(); // SIGKILL
        coordinator.wait().unwrap();
    }

    /// Runs the sweep again: it succeeds, every variant's command has run exactly once in all, and
    /// there were five submissions in all (`tokens` and four `make`s), `why` otherwise.
    fn rerun_runs_every_stage_once(&self, why: &str) {
        let resumed = self.run(&[]);
        assert!(resumed.status.success(), "{}", text(&resumed));
        for variant in ["a", "b", "c", "d"] {
            assert_eq!(self.runs_of(variant), 1, "variant {variant} ran once");
        }
        assert_eq!(self.submissions(), 5, "{why}");
    }

    /// The Slurm job ids recorded under this cache's `jobs/` (jobs not yet committed).
    fn recorded_jobs(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.root().join("cache/jobs")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| std::fs::read(entry.path().join("job.json")).ok())
            .filter_map(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .filter_map(|record| record["job_id"].as_str().map(str::to_string))
            .collect()
    }

    fn flag(&self, variant: &str) -> PathBuf {
        self.root().join(format!("flags/fail-{variant}"))
    }
}

/// The NDJSON events of a run: (event, stage) and the whole record.
fn events(output: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

fn stages_with(events: &[serde_json::Value], event: &str) -> Vec<String> {
    let mut stages: Vec<String> = events
        .iter()
        .filter(|record| record["event"] == event)
        .map(|record| record["stage"].as_str().unwrap_or_default().to_string())
        .collect();
    stages.sort();
    stages
}

#[test]
fn a_sweep_runs_as_slurm_jobs_reports_a_failing_job_resumes_and_reruns_cached() {
    if !slurm_ready("a_sweep_runs_as_slurm_jobs") {
        return;
    }
    let setup = Setup::new(0);
    std::fs::write(setup.flag("c"), "").unwrap();

    // 1. Every stage is a job; variant c fails in its job and is reported with its log.
    let first = setup.run(&["--keep-going"]);
    assert!(!first.status.success(), "{}", text(&first));
    let records = events(&first);
    assert_eq!(
        stages_with(&records, "committed"),
        [
            "make[VARIANT=a]",
            "make[VARIANT=b]",
            "make[VARIANT=d]",
            "tokens"
        ],
        "{}",
        text(&first)
    );
    let failed: Vec<&serde_json::Value> = records
        .iter()
        .filter(|record| record["event"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{}", text(&first));
    assert_eq!(failed[0]["stage"], "make[VARIANT=c]");
    let tail = failed[0]["log_tail"].as_str().unwrap_or_default();
    assert!(tail.contains("failing on purpose"), "{tail}");
    assert_eq!(setup.submissions(), 5, "one job per stage");
    for variant in ["a", "b", "c", "d"] {
        assert_eq!(setup.runs_of(variant), 1, "variant {variant}");
    }
    // The outputs are the job's: the built-in stage's files reached the command stages.
    let path = Command::new(SHEARED)
        .args(["path", "sweep.toml", "make[VARIANT=a]"])
        .current_dir(setup.root())
        .env("SHEARED_CACHE", setup.root().join("cache"))
        .output()
        .unwrap();
    let folder = PathBuf::from(String::from_utf8_lossy(&path.stdout).trim());
    let listing = std::fs::read_to_string(folder.join("listing.txt")).unwrap();
    assert!(listing.contains("manifest.json"), "{listing}");
    assert_eq!(
        std::fs::read_to_string(folder.join("variant.txt")).unwrap(),
        "a\n"
    );

    // 2. Fixed, the run resumes: only variant c is submitted again.
    std::fs::remove_file(setup.flag("c")).unwrap();
    let second = setup.run(&[]);
    assert!(second.status.success(), "{}", text(&second));
    assert_eq!(
        stages_with(&events(&second), "committed"),
        ["make[VARIANT=c]"]
    );
    assert_eq!(setup.submissions(), 6);
    assert_eq!(setup.runs_of("c"), 2);

    // 3. Everything cached: nothing is submitted.
    let third = setup.run(&[]);
    assert!(third.status.success(), "{}", text(&third));
    assert_eq!(stages_with(&events(&third), "cached").len(), 5);
    assert_eq!(setup.submissions(), 6, "a cached rerun submits nothing");
    assert!(
        !setup.root().join("cache/jobs").exists()
            || std::fs::read_dir(setup.root().join("cache/jobs"))
                .unwrap()
                .next()
                .is_none(),
        "job folders are removed on commit"
    );
}

#[test]
fn a_coordinator_killed_mid_sweep_adopts_its_jobs_instead_of_running_them_twice() {
    if !slurm_ready("a_coordinator_killed_mid_sweep") {
        return;
    }
    let setup = Setup::new(4);
    setup.kill_the_coordinator_once_a_make_runs();
    let submitted_before = setup.submissions();
    // `plan` shows the jobs the dead coordinator left behind.
    let plan = Command::new(SHEARED)
        .args(["plan", "sweep.toml"])
        .current_dir(setup.root())
        .env("SHEARED_CACHE", setup.root().join("cache"))
        .output()
        .unwrap();
    let shown = text(&plan);
    assert!(shown.contains("- slurm job "), "{shown}");

    setup.rerun_runs_every_stage_once("one submission per stage, killed or not");
    assert!(
        submitted_before >= 2,
        "the kill came after the tokens job and a make job"
    );
    let again = setup.run(&[]);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(setup.submissions(), 5);
}

/// A job that finished after its coordinator was killed, with a result nobody committed, is adopted
/// from its result by the next run: not submitted again, its command not run again.
#[test]
fn a_job_that_finished_after_its_coordinator_died_is_adopted_not_rerun() {
    if !slurm_ready("a_job_that_finished_after_its_coordinator_died") {
        return;
    }
    let setup = Setup::new(1);
    setup.kill_the_coordinator_once_a_make_runs();
    let left = setup.recorded_jobs();
    assert!(!left.is_empty(), "the killed coordinator left no job");
    // Let every job it left finish: nothing is queued or running for them any more.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let queued = Command::new("squeue")
            .args(["-h", "-o", "%i", "-j", &left.join(",")])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&queued.stdout).trim().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the left jobs did not finish in 120 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let submitted_before = setup.submissions();
    let finished: Vec<&str> = ["a", "b", "c", "d"]
        .into_iter()
        .filter(|variant| setup.runs_of(variant) == 1)
        .collect();
    assert!(
        !finished.is_empty(),
        "no make job finished before the rerun"
    );

    setup.rerun_runs_every_stage_once(&format!(
        "the finished jobs ({finished:?}) were adopted, not submitted again ({submitted_before} before the rerun)"
    ));
}

#[test]
fn slurm_refusals_are_clear_errors_naming_the_stage() {
    if !slurm_ready("slurm_refusals_are_clear_errors") {
        return;
    }
    let setup = Setup::new(0);
    // A partition that does not exist: refused before anything is submitted.
    let output = setup.run(&["--set", "settings.slurm.partition=\"nope\""]);
    assert!(!output.status.success());
    let message = text(&output);
    assert!(
        message.contains("Slurm partition `nope` does not exist"),
        "{message}"
    );
    assert_eq!(setup.submissions(), 0);

    // Memory no node has: Slurm's own refusal, naming the stage.
    let output = setup.run(&[
        "--only",
        "tokens",
        "--set",
        "stages.tokens.resources={ memory = \"100000G\" }",
    ]);
    assert!(!output.status.success());
    let message = text(&output);
    assert!(
        message.contains("stage `tokens`: Slurm refused the job")
            && message.contains("sbatch: error"),
        "{message}"
    );

    // More CPUs than the node has: Slurm queues it forever; the runner cancels it and says why.
    let output = setup.run(&[
        "--only",
        "tokens",
        "--set",
        "stages.tokens.resources={ cpus = 4096 }",
    ]);
    assert!(!output.status.success());
    let message = text(&output);
    assert!(
        message.contains("Slurm will never start job") || message.contains("Slurm refused the job"),
        "{message}"
    );
    // Nothing was committed by the refused attempts; a plain run afterwards computes everything.
    let output = setup.run(&[]);
    assert!(output.status.success(), "{}", text(&output));
}

/// SIGTERM (or Ctrl-C) of the coordinator cancels its jobs (`scancel`) and keeps nothing partial;
/// running again finishes the sweep.
#[test]
fn sigterm_of_the_coordinator_cancels_its_jobs() {
    if !slurm_ready("sigterm_of_the_coordinator_cancels_its_jobs") {
        return;
    }
    let setup = Setup::new(60);
    let coordinator = setup
        .command(&[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    setup.wait_for_a_running_make();
    let jobs = setup.recorded_jobs();
    assert!(!jobs.is_empty());
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(coordinator.id() as libc::pid_t, libc::SIGTERM) };
    let clock = Instant::now();
    let output = coordinator.wait_with_output().unwrap();
    assert!(!output.status.success());
    assert!(
        clock.elapsed() < Duration::from_secs(50),
        "the coordinator stopped its 60 s jobs instead of waiting for them: {:?}",
        clock.elapsed()
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("interrupted"), "{stderr}");
    for job in &jobs {
        let state = Command::new("scontrol")
            .args(["show", "job", "-o", job])
            .output()
            .unwrap();
        let state = String::from_utf8_lossy(&state.stdout);
        assert!(
            !state.contains("JobState=RUNNING") && !state.contains("JobState=PENDING"),
            "job {job} still alive: {state}"
        );
    }
    setup.set_pause(0);
    let resumed = setup.run(&[]);
    assert!(resumed.status.success(), "{}", text(&resumed));
    for variant in ["a", "b", "c", "d"] {
        assert!(setup.runs_of(variant) >= 1, "variant {variant}");
    }
}
