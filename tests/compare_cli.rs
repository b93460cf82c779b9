//! `sheared compare` on a sweep run through the real binary, with `command` stages that write
//! `metrics.json` / `metrics.jsonl` like the train and eval stages do.

use std::path::Path;
use std::process::{Command, Output};

const SHEARED: &str = env!("CARGO_BIN_EXE_sheared");

fn sheared(dir: &Path, args: &[&str]) -> Output {
    Command::new(SHEARED)
        .args(args)
        .current_dir(dir)
        .env("SHEARED_CACHE", dir.join("cache"))
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn ok(dir: &Path, args: &[&str]) -> (String, String) {
    let output = sheared(dir, args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    );
    assert!(
        output.status.success(),
        "sheared {args:?} failed:\n{stdout}\n{stderr}"
    );
    (stdout, stderr)
}

fn write_project(dir: &Path) {
    let script = |name: &str, body: &str| std::fs::write(dir.join(name), body).unwrap();
    script("prep.sh", "echo prepared > \"$1/prep.txt\"\n");
    script(
        "train.sh",
        "out=$1\nfor s in 1 2 3 4; do\n  w=$((s * LR))\n  \
         echo \"{\\\"step\\\": $s, \\\"tokens\\\": $((s * 100)), \\\"loss\\\": $((10 - s * LR)), \\\"domain_weights\\\": {\\\"web\\\": 0.$w, \\\"code\\\": 0.5}, \\\"eval_losses\\\": {\\\"web\\\": $((9 - s))}}\" >> \"$out/metrics.jsonl\"\n\
         done\necho \"{\\\"tokens\\\": 400}\" > \"$out/metrics.json\"\necho $LR > \"$out/lr.txt\"\n",
    );
    script(
        "eval.sh",
        "lr=$(cat \"$2/lr.txt\")\n\
         echo \"{\\\"domains\\\": {\\\"web\\\": {\\\"loss\\\": 3.$lr}}, \\\"tasks\\\": {\\\"arc\\\": {\\\"acc\\\": 0.$lr, \\\"acc_norm\\\": 0.5}}, \
         \\\"parameters\\\": {\\\"total\\\": 1000, \\\"non_embedding\\\": 600}, \\\"tokens_upstream\\\": 400}\" > \"$1/metrics.json\"\n",
    );
    let d = dir.display();
    let recipe = format!(
        "name = \"ablation\"\n\n\
         [stages.prep]\nkind = \"command\"\nargv = [\"/bin/sh\", \"{d}/prep.sh\", \"{{out}}\"]\n\n\
         [stages.train]\nkind = \"command\"\nargv = [\"/bin/sh\", \"{d}/train.sh\", \"{{out}}\"]\nenv = {{ LR = \"1\" }}\ninputs = {{ prep = {{ stage = \"prep\" }} }}\n\n\
         [stages.eval]\nkind = \"command\"\nargv = [\"/bin/sh\", \"{d}/eval.sh\", \"{{out}}\", \"{{inputs.model}}\"]\ninputs = {{ model = {{ stage = \"train\" }} }}\n\n\
         [sweep]\n\"stages.train.env.LR\" = [\"1\", \"2\"]\n"
    );
    std::fs::write(dir.join("ablation.toml"), recipe).unwrap();
}

#[test]
fn compare_a_sweep_in_every_format_with_plots() {
    let project = tempfile::tempdir().unwrap();
    let dir = project.path();
    write_project(dir);

    let before = sheared(dir, &["compare", "ablation.toml"]);
    assert!(!before.status.success());
    assert!(String::from_utf8_lossy(&before.stderr).contains("run the recipes first"));

    ok(dir, &["run", "ablation.toml"]);
    let (table, _) = ok(dir, &["compare", "ablation.toml"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("variant")
            && lines[0].contains("stages.train.env.LR")
            && lines[0].contains("loss.web"),
        "{table}"
    );
    assert!(
        !lines[0].contains("stages.prep"),
        "only differing parameters are columns:\n{table}"
    );
    assert!(lines[2].contains("3.2000 (+0.1000)"), "{table}");
    assert!(table.contains("reused: prep"), "{table}");

    let (csv, _) = ok(dir, &["compare", "ablation.toml", "--format", "csv"]);
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(
        csv.lines().next().unwrap().contains("delta.arc.acc"),
        "{csv}"
    );
    let (json, _) = ok(dir, &["compare", "ablation.toml", "--format", "json"]);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["rows"].as_array().unwrap().len(), 2);
    assert_eq!(value["shared_by_all"], serde_json::json!(["prep"]));
    let (md, stderr) = ok(
        dir,
        &[
            "compare",
            "ablation.toml",
            "--format",
            "md",
            "--plots",
            "plots",
        ],
    );
    assert!(md.starts_with("| variant |"), "{md}");
    assert!(stderr.contains("plot files"), "{stderr}");
    for name in [
        "loss.svg",
        "loss.png",
        "eval_loss.svg",
        "domain_weights.png",
    ] {
        assert!(
            dir.join("plots").join(name).is_file(),
            "{name} missing; {stderr}"
        );
    }
}

/// Ablations kept one per file: `lr2.toml` extends `base.toml` and changes one value. `run` and
/// `compare` take both files; each is its own namespace (stages it changes are its own nodes), and
/// what they share runs once.
#[test]
fn compare_across_recipe_files_that_extend_one_base() {
    let project = tempfile::tempdir().unwrap();
    let dir = project.path();
    write_project(dir);
    let sweep = std::fs::read_to_string(dir.join("ablation.toml")).unwrap();
    let base = sweep
        .split("[sweep]")
        .next()
        .unwrap()
        .replace("name = \"ablation\"", "name = \"base\"");
    std::fs::write(dir.join("base.toml"), base).unwrap();
    std::fs::write(
        dir.join("lr2.toml"),
        "extends = \"base.toml\"\n[stages.train]\nenv = { LR = \"2\" }\n",
    )
    .unwrap();

    let (events, _) = ok(dir, &["run", "base.toml", "lr2.toml", "--json"]);
    let committed: Vec<String> = events
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["event"] == "committed")
        .map(|event| event["stage"].as_str().unwrap().to_string())
        .collect();
    let mut sorted = committed.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "eval[base]",
            "eval[lr2]",
            "prep",
            "train[base]",
            "train[lr2]"
        ],
        "prep once, the rest per recipe"
    );

    let (table, stderr) = ok(dir, &["compare", "base.toml", "lr2.toml"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].contains("stages.train.env.LR"), "{table}");
    assert!(
        lines[1].starts_with("base") && lines[2].starts_with("lr2"),
        "{table}"
    );
    assert!(lines[2].contains("3.2000 (+0.1000)"), "{table}");
    assert!(table.contains("reused: prep"), "{table}\n{stderr}");
    // A second run finds everything cached, and `plan` shows the two files' nodes the same way.
    let (events, _) = ok(dir, &["run", "base.toml", "lr2.toml", "--json"]);
    assert!(!events.contains("\"committed\""), "{events}");
    let (plan, _) = ok(dir, &["plan", "base.toml", "lr2.toml"]);
    assert!(plan.contains("train[lr2]"), "{plan}");
    assert_eq!(
        plan.lines()
            .filter(|line| line.starts_with("cached"))
            .count(),
        5,
        "{plan}"
    );
}

/// The Chromium binary on PATH, if any; panics when `SHEARED_REQUIRE_CHROMIUM=1` and there is none.
fn chromium() -> Option<String> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|name| {
            Command::new("sh")
                .args(["-c", &format!("command -v {name}")])
                .output()
                .is_ok_and(|output| output.status.success())
        })
        .map(str::to_string);
    if found.is_none() {
        assert!(
            std::env::var("SHEARED_REQUIRE_CHROMIUM").as_deref() != Ok("1"),
            "SHEARED_REQUIRE_CHROMIUM=1 but no chromium on PATH (apt-get install chromium)"
        );
        eprintln!("no chromium on PATH: the page is checked as text only");
    }
    found
}

/// `sheared report` writes one self-contained page (no script, no external resource) with the
/// comparison, the stage graph, every stage's status and the plots; headless Chromium renders it
/// without console errors.
#[test]
fn report_is_one_self_contained_page_a_browser_renders() {
    let project = tempfile::tempdir().unwrap();
    let dir = project.path();
    write_project(dir);
    ok(dir, &["run", "ablation.toml"]);
    let (_, stderr) = ok(dir, &["report", "ablation.toml", "--out", "report.html"]);
    assert!(stderr.contains("wrote report.html"), "{stderr}");
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    for forbidden in ["<script", "<link", " src=", "url(http", "@import"] {
        assert!(!html.contains(forbidden), "the page has `{forbidden}`");
    }
    assert!(html.contains("<table class=\"comparison\">"));
    assert_eq!(html.matches("<tr class=\"baseline\">").count(), 1);
    assert_eq!(html.matches("<tr class=\"variant\">").count(), 1);
    // prep, train and eval for each of the two variants, prep shared: five stages, four edges.
    assert_eq!(html.matches("<g class=\"node status-cached\"").count(), 5);
    assert_eq!(html.matches("class=\"edge\"").count(), 4);
    assert_eq!(
        html.matches("<span class=\"status status-cached\">")
            .count(),
        5
    );
    assert!(
        html.contains("2 variants (one run)"),
        "the shared prep stage"
    );
    assert!(
        html.matches("<figure class=\"plot\"").count() >= 2,
        "loss and weights plots"
    );

    let Some(browser) = chromium() else {
        return;
    };
    let url = format!("file://{}", dir.join("report.html").display());
    let output = Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            &url,
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{browser}: {:?}", output);
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(
        dom.contains("class=\"comparison\"") && dom.contains("Stage graph"),
        "{dom}"
    );
    assert_eq!(dom.matches("class=\"node status-cached\"").count(), 5);
    let log = String::from_utf8_lossy(&output.stderr);
    let console: Vec<&str> = log
        .lines()
        .filter(|line| line.contains(":CONSOLE(") || line.contains("Uncaught"))
        .collect();
    assert!(console.is_empty(), "console messages: {console:?}");
}
