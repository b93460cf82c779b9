//! `sheared-bench store`: how fast the store hashes, against `b3sum` and `md5sum` on the same file
//! in the same run, and what a stat-cache hit costs.
//!
//! Every timing is hot-cache (the file is read once before timing) and the best of `--repeats`
//! runs, so the numbers compare hashing, not the disk. The stat-cache part opens a real store
//! next to the file: the first `hash_external` reads the whole file, the second must only `stat`
//! it (its `hashed_bytes` is reported to prove it).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};

use sheared::store::{Digest, Store};

use crate::row::{self, Better, Conditions, Row};

/// Arguments of `sheared-bench store`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Size of the generated test file in bytes.
    #[arg(long, default_value_t = 2 << 30)]
    pub bytes: u64,
    /// Folder for the test file and the scratch store (default: a temporary folder; it must have
    /// `--bytes` free).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Timed runs per tool; the best is reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: u32,
    /// Also write the results as JSON rows (see `row.rs`) to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One hashing tool on the test file.
#[derive(Debug, Clone)]
pub struct ToolTiming {
    pub name: String,
    /// What ran (a command line, or the library function).
    pub command: String,
    /// Best of the repeats.
    pub seconds: f64,
    pub bytes_per_s: f64,
    /// `seconds / sheared seconds`: above 1 means sheared is faster than this tool.
    pub sheared_speedup: f64,
}

/// Cost of hashing an external file through the store's stat cache.
#[derive(Debug, Clone)]
pub struct StatCacheTiming {
    /// First `hash_external` (reads and hashes everything).
    pub first_seconds: f64,
    pub first_hashed_bytes: u64,
    /// Median of repeated `hash_external` calls on the unchanged file.
    pub hit_seconds: f64,
    pub hit_hashed_bytes: u64,
    pub hit_calls: u32,
    /// Median hit inside an index session (the index is opened once for all calls, as the
    /// runner does while planning), so this is the stat + lookup cost without the sled open.
    pub hit_in_session_seconds: f64,
}

/// Everything `sheared-bench store` measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub bytes: u64,
    pub rayon_threads: usize,
    pub repeats: u32,
    pub tools: Vec<ToolTiming>,
    /// Peers that are not installed (`apt-get install b3sum` provides b3sum).
    pub missing_tools: Vec<String>,
    /// Whether `b3sum` printed the same digest as sheared (None if it is missing).
    pub b3sum_agrees: Option<bool>,
    pub stat_cache: StatCacheTiming,
}

impl BenchReport {
    /// The report as a markdown table plus notes.
    pub fn to_markdown(&self) -> String {
        let mut out = format!(
            "Hashing a {:.2} GB file (hot page cache, best of {}; {} rayon threads)\n\n",
            self.bytes as f64 / 1e9,
            self.repeats,
            self.rayon_threads
        );
        out.push_str(
            "| tool | command | seconds | GB/s | sheared speedup |\n|---|---|---:|---:|---:|\n",
        );
        for tool in &self.tools {
            out.push_str(&format!(
                "| {} | `{}` | {:.3} | {:.2} | {:.2}x |\n",
                tool.name,
                tool.command,
                tool.seconds,
                tool.bytes_per_s / 1e9,
                tool.sheared_speedup
            ));
        }
        out.push_str(&format!(
            "\nStat cache: first `hash_external` {:.3} s ({} bytes hashed); unchanged file again {:.2} ms (median of {}, {} bytes hashed; {:.3} ms inside an index session)\n",
            self.stat_cache.first_seconds,
            self.stat_cache.first_hashed_bytes,
            self.stat_cache.hit_seconds * 1e3,
            self.stat_cache.hit_calls,
            self.stat_cache.hit_hashed_bytes,
            self.stat_cache.hit_in_session_seconds * 1e3
        ));
        if let Some(agrees) = self.b3sum_agrees {
            out.push_str(&format!("b3sum digest matches sheared: {agrees}\n"));
        }
        if !self.missing_tools.is_empty() {
            out.push_str(&format!(
                "Missing peers (not measured): {}\n",
                self.missing_tools.join(", ")
            ));
        }
        out
    }

    /// The report as rows: sheared's hashing against each peer tool, and the stat-cache hit.
    pub fn rows(&self) -> Vec<Row> {
        let conditions = Conditions::now("store", self.rayon_threads);
        let name = format!(
            "hash a {:.2} GB file (hot page cache)",
            self.bytes as f64 / 1e9
        );
        let ours = &self.tools[0];
        let mut rows: Vec<Row> = self.tools[1..]
            .iter()
            .map(|tool| {
                let mut row = conditions
                    .row(
                        name.clone(),
                        "throughput",
                        ours.bytes_per_s,
                        "B/s",
                        Better::Higher,
                    )
                    .against(tool.name.clone(), tool.bytes_per_s)
                    .notes(format!("`{}` against `{}`", ours.command, tool.command));
                if tool.name == "b3sum"
                    && let Some(agrees) = self.b3sum_agrees
                {
                    row = row.notes(format!(
                        "`{}` against `{}`; digests agree: {agrees}",
                        ours.command, tool.command
                    ));
                }
                row
            })
            .collect();
        if !self.missing_tools.is_empty() {
            rows.push(
                conditions
                    .row(
                        name.clone(),
                        "throughput",
                        ours.bytes_per_s,
                        "B/s",
                        Better::Higher,
                    )
                    .notes(format!(
                        "`{}`; peers not installed: {}",
                        ours.command,
                        self.missing_tools.join(", ")
                    )),
            );
        }
        let cache = &self.stat_cache;
        rows.push(
            conditions
                .row(
                    format!(
                        "stat-cache hit, unchanged file (median of {})",
                        cache.hit_calls
                    ),
                    "wall time",
                    cache.hit_seconds,
                    "s",
                    Better::Lower,
                )
                .against(
                    "first hash_external (reads the whole file)",
                    cache.first_seconds,
                )
                .notes(format!(
                    "{:.3} ms inside an index session",
                    cache.hit_in_session_seconds * 1e3
                )),
        );
        rows.push(
            conditions
                .row(
                    "stat-cache hit, unchanged file",
                    "bytes rehashed",
                    cache.hit_hashed_bytes as f64,
                    "B",
                    Better::Lower,
                )
                .target("0"),
        );
        rows
    }

    /// Write the rows as JSON to `path`.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        row::write_json(&self.rows(), path)
    }
}

/// Run the benchmark (see module docs).
pub fn run(args: &Args) -> anyhow::Result<BenchReport> {
    if args.bytes == 0 {
        bail!("--bytes must be at least 1");
    }
    let repeats = args.repeats.max(1);
    let parent = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating --dir {}", dir.display()))?;
            dir.clone()
        }
        None => std::env::temp_dir(),
    };
    let workspace = tempfile::Builder::new()
        .prefix("sheared-bench-store-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a scratch folder in {}", parent.display()))?;
    let file = workspace.path().join("data.bin");
    generate(&file, args.bytes)?;
    // Stat-cache entries are only recorded for files not modified in the last seconds (see
    // store::external); the test file stands for a checkpoint written earlier.
    File::options()
        .write(true)
        .open(&file)?
        .set_modified(SystemTime::now() - Duration::from_secs(3600))
        .context("setting the test file's mtime")?;

    let ours_digest = Digest::of_file(&file)?; // also warms the page cache
    let mut tools = Vec::new();
    let mut missing_tools = Vec::new();
    let file_arg = file.to_string_lossy().into_owned();

    let ours = best_of(repeats, || {
        Digest::of_file(&file)
            .map(drop)
            .map_err(anyhow::Error::from)
    })?;
    tools.push((
        "sheared",
        "Digest::of_file (mmap + rayon)".to_string(),
        ours,
    ));
    let streaming = best_of(repeats, || {
        Digest::of_reader(std::io::BufReader::with_capacity(
            1 << 20,
            File::open(&file)?,
        ))
        .map(drop)
        .map_err(Into::into)
    })?;
    tools.push((
        "sheared, 1 thread",
        "Digest::of_reader (streaming)".to_string(),
        streaming,
    ));

    let mut b3sum_agrees = None;
    if tool_exists("b3sum") {
        let output = Command::new("b3sum")
            .args(["--no-names", &file_arg])
            .output()?;
        b3sum_agrees = Some(String::from_utf8_lossy(&output.stdout).trim() == ours_digest.to_hex());
        for (name, extra) in [
            ("b3sum", vec![]),
            ("b3sum, 1 thread", vec!["--num-threads", "1"]),
        ] {
            let mut command_args = extra.clone();
            command_args.extend(["--no-names", file_arg.as_str()]);
            let seconds = best_of(repeats, || run_tool("b3sum", &command_args))?;
            tools.push((name, format!("b3sum {}", command_args.join(" ")), seconds));
        }
    } else {
        missing_tools.push("b3sum".to_string());
    }
    if tool_exists("md5sum") {
        let seconds = best_of(repeats, || run_tool("md5sum", &[&file_arg]))?;
        tools.push(("md5sum", format!("md5sum {file_arg}"), seconds));
    } else {
        missing_tools.push("md5sum".to_string());
    }

    let stat_cache = stat_cache_timing(&workspace.path().join("store"), &file)?;
    let bytes = args.bytes as f64;
    let tools = tools
        .into_iter()
        .map(|(name, command, seconds)| ToolTiming {
            name: name.to_string(),
            command,
            seconds,
            bytes_per_s: bytes / seconds,
            sheared_speedup: seconds / ours,
        })
        .collect();
    Ok(BenchReport {
        bytes: args.bytes,
        rayon_threads: rayon::current_num_threads(),
        repeats,
        tools,
        missing_tools,
        b3sum_agrees,
        stat_cache,
    })
}

/// Write `bytes` of pseudo-random data (xorshift; incompressible enough for hashing).
fn generate(path: &Path, bytes: u64) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut writer = BufWriter::with_capacity(8 << 20, file);
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut chunk = vec![0u8; 8 << 20];
    let mut left = bytes;
    while left > 0 {
        for word in chunk.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let take = left.min(chunk.len() as u64) as usize;
        writer
            .write_all(&chunk[..take])
            .with_context(|| format!("writing {} (is the disk full? use --dir)", path.display()))?;
        left -= take as u64;
    }
    writer.flush()?;
    Ok(())
}

fn best_of(repeats: u32, mut run: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..repeats {
        let started = Instant::now();
        run()?;
        best = best.min(started.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn tool_exists(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success())
}

fn run_tool(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

fn stat_cache_timing(store_dir: &Path, file: &Path) -> anyhow::Result<StatCacheTiming> {
    const HIT_CALLS: u32 = 21;
    let store = Store::open(store_dir)?;
    let started = Instant::now();
    let first = store.hash_external(file)?;
    let first_seconds = started.elapsed().as_secs_f64();
    let mut hits = Vec::new();
    let mut hit_hashed_bytes = 0;
    for _ in 0..HIT_CALLS {
        let started = Instant::now();
        let hit = store.hash_external(file)?;
        hits.push(started.elapsed().as_secs_f64());
        if hit.digest != first.digest {
            bail!("the stat cache returned a different digest for an unchanged file");
        }
        hit_hashed_bytes = hit_hashed_bytes.max(hit.hashed_bytes);
    }
    hits.sort_by(f64::total_cmp);
    let mut session_hits = Vec::new();
    {
        let _session = store.index_session()?;
        for _ in 0..HIT_CALLS {
            let started = Instant::now();
            let hit = store.hash_external(file)?;
            session_hits.push(started.elapsed().as_secs_f64());
            hit_hashed_bytes = hit_hashed_bytes.max(hit.hashed_bytes);
        }
    }
    session_hits.sort_by(f64::total_cmp);
    Ok(StatCacheTiming {
        first_seconds,
        first_hashed_bytes: first.hashed_bytes,
        hit_seconds: hits[hits.len() / 2],
        hit_hashed_bytes,
        hit_calls: HIT_CALLS,
        hit_in_session_seconds: session_hits[session_hits.len() / 2],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_run_measures_every_available_tool_and_hits_the_stat_cache() {
        let dir = tempfile::tempdir().unwrap();
        let args = Args {
            bytes: 3 << 20,
            dir: Some(dir.path().to_path_buf()),
            repeats: 1,
            json: None,
        };
        let report = run(&args).unwrap();
        assert_eq!(report.tools[0].name, "sheared");
        assert!((report.tools[0].sheared_speedup - 1.0).abs() < 1e-9);
        assert_eq!(report.stat_cache.first_hashed_bytes, 3 << 20);
        assert_eq!(
            report.stat_cache.hit_hashed_bytes, 0,
            "unchanged file not rehashed"
        );
        if report.b3sum_agrees.is_some() {
            assert_eq!(report.b3sum_agrees, Some(true));
        }
        let missing = |tool: &str| report.missing_tools.iter().any(|name| name == tool);
        let expected_rows =
            2 + if missing("b3sum") { 0 } else { 2 } + if missing("md5sum") { 0 } else { 1 };
        assert_eq!(report.tools.len(), expected_rows);
        let markdown = report.to_markdown();
        assert!(
            markdown.contains("| sheared |") && markdown.contains("Stat cache"),
            "{markdown}"
        );
        let json_path = dir.path().join("report.json");
        report.write_json(&json_path).unwrap();
        let rows = row::parse(&std::fs::read_to_string(json_path).unwrap()).unwrap();
        assert!(rows.iter().all(|row| row.area == "store"));
        let rehashed = rows
            .iter()
            .find(|row| row.metric == "bytes rehashed")
            .unwrap();
        assert_eq!(rehashed.value, 0.0);
    }
}
