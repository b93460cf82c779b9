//! `sheared-bench runner`: the wall time of a no-op rerun of a 20-stage recipe whose cached outputs
//! total 5 GB (target: under 0.5 s, no rehashing), against the naive peer that rehashes every output
//! to decide whether anything changed (what a runner without trusted manifests and a stat cache
//! must do).
//!
//! The recipe is a chain of `command` stages; stage i writes `bytes / stages` bytes (a distinct
//! header, then zeros) into its output, and the first stage also reads an external input file, so
//! the rerun exercises the stat cache too. Both timings use the real binary (`sheared run`, found next
//! to this one unless `--sheared` says otherwise), the peer
//! uses multi-threaded memory-mapped blake3 over the same files (its best case: they are in the
//! page cache right after the cold run).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;

use crate::row::{self, Better, Conditions};

#[derive(Debug, Clone, Args)]
pub struct RunnerBenchArgs {
    /// Total bytes of cached outputs (default 5 GB).
    #[arg(long, default_value_t = 5_000_000_000)]
    pub bytes: u64,
    /// Stages in the chain.
    #[arg(long, default_value_t = 20)]
    pub stages: usize,
    /// Work folder (recipe + cache); removed afterwards unless --keep.
    #[arg(long, default_value = "bench-runner-work")]
    pub dir: PathBuf,
    /// No-op reruns to time (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Keep the work folder.
    #[arg(long)]
    pub keep: bool,
    /// The `sheared` binary to time; default: the one next to this binary (cargo builds both into
    /// the same folder).
    #[arg(long, env = "SHEARED_BIN")]
    pub sheared: Option<PathBuf>,
    /// Print the results as JSON rows (see `row.rs`) instead of the text report.
    #[arg(long)]
    pub json: bool,
}

/// The `sheared` binary: `--sheared`, else the sibling of this executable.
fn sheared_binary(args: &RunnerBenchArgs) -> anyhow::Result<PathBuf> {
    if let Some(path) = &args.sheared {
        return Ok(path.clone());
    }
    let this = std::env::current_exe().context("finding the sheared-bench binary")?;
    let sibling = this.with_file_name(format!("sheared{}", std::env::consts::EXE_SUFFIX));
    if !sibling.is_file() {
        bail!(
            "no `sheared` binary next to {} (build it: cargo build --release --bin sheared), or pass --sheared PATH",
            this.display()
        );
    }
    Ok(sibling)
}

pub fn run(args: &RunnerBenchArgs) -> anyhow::Result<()> {
    if args.stages == 0 {
        bail!("--stages must be at least 1");
    }
    if args.dir.exists() {
        bail!(
            "{} exists; remove it or pass another --dir",
            args.dir.display()
        );
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let result = measure(args);
    if !args.keep {
        let _ = std::fs::remove_dir_all(&args.dir);
    }
    result
}

fn measure(args: &RunnerBenchArgs) -> anyhow::Result<()> {
    let dir = args.dir.canonicalize()?;
    let per_stage = args.bytes / args.stages as u64;
    std::fs::write(
        dir.join("external.txt"),
        b"an external input, hashed once and then stat-cached\n",
    )?;
    let mut recipe = String::from("name = \"bench-runner\"\n");
    for index in 0..args.stages {
        let upstream = if index == 0 {
            "{ path = \"external.txt\" }".to_string()
        } else {
            format!("{{ stage = \"s{:02}\" }}", index - 1)
        };
        recipe.push_str(&format!(
            "\n[stages.s{index:02}]\nkind = \"command\"\nargv = [\"/bin/sh\", \"-c\", \"(echo stage {index}; head -c {per_stage} /dev/zero) > {{out}}/data.bin\"]\ninputs = {{ upstream = {upstream} }}\n"
        ));
    }
    let recipe_path = dir.join("bench.toml");
    std::fs::write(&recipe_path, recipe)?;
    let cache = dir.join("cache");
    let exe = sheared_binary(args)?;
    let sheared_run = || -> anyhow::Result<f64> {
        let start = Instant::now();
        let status = Command::new(&exe)
            .arg("run")
            .arg(&recipe_path)
            .arg("--cache")
            .arg(&cache)
            .arg("--json")
            .stdout(std::process::Stdio::null())
            .status()?;
        if !status.success() {
            bail!("`sheared run` failed ({status})");
        }
        Ok(start.elapsed().as_secs_f64())
    };
    eprintln!(
        "cold run: {} stages writing {} in total ...",
        args.stages,
        sheared::util::fmt::human_bytes(per_stage * args.stages as u64)
    );
    let cold = sheared_run()?;
    let mut reruns: Vec<f64> = (0..args.repeats.max(1))
        .map(|_| sheared_run())
        .collect::<Result<_, _>>()?;
    reruns.sort_by(f64::total_cmp);
    let rerun = reruns[reruns.len() / 2];
    // The naive peer: rehash every output file to find out whether anything changed.
    let files = output_files(&cache.join("objects"))?;
    let start = Instant::now();
    let mut hashed_bytes = 0u64;
    for file in &files {
        let mut hasher = blake3::Hasher::new();
        hasher
            .update_mmap_rayon(file)
            .with_context(|| format!("hashing {}", file.display()))?;
        std::hint::black_box(hasher.finalize());
        hashed_bytes += std::fs::metadata(file)?.len();
    }
    let rehash = start.elapsed().as_secs_f64();
    if args.json {
        let conditions = Conditions::now("runner", rayon::current_num_threads());
        let setup = format!(
            "{} stages, {hashed_bytes} B of cached outputs in {} files, page cache warm",
            args.stages,
            files.len()
        );
        return row::print_json(&[
            conditions
                .row(
                    format!("no-op rerun, `sheared run` (median of {})", reruns.len()),
                    "wall time",
                    rerun,
                    "s",
                    Better::Lower,
                )
                .against("rehash every output (blake3, mmap, all cores)", rehash)
                .target("< 0.5 s")
                .notes(setup),
            conditions.row(
                "cold run (execute + hash + commit)",
                "wall time",
                cold,
                "s",
                Better::Lower,
            ),
        ]);
    }
    println!("# sheared-bench runner");
    println!(
        "stages: {}, cached output bytes: {} ({} files)",
        args.stages,
        hashed_bytes,
        files.len()
    );
    println!("cold run (execute + hash + commit): {cold:.3} s");
    println!(
        "no-op rerun, `sheared run` (median of {}): {rerun:.3} s  [target < 0.5 s]",
        reruns.len()
    );
    println!(
        "naive peer, rehash every output (blake3, mmap, all cores): {rehash:.3} s ({:.2} GB/s)",
        hashed_bytes as f64 / rehash / 1e9
    );
    println!("ratio naive / sheared: {:.1}x", rehash / rerun);
    Ok(())
}

fn output_files(objects: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for shard in std::fs::read_dir(objects)? {
        let shard = shard?.path();
        if shard.is_dir() {
            for file in std::fs::read_dir(&shard)? {
                files.push(file?.path());
            }
        }
    }
    files.sort();
    Ok(files)
}
