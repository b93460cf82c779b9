//! End-to-end tests of the runner through the real `sheared` binary, with `command` stages that run
//! `/bin/sh -c` scripts, write files and count their own invocations.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const SHEARED: &str = env!("CARGO_BIN_EXE_sheared");

/// A temporary project: recipes, counters and a cache folder.
struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new() -> Project {
        Project {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    /// A `/bin/sh -c` script that counts its invocations in `count_<name>` and then runs `body`.
    fn script(&self, name: &str, body: &str) -> String {
        format!(
            "echo x >> {}/count_{name}; {body}",
            self.dir.path().display()
        )
    }

    /// `sheared run RECIPE` started in the background on this project's cache.
    fn spawn_run(&self, recipe: &Path) -> std::process::Child {
        Command::new(SHEARED)
            .args(["run", recipe.to_str().unwrap()])
            .current_dir(self.dir.path())
            .env("SHEARED_CACHE", self.path("cache"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
    /// `recipes` run by concurrent `sheared run` processes, started together; each must succeed.
    fn run_together(&self, recipes: &[PathBuf]) {
        let children: Vec<_> = recipes
            .iter()
            .map(|recipe| self.spawn_run(recipe))
            .collect();
        for child in children {
            let output = child.wait_with_output().unwrap();
            assert!(output.status.success(), "{}", text(&output.stderr));
        }
    }
    fn count(&self, name: &str) -> usize {
        std::fs::read_to_string(self.path(&format!("count_{name}")))
            .map(|text| text.lines().count())
            .unwrap_or(0)
    }

    fn sheared(&self, args: &[&str]) -> Output {
        Command::new(SHEARED)
            .args(args)
            .current_dir(self.dir.path())
            .env("SHEARED_CACHE", self.path("cache"))
            .env_remove("RUST_LOG")
            .output()
            .expect("run sheared")
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.sheared(args);
        assert!(
            output.status.success(),
            "sheared {args:?} failed:\nstdout:\n{}\nstderr:\n{}",
            text(&output.stdout),
            text(&output.stderr)
        );
        text(&output.stdout) + &text(&output.stderr)
    }

    fn fails(&self, args: &[&str]) -> String {
        let output = self.sheared(args);
        assert!(
            !output.status.success(),
            "sheared {args:?} should have failed:\n{}{}",
            text(&output.stdout),
            text(&output.stderr)
        );
        text(&output.stderr)
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// a → b → c, and a → d. `b` writes its param `X` into its output.
fn chain(project: &Project) -> PathBuf {
    let a = project.script("a", "echo a > {out}/a.txt");
    let b = project.script(
        "b",
        "cat {inputs.a}/a.txt > {out}/b.txt; echo $X >> {out}/b.txt",
    );
    let c = project.script("c", "cat {inputs.b}/b.txt > {out}/c.txt");
    let d = project.script("d", "cat {inputs.a}/a.txt > {out}/d.txt");
    project.write(
        "chain.toml",
        &format!(
            r#"name = "chain"

[stages.a]
kind = "command"
argv = ["/bin/sh", "-c", "{a}"]

[stages.b]
kind = "command"
argv = ["/bin/sh", "-c", "{b}"]
env = {{ X = "1" }}
inputs = {{ a = {{ stage = "a" }} }}

[stages.c]
kind = "command"
argv = ["/bin/sh", "-c", "{c}"]
inputs = {{ b = {{ stage = "b" }} }}

[stages.d]
kind = "command"
argv = ["/bin/sh", "-c", "{d}"]
inputs = {{ a = {{ stage = "a" }} }}
"#
        ),
    )
}

fn events(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

fn stages_with(events: &[serde_json::Value], kind: &str) -> Vec<String> {
    let mut found: Vec<String> = events
        .iter()
        .filter(|event| event["event"] == kind)
        .map(|event| event["stage"].as_str().unwrap_or_default().to_string())
        .collect();
    found.sort();
    found
}

#[test]
fn second_run_executes_nothing() {
    let project = Project::new();
    let recipe = chain(&project);
    let first = project.sheared(&["run", recipe.to_str().unwrap(), "--json"]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert_eq!(
        stages_with(&events(&text(&first.stdout)), "committed"),
        ["a", "b", "c", "d"]
    );
    let second = project.sheared(&["run", recipe.to_str().unwrap(), "--json", "--jobs", "3"]);
    assert!(second.status.success());
    let second = events(&text(&second.stdout));
    assert_eq!(stages_with(&second, "cached"), ["a", "b", "c", "d"]);
    assert!(stages_with(&second, "started").is_empty());
    for name in ["a", "b", "c", "d"] {
        assert_eq!(project.count(name), 1, "stage {name}");
    }
    let plan = project.ok(&["plan", recipe.to_str().unwrap()]);
    assert_eq!(
        plan.lines()
            .filter(|line| line.starts_with("cached"))
            .count(),
        4,
        "{plan}"
    );
    let path = project.ok(&["path", recipe.to_str().unwrap(), "c"]);
    assert_eq!(
        std::fs::read_to_string(Path::new(path.trim()).join("c.txt")).unwrap(),
        "a\n1\n"
    );
}

#[test]
fn changing_a_param_reruns_that_stage_and_downstream_only() {
    let project = Project::new();
    let recipe = chain(&project);
    let recipe = recipe.to_str().unwrap();
    project.ok(&["run", recipe]);
    let plan = project.ok(&["plan", recipe, "--set", "stages.b.env.X=\"2\""]);
    assert!(plan.contains("param env.X: 1 → 2"), "{plan}");
    assert!(plan.contains("depends on `b`"), "{plan}");
    project.ok(&["run", recipe, "--set", "stages.b.env.X=\"2\""]);
    assert_eq!(
        [
            project.count("a"),
            project.count("b"),
            project.count("c"),
            project.count("d")
        ],
        [1, 2, 2, 1]
    );
    // Once b has re-ran with X=3 but c has not, c's key is known and plan explains it through b.
    project.ok(&[
        "run",
        recipe,
        "--set",
        "stages.b.env.X=\"3\"",
        "--only",
        "b",
    ]);
    let plan = project.ok(&["plan", recipe, "--set", "stages.b.env.X=\"3\""]);
    assert!(
        plan.contains(
            "input inputs.b changed because stage b re-ran (upstream: param env.X: 2 → 3)"
        ),
        "{plan}"
    );
    let why = project.ok(&["why", recipe, "c", "--set", "stages.b.env.X=\"3\""]);
    assert!(why.contains("param env.X: 2 → 3"), "{why}");
    // Switching back is free: both versions are cached.
    project.ok(&["run", recipe]);
    assert_eq!(project.count("b"), 3);
}

#[test]
fn identical_output_does_not_rerun_downstream() {
    let project = Project::new();
    let a = project.script("a", "echo same > {out}/a.txt; echo $SEED > /dev/null");
    let b = project.script("b", "cat {inputs.a}/a.txt > {out}/b.txt");
    let recipe = project.write(
        "early.toml",
        &format!(
            "[stages.a]\nkind = \"command\"\nargv = [\"/bin/sh\", \"-c\", \"{a}\"]\nenv = {{ SEED = \"1\" }}\n\n\
             [stages.b]\nkind = \"command\"\nargv = [\"/bin/sh\", \"-c\", \"{b}\"]\ninputs = {{ a = {{ stage = \"a\" }} }}\n"
        ),
    );
    let recipe = recipe.to_str().unwrap();
    project.ok(&["run", recipe]);
    let output = project.sheared(&["run", recipe, "--set", "stages.a.env.SEED=\"2\"", "--json"]);
    assert!(output.status.success());
    let events = events(&text(&output.stdout));
    assert_eq!(stages_with(&events, "committed"), ["a"]);
    assert_eq!(stages_with(&events, "cached"), ["b"]);
    assert_eq!((project.count("a"), project.count("b")), (2, 1));
}

#[test]
fn killed_stage_resumes_from_scratch_and_index_stays_consistent() {
    let project = Project::new();
    let marker = project.path("started");
    let body = format!(
        "if [ -f {{scratch}}/checkpoint ]; then cat {{scratch}}/checkpoint > {{out}}/result.txt; \
         else echo step-1-done > {{scratch}}/checkpoint; touch {}; sleep 5; echo never > {{out}}/result.txt; fi",
        marker.display()
    );
    let script = project.script("slow", &body);
    let recipe = project.write(
        "slow.toml",
        &format!("[stages.slow]\nkind = \"command\"\nargv = [\"/bin/sh\", \"-c\", \"{script}\"]\n"),
    );
    let recipe = recipe.to_str().unwrap();
    let mut child = Command::new(SHEARED)
        .args(["run", recipe])
        .current_dir(project.dir.path())
        .env("SHEARED_CACHE", project.path("cache"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the stage never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let plan = project.ok(&["plan", recipe]);
    assert!(plan.contains("missing"), "{plan}");
    project.ok(&["run", recipe]);
    let path = project.ok(&["path", recipe, "slow"]);
    assert_eq!(
        std::fs::read_to_string(Path::new(path.trim()).join("result.txt")).unwrap(),
        "step-1-done\n"
    );
    assert_eq!(project.count("slow"), 2);
    project.ok(&["verify"]);
}

#[test]
fn corrupted_object_is_found_by_verify_and_recomputed() {
    let project = Project::new();
    let recipe = chain(&project);
    let recipe = recipe.to_str().unwrap();
    project.ok(&["run", recipe]);
    let output = project.ok(&["path", recipe, "c"]);
    let file = Path::new(output.trim()).join("c.txt");
    // Outputs are hard links to read-only objects: corrupt the object in place.
    let object = std::fs::canonicalize(&file).unwrap();
    let mut permissions = std::fs::metadata(&object).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    permissions.set_readonly(false);
    std::fs::set_permissions(&object, permissions).unwrap();
    std::fs::write(&object, b"b\n1\n").unwrap(); // same size, other bytes
    let report = project.fails(&["verify"]);
    let stdout = text(&project.sheared(&["verify"]).stdout);
    assert!(
        report.contains("corrupt") || stdout.contains("corrupt"),
        "{report}{stdout}"
    );
    project.ok(&["run", recipe]);
    // b.txt has the same bytes as c.txt (one object), so both recompute; a and d do not.
    assert_eq!(
        [
            project.count("a"),
            project.count("b"),
            project.count("c"),
            project.count("d")
        ],
        [1, 2, 2, 1]
    );
    let output = project.ok(&["path", recipe, "c"]);
    assert_eq!(
        std::fs::read_to_string(Path::new(output.trim()).join("c.txt")).unwrap(),
        "a\n1\n"
    );
    project.ok(&["verify"]);
}

#[test]
fn concurrent_runs_share_a_stage() {
    let project = Project::new();
    let shared = project.script("shared", "sleep 1; echo shared > {out}/s.txt");
    let mut recipes = Vec::new();
    for name in ["one", "two"] {
        let own = project.script(name, "cat {inputs.s}/s.txt > {out}/own.txt");
        recipes.push(project.write(
            &format!("{name}.toml"),
            &format!(
                "name = \"{name}\"\n[stages.shared]\nkind = \"command\"\nargv = [\"/bin/sh\", \"-c\", \"{shared}\"]\n\n\
                 [stages.own]\nkind = \"command\"\nargv = [\"/bin/sh\", \"-c\", \"{own}\"]\ninputs = {{ s = {{ stage = \"shared\" }} }}\n"
            ),
        ));
    }
    project.run_together(&recipes);
    assert_eq!(project.count("shared"), 1);
    assert_eq!((project.count("one"), project.count("two")), (1, 1));
}

/// Three `sheared run` processes started together on one cache, over recipes that overlap in
/// different ways: every identical stage runs exactly once, whichever process gets it; the others
/// wait on its lease and reuse its output.
#[test]
fn three_concurrent_runs_run_each_identical_stage_once() {
    let project = Project::new();
    let shared = project.script("shared", "sleep 1; echo shared > {out}/s.txt");
    let middle = project.script("middle", "sleep 1; cat {inputs.s}/s.txt > {out}/m.txt");
    let mut recipes = Vec::new();
    for (name, uses_middle) in [("one", true), ("two", true), ("three", false)] {
        let own = project.script(name, "cat {inputs.s}/* > {out}/own.txt");
        let (middle_stage, own_input) = if uses_middle {
            (
                format!(
                    "[stages.middle]\nkind = \"command\"\nargv = [\"/bin/sh\", \"-c\", \"{middle}\"]\ninputs = {{ s = {{ stage = \"shared\" }} }}\n\n"
                ),
                "middle",
            )
        } else {
            (String::new(), "shared")
        };
        recipes.push(project.write(
            &format!("{name}.toml"),
            &format!(
                "name = \"{name}\"\n[stages.shared]\nkind = \"command\"\nargv = [\"/bin/sh\", \"-c\", \"{shared}\"]\n\n\
                 {middle_stage}[stages.own]\nkind = \"command\"\nargv = [\"/bin/sh\", \"-c\", \"{own}\"]\n\
                 inputs = {{ s = {{ stage = \"{own_input}\" }} }}\n"
            ),
        ));
    }
    project.run_together(&recipes);
    assert_eq!(
        [
            project.count("shared"),
            project.count("middle"),
            project.count("one"),
            project.count("two"),
            project.count("three")
        ],
        [1, 1, 1, 1, 1],
        "no stage ran twice"
    );
    project.ok(&["verify"]);
}

/// A process waiting on another's lease takes the stage over when the holder is killed, runs it
/// (resuming from the holder's scratch), and finishes: nothing hangs, nothing runs twice at once.
#[test]
fn a_waiting_run_takes_over_from_a_killed_lease_holder() {
    let project = Project::new();
    let marker = project.path("started");
    let body = format!(
        "if [ -f {{scratch}}/half ]; then echo resumed > {{out}}/r.txt; \
         else touch {{scratch}}/half; touch {}; sleep 30; echo whole > {{out}}/r.txt; fi",
        marker.display()
    );
    let slow = project.script("slow", &body);
    let recipe = project.write(
        "slow.toml",
        &format!("[stages.slow]\nkind = \"command\"\nargv = [\"/bin/sh\", \"-c\", \"{slow}\"]\n"),
    );
    let mut holder = project.spawn_run(&recipe);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the stage never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let waiter = project.spawn_run(&recipe); // finds the lease held and waits
    std::thread::sleep(Duration::from_millis(500));
    holder.kill().unwrap(); // SIGKILL: the lease is left behind with a dead pid
    holder.wait().unwrap();
    // The stage's own `sleep 30` child may outlive the killed runner; the waiter must not wait for it.
    let started = Instant::now();
    let output = waiter.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the waiter waited {:?}",
        started.elapsed()
    );
    let path = project.ok(&["path", recipe.to_str().unwrap(), "slow"]);
    assert_eq!(
        std::fs::read_to_string(Path::new(path.trim()).join("r.txt")).unwrap(),
        "resumed\n"
    );
    assert_eq!(project.count("slow"), 2);
    project.ok(&["verify"]);
}

/// A command sees the paths and settings it needs, not the credentials in `sheared`'s environment,
/// unless the recipe passes one by name; a symbolic link among its outputs fails the stage.
#[test]
fn commands_get_an_allow_listed_environment_and_plain_outputs() {
    let project = Project::new();
    let recipe = project.write(
        "env.toml",
        "[stages.env]\nkind = \"command\"\nargv = [\"/bin/sh\", \"-c\", \"env > {out}/env.txt\"]\n\
         pass_env = [\"MY_PASSED_TOKEN\"]\nenv = { SET_BY_RECIPE = \"1\" }\n\n\
         [stages.link]\nkind = \"command\"\nargv = [\"/bin/sh\", \"-c\", \"ln -s /etc/hostname {out}/host\"]\n",
    );
    let output = Command::new(SHEARED)
        .args(["run", recipe.to_str().unwrap(), "--keep-going"])
        .current_dir(project.dir.path())
        .env("SHEARED_CACHE", project.path("cache"))
        .env("AWS_SECRET_ACCESS_KEY", "do-not-leak")
        .env("MY_PASSED_TOKEN", "wanted")
        .env("PIP_INDEX_URL", "https://mirror.example/simple")
        .output()
        .unwrap();
    let all = text(&output.stdout) + &text(&output.stderr);
    assert!(!output.status.success(), "the link stage fails: {all}");
    assert!(
        all.contains("symbolic link") && all.contains("/etc/hostname"),
        "{all}"
    );
    let path = project.ok(&["path", recipe.to_str().unwrap(), "env"]);
    let env = std::fs::read_to_string(Path::new(path.trim()).join("env.txt")).unwrap();
    for present in [
        "PATH=",
        "SET_BY_RECIPE=1",
        "MY_PASSED_TOKEN=wanted",
        "PIP_INDEX_URL=https://mirror.example/simple",
    ] {
        assert!(env.contains(present), "{present} missing:\n{env}");
    }
    assert!(!env.contains("do-not-leak"), "{env}");
}

#[test]
fn sweep_variants_share_common_stages() {
    let project = Project::new();
    let a = project.script("a", "echo a > {out}/a.txt");
    let b = project.script("b", "echo $X > {out}/b.txt");
    let recipe = project.write(
        "sweep.toml",
        &format!(
            "[stages.a]\nkind = \"command\"\nargv = [\"/bin/sh\", \"-c\", \"{a}\"]\n\n\
             [stages.b]\nkind = \"command\"\nargv = [\"/bin/sh\", \"-c\", \"{b}\"]\nenv = {{ X = \"0\" }}\ninputs = {{ a = {{ stage = \"a\" }} }}\n\n\
             [sweep]\n\"stages.b.env.X\" = [\"1\", \"2\", \"3\"]\n"
        ),
    );
    let recipe = recipe.to_str().unwrap();
    project.ok(&["run", recipe, "--jobs", "2"]);
    assert_eq!((project.count("a"), project.count("b")), (1, 3));
    let plan = project.ok(&["plan", recipe]);
    assert!(plan.contains("b[X=2]"), "{plan}");
    project.ok(&["run", recipe]);
    assert_eq!(project.count("b"), 3);
}

#[test]
fn force_and_only() {
    let project = Project::new();
    let recipe = chain(&project);
    let recipe = recipe.to_str().unwrap();
    project.ok(&["run", recipe, "--only", "b"]);
    assert_eq!(
        [
            project.count("a"),
            project.count("b"),
            project.count("c"),
            project.count("d")
        ],
        [1, 1, 0, 0]
    );
    project.ok(&["run", recipe]);
    project.ok(&["run", recipe, "--force", "b"]);
    assert_eq!(
        [
            project.count("a"),
            project.count("b"),
            project.count("c"),
            project.count("d")
        ],
        [1, 2, 2, 1]
    );
}

#[test]
fn failing_stage_exits_non_zero_with_its_log_tail_and_keep_going_runs_the_rest() {
    let project = Project::new();
    let bad = project.script("bad", "echo something went wrong >&2; exit 3");
    let good = project.script("good", "echo ok > {out}/ok.txt");
    let recipe = project.write(
        "fail.toml",
        &format!(
            "[stages.bad]\nkind = \"command\"\nargv = [\"/bin/sh\", \"-c\", \"{bad}\"]\n\n\
             [stages.after]\nkind = \"command\"\nargv = [\"true\"]\ninputs = {{ x = {{ stage = \"bad\" }} }}\n\n\
             [stages.good]\nkind = \"command\"\nargv = [\"/bin/sh\", \"-c\", \"{good}\"]\n"
        ),
    );
    let recipe = recipe.to_str().unwrap();
    let stderr = project.fails(&["run", recipe, "--keep-going"]);
    assert!(stderr.contains("something went wrong"), "{stderr}");
    assert!(stderr.contains("skipped"), "{stderr}");
    assert_eq!(project.count("good"), 1);
    let plan = project.ok(&["plan", recipe]);
    assert!(plan.contains("failed"), "{plan}");
}

/// Each bad input: (recipe text or setup, command args, expected stderr substrings).
#[test]
fn bad_inputs_give_clear_errors() {
    let project = Project::new();
    let check = |name: &str, recipe: &str, extra: &[&str], expected: &[&str]| {
        let path = project.write(name, recipe);
        let mut args = vec!["run", path.to_str().unwrap()];
        args.extend_from_slice(extra);
        let stderr = project.fails(&args);
        for needle in expected {
            assert!(
                stderr.contains(needle),
                "{name}: expected `{needle}` in:\n{stderr}"
            );
        }
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    };
    check(
        "malformed.toml",
        "[stages.a]\nkind = \"command\"\nargv = [\"true\"\n",
        &[],
        &["malformed.toml:3:", "invalid TOML"],
    );
    check(
        "unknown_key.toml",
        "[stages.a]\nkind = \"command\"\nargv = [\"true\"]\nevn = { A = \"1\" }\n",
        &[],
        &[
            "unknown_key.toml:4:1",
            "unknown field `evn`",
            "did you mean `env`",
        ],
    );
    check(
        "unknown_kind.toml",
        "[stages.a]\nkind = \"comand\"\n",
        &[],
        &[
            "unknown_kind.toml:2:",
            "unknown stage kind `comand`",
            "did you mean `command`",
        ],
    );
    check(
        "missing_stage.toml",
        "[stages.tokenize]\nkind = \"command\"\nargv = [\"true\"]\n[stages.b]\nkind = \"command\"\nargv = [\"true\"]\ninputs = { x = { stage = \"tokenise\" } }\n",
        &[],
        &[
            "missing_stage.toml:7:",
            "stage `tokenise`",
            "did you mean `tokenize`",
        ],
    );
    check(
        "cycle.toml",
        "[stages.a]\nkind = \"command\"\nargv = [\"true\"]\ninputs = { x = { stage = \"b\" } }\n[stages.b]\nkind = \"command\"\nargv = [\"true\"]\ninputs = { x = { stage = \"a\" } }\n",
        &[],
        &["dependency cycle", "a → b → a"],
    );
    project.write("loop_b.toml", "extends = \"loop_a.toml\"\n");
    check(
        "loop_a.toml",
        "extends = \"loop_b.toml\"\n",
        &[],
        &["`extends` cycle", "loop_a.toml → ", "loop_b.toml"],
    );
    check(
        "missing_path.toml",
        "[stages.a]\nkind = \"command\"\nargv = [\"true\"]\ninputs = { data = { path = \"no/such/data\" } }\n",
        &[],
        &["missing_path.toml:4:", "no/such/data does not exist"],
    );
    check(
        "set.toml",
        "[stages.a]\nkind = \"command\"\nargv = [\"true\"]\nenv = { A = \"1\" }\n",
        &["--set", "stages.a.evn.A=2"],
        &[
            "--set stages.a.evn.A=2",
            "`evn` is not a key of `stages.a`",
            "did you mean `env`",
        ],
    );
    // Two recipe files that carry one name.
    let other = project.write(
        "other.toml",
        "name = \"first\"\n[stages.a]\nkind = \"command\"\nargv = [\"false\"]\n",
    );
    check(
        "first.toml",
        "name = \"first\"\n[stages.a]\nkind = \"command\"\nargv = [\"true\"]\n",
        &[other.to_str().unwrap()],
        &["named `first`", "first.toml", "other.toml", "its own `name"],
    );
    // A cache that cannot be written.
    let blocked = project.write("blocked", "a file where the cache folder should be");
    let recipe = project.write(
        "ok.toml",
        "[stages.a]\nkind = \"command\"\nargv = [\"true\"]\n",
    );
    let output = project.sheared(&[
        "run",
        recipe.to_str().unwrap(),
        "--cache",
        blocked.join("cache").to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("cache"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn extends_merges_and_dag_renders() {
    let project = Project::new();
    std::fs::create_dir_all(project.path("pipelines")).unwrap();
    project.write(
        "pipelines/base.toml",
        "name = \"base\"\n[stages.a]\nkind = \"command\"\nargv = [\"true\"]\nenv = { A = \"1\", B = \"1\" }\n\
         [stages.b]\nkind = \"command\"\nargv = [\"true\"]\ninputs = { a = { stage = \"a\" } }\n",
    );
    let recipe = project.write(
        "child.toml",
        "extends = \"pipelines/base.toml\"\nname = \"child\"\n[stages.a.env]\nB = \"2\"\n",
    );
    let output = project.sheared(&["dag", recipe.to_str().unwrap(), "--format", "dot"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let dot = text(&output.stdout);
    assert!(dot.contains("digraph") && dot.contains("-> n"), "{dot}");
    let output = project.sheared(&["plan", recipe.to_str().unwrap(), "--json"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let plan: serde_json::Value = serde_json::from_str(&text(&output.stdout)).unwrap();
    assert_eq!(plan["stages"].as_array().unwrap().len(), 2);
}

#[test]
fn gc_keeps_what_live_recipes_use_and_reclaims_the_rest() {
    let project = Project::new();
    let recipe = chain(&project);
    let recipe = recipe.to_str().unwrap();
    project.ok(&["run", recipe, "--set", "stages.b.env.X=\"old\""]);
    project.ok(&["run", recipe]);
    let dry = project.ok(&["gc", recipe, "--keep-last", "0", "--dry-run"]);
    assert!(dry.contains("would remove 2 manifest(s)"), "{dry}");
    let done = project.ok(&["gc", recipe, "--keep-last", "0"]);
    assert!(
        done.contains("removed 2 manifest(s)") && done.contains("reclaimed"),
        "{done}"
    );
    let output = project.sheared(&["run", recipe, "--json"]);
    assert!(output.status.success());
    assert_eq!(
        stages_with(&events(&text(&output.stdout)), "cached"),
        ["a", "b", "c", "d"]
    );
    project.ok(&["run", recipe, "--set", "stages.b.env.X=\"old\""]);
    assert_eq!(project.count("b"), 3);
    project.ok(&["verify"]);
}

#[test]
fn ctrl_c_cancels_keeps_scratch_and_the_next_run_resumes() {
    let project = Project::new();
    let marker = project.path("started");
    let body = format!(
        "if [ -f {{scratch}}/checkpoint ]; then cat {{scratch}}/checkpoint > {{out}}/result.txt; \
         else echo half-way > {{scratch}}/checkpoint; touch {}; sleep 20; fi",
        marker.display()
    );
    let script = project.script("slow", &body);
    let recipe = project.write(
        "slow.toml",
        &format!("[stages.slow]\nkind = \"command\"\nargv = [\"/bin/sh\", \"-c\", \"{script}\"]\n"),
    );
    let recipe = recipe.to_str().unwrap();
    let child = Command::new(SHEARED)
        .args(["run", recipe])
        .current_dir(project.dir.path())
        .env("SHEARED_CACHE", project.path("cache"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the stage never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let plan = project.ok(&["plan", recipe]);
    assert!(plan.starts_with("running"), "{plan}");
    let started = Instant::now();
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) },
        0
    );
    let output = child.wait_with_output().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "cancelling took {:?}",
        started.elapsed()
    );
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("interrupted"),
        "{}",
        text(&output.stderr)
    );
    project.ok(&["run", recipe]);
    let path = project.ok(&["path", recipe, "slow"]);
    assert_eq!(
        std::fs::read_to_string(Path::new(path.trim()).join("result.txt")).unwrap(),
        "half-way\n"
    );
}

#[test]
fn one_run_of_two_recipes_runs_their_shared_stage_once() {
    let project = Project::new();
    let shared = project.script("shared", "echo shared > {out}/s.txt");
    let mut recipes = Vec::new();
    for name in ["one", "two"] {
        let own = project.script(name, "cat {inputs.s}/s.txt > {out}/own.txt");
        recipes.push(project.write(
            &format!("{name}.toml"),
            &format!(
                "name = \"{name}\"\n[stages.shared]\nkind = \"command\"\nargv = [\"/bin/sh\", \"-c\", \"{shared}\"]\n\n\
                 [stages.{name}]\nkind = \"command\"\nargv = [\"/bin/sh\", \"-c\", \"{own}\"]\ninputs = {{ s = {{ stage = \"shared\" }} }}\n"
            ),
        ));
    }
    project.ok(&[
        "run",
        recipes[0].to_str().unwrap(),
        recipes[1].to_str().unwrap(),
        "--jobs",
        "2",
    ]);
    assert_eq!(
        [
            project.count("shared"),
            project.count("one"),
            project.count("two")
        ],
        [1, 1, 1]
    );
    // Each recipe sees the shared stage as its own in `plan`.
    let plan = project.ok(&["plan", recipes[1].to_str().unwrap()]);
    assert_eq!(
        plan.lines()
            .filter(|line| line.starts_with("cached"))
            .count(),
        2,
        "{plan}"
    );
}

#[test]
fn a_missing_object_is_recomputed_on_reuse() {
    let project = Project::new();
    let recipe = chain(&project);
    let recipe = recipe.to_str().unwrap();
    project.ok(&["run", recipe]);
    let hex = blake3::hash(b"a\n").to_hex().to_string();
    let object = project
        .path("cache")
        .join("objects")
        .join(&hex[..2])
        .join(&hex);
    assert!(object.exists(), "{}", object.display());
    // a.txt and d.txt are both "a\n": one object. `a` is looked up first, found broken and
    // recomputed, which writes the object again; so `d` (and b, c: same input digest) are intact.
    std::fs::remove_file(&object).unwrap();
    project.ok(&["run", recipe]);
    assert_eq!(
        [
            project.count("a"),
            project.count("b"),
            project.count("c"),
            project.count("d")
        ],
        [2, 1, 1, 1]
    );
    project.ok(&["verify"]);
}

#[test]
fn a_missing_upstream_file_fails_the_stage_and_plan_says_why() {
    let project = Project::new();
    let recipe = project.write(
        "file.toml",
        "[stages.a]\nkind = \"command\"\nargv = [\"/bin/sh\", \"-c\", \"echo 1 > {out}/one.txt\"]\n\
         [stages.b]\nkind = \"command\"\nargv = [\"cat\", \"{inputs.x}\"]\ninputs = { x = { stage = \"a\", file = \"two.txt\" } }\n",
    );
    let recipe = recipe.to_str().unwrap();
    let stderr = project.fails(&["run", recipe]);
    assert!(
        stderr.contains(
            "wants file `two.txt` of stage `a`, which has no such file or folder (it has: one.txt)"
        ),
        "{stderr}"
    );
    let plan = project.ok(&["plan", recipe]);
    assert!(plan.contains("no such file"), "{plan}");
}

#[test]
fn the_example_recipe_runs_and_records_metrics() {
    let project = Project::new();
    let recipe = concat!(env!("CARGO_MANIFEST_DIR"), "/recipes/example-commands.toml");
    project.ok(&["run", recipe]);
    let output = project.sheared(&["plan", recipe, "--json"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let plan: serde_json::Value = serde_json::from_str(&text(&output.stdout)).unwrap();
    let top = plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|stage| stage["id"] == "top")
        .unwrap()
        .clone();
    assert_eq!(top["status"], "cached");
    assert!(
        top["metrics"]["distinct_words"].as_u64().unwrap() > 10,
        "{top}"
    );
    let path = project.ok(&["path", recipe, "top"]);
    let lines = std::fs::read_to_string(Path::new(path.trim()).join("top.txt")).unwrap();
    assert_eq!(
        lines.lines().count(),
        3,
        "TOP = 3 in the recipe overrides the pipeline's 5: {lines}"
    );
    let plan = project.ok(&["plan", recipe, "--set", "stages.top.env.TOP=\"4\""]);
    assert!(plan.contains("param env.TOP: 3 → 4"), "{plan}");
}

#[test]
fn glob_inputs_are_hashed_by_their_matches() {
    let project = Project::new();
    std::fs::create_dir_all(project.path("texts")).unwrap();
    project.write("texts/a.txt", "one\n");
    project.write("texts/b.txt", "two\n");
    let count = project.script("cat", "cat {inputs.t} > /dev/null; echo ok > {out}/ok.txt");
    let recipe = project.write(
        "glob.toml",
        &format!(
            "[stages.cat]\nkind = \"command\"\nargv = [\"/bin/sh\", \"-c\", \"{count}\"]\ninputs = {{ t = {{ path = \"texts/*.txt\" }} }}\n"
        ),
    );
    let recipe = recipe.to_str().unwrap();
    project.ok(&["run", recipe]);
    project.ok(&["run", recipe]);
    assert_eq!(project.count("cat"), 1);
    project.write("texts/c.txt", "three\n");
    let plan = project.ok(&["plan", recipe]);
    assert!(
        plan.contains("input inputs.t changed: the content of"),
        "{plan}"
    );
    project.ok(&["run", recipe]);
    assert_eq!(project.count("cat"), 2);
    let missing = project.write(
        "nomatch.toml",
        "[stages.a]\nkind = \"command\"\nargv = [\"true\"]\ninputs = { t = { path = \"texts/*.md\" } }\n",
    );
    let stderr = project.fails(&["run", missing.to_str().unwrap()]);
    assert!(
        stderr.contains("nomatch.toml:4:")
            && stderr.contains("glob")
            && stderr.contains("texts/*.md matches no file"),
        "{stderr}"
    );
}

/// `{ stage = "a", file = "sub" }` takes a folder inside an upstream output: the stage sees the
/// folder, and its key follows the files under it only (a change elsewhere in `a` is cut off).
#[test]
fn a_folder_inside_an_upstream_output_is_an_input() {
    let project = Project::new();
    let a = project.script(
        "a",
        "mkdir -p {out}/sub/deep && echo x > {out}/sub/x.txt && echo $Y > {out}/sub/deep/y.txt && echo $OTHER > {out}/other.txt",
    );
    let b = project.script(
        "b",
        "cat {inputs.sub}/x.txt {inputs.sub}/deep/y.txt > {out}/b.txt",
    );
    project.write(
        "folder.toml",
        &format!(
            r#"name = "folder"

[stages.a]
kind = "command"
argv = ["/bin/sh", "-c", "{a}"]
env = {{ Y = "1", OTHER = "1" }}

[stages.b]
kind = "command"
argv = ["/bin/sh", "-c", "{b}"]
inputs = {{ sub = {{ stage = "a", file = "sub" }} }}
"#
        ),
    );
    project.ok(&["run", "folder.toml"]);
    let out = PathBuf::from(project.ok(&["path", "folder.toml", "b"]).trim());
    assert_eq!(
        std::fs::read_to_string(out.join("b.txt")).unwrap(),
        "x\n1\n"
    );
    assert_eq!((project.count("a"), project.count("b")), (1, 1));

    // Only a file outside `sub` changes: `b`'s key is the same, so it is not rerun.
    project.ok(&["run", "folder.toml", "--set", "stages.a.env.OTHER=\"2\""]);
    assert_eq!((project.count("a"), project.count("b")), (2, 1));
    // A file inside `sub` changes: `b` reruns.
    project.ok(&["run", "folder.toml", "--set", "stages.a.env.Y=\"2\""]);
    assert_eq!((project.count("a"), project.count("b")), (3, 2));

    // A name that is neither a file nor a folder of `a` is refused with what `a` has.
    let message = project.fails(&[
        "run",
        "folder.toml",
        "--set",
        "stages.b.inputs.sub={ stage = \"a\", file = \"subs\" }",
    ]);
    assert!(
        message.contains("no such file or folder") && message.contains("sub/x.txt"),
        "{message}"
    );
}
