//! The one JSON shape of a benchmark result. Every area's `--json` gives a list of these rows, and
//! BENCHMARKS.md is built from nothing else, so a new area needs no change in the writer and no
//! reader has to guess which keys of which report hold the comparison.
//!
//! ```json
//! {"area": "store", "name": "hash a 2.15 GB file", "metric": "throughput", "value": 2.9e9,
//!  "unit": "B/s", "better": "higher", "peer": {"name": "b3sum", "value": 3.1e9, "version": null},
//!  "ratio": 0.94, "target": null, "notes": null,
//!  "machine": {"cpu": "...", "cores": 2, "memory_bytes": 25769803776, "os": "linux"},
//!  "threads": 2, "load_average": 0.8}
//! ```

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::machine::{Machine, load_average};

/// Which direction of `value` is the good one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
}

/// The peer measured in the same run, on the same metric and unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Peer {
    pub name: String,
    pub value: f64,
    pub version: Option<String>,
}

/// One benchmark result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The `sheared-bench` subcommand that measured it.
    pub area: String,
    /// What was measured (`no-op rerun`, `forward + backward`, ...).
    pub name: String,
    /// The kind of number (`throughput`, `wall time`, `peak RSS`, ...).
    pub metric: String,
    /// sheared's number, in `unit`.
    pub value: f64,
    /// `tokens/s`, `B/s`, `s`, `B`, `%`, `fraction`.
    pub unit: String,
    pub better: Better,
    pub peer: Option<Peer>,
    /// How many times better sheared is than the peer whichever way `better` points (ours ÷ peer for
    /// `higher`, peer ÷ ours for `lower`): above 1 means sheared wins.
    pub ratio: Option<f64>,
    /// The goal this number is read against (never asserted in tests).
    pub target: Option<String>,
    pub notes: Option<String>,
    pub machine: Machine,
    /// Threads the measurement used.
    pub threads: usize,
    /// 1-minute load average when the area finished measuring.
    pub load_average: Option<f64>,
}

/// The conditions shared by every row of one area run.
#[derive(Debug, Clone)]
pub struct Conditions {
    pub area: &'static str,
    pub machine: Machine,
    pub threads: usize,
    pub load_average: Option<f64>,
}

impl Conditions {
    /// This machine, now.
    pub fn now(area: &'static str, threads: usize) -> Conditions {
        Conditions {
            area,
            machine: Machine::detect(),
            threads,
            load_average: load_average(),
        }
    }

    /// A row without a peer.
    pub fn row(
        &self,
        name: impl Into<String>,
        metric: &str,
        value: f64,
        unit: &str,
        better: Better,
    ) -> Row {
        Row {
            area: self.area.to_string(),
            name: name.into(),
            metric: metric.to_string(),
            value,
            unit: unit.to_string(),
            better,
            peer: None,
            ratio: None,
            target: None,
            notes: None,
            machine: self.machine.clone(),
            threads: self.threads,
            load_average: self.load_average,
        }
    }
}

impl Row {
    /// The same row against `peer`, with the ratio computed from `better`.
    pub fn against(mut self, name: impl Into<String>, value: f64) -> Row {
        self.ratio = Some(match self.better {
            Better::Higher => self.value / value,
            Better::Lower => value / self.value,
        });
        self.peer = Some(Peer {
            name: name.into(),
            value,
            version: None,
        });
        self
    }

    /// The peer's version (torch, tokenizers), when it has one.
    pub fn peer_version(mut self, version: impl Into<String>) -> Row {
        if let Some(peer) = &mut self.peer {
            peer.version = Some(version.into());
        }
        self
    }

    pub fn target(mut self, target: impl Into<String>) -> Row {
        self.target = Some(target.into());
        self
    }

    pub fn notes(mut self, notes: impl Into<String>) -> Row {
        self.notes = Some(notes.into());
        self
    }
}

/// Rows as the JSON every area prints: a pretty array.
pub fn to_json(rows: &[Row]) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(rows)? + "\n")
}

/// Print rows as JSON on stdout (areas whose `--json` is a flag).
pub fn print_json(rows: &[Row]) -> anyhow::Result<()> {
    print!("{}", to_json(rows)?);
    Ok(())
}

/// Write rows as JSON to `path` (areas whose `--json` takes a file).
pub fn write_json(rows: &[Row], path: &Path) -> anyhow::Result<()> {
    std::fs::write(path, to_json(rows)?)
        .with_context(|| format!("writing the benchmark rows to {}", path.display()))
}

/// Rows from an area's JSON.
pub fn parse(text: &str) -> anyhow::Result<Vec<Row>> {
    serde_json::from_str(text.trim()).context("reading benchmark rows (a JSON array of rows)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_points_the_way_better_does_and_rows_round_trip() {
        let conditions = Conditions::now("test", 2);
        let faster = conditions
            .row("hash", "throughput", 3.0, "B/s", Better::Higher)
            .against("b3sum", 2.0);
        assert_eq!(faster.ratio, Some(1.5));
        let quicker = conditions
            .row("rerun", "wall time", 0.5, "s", Better::Lower)
            .against("rehash", 2.0)
            .target("< 0.5 s");
        assert_eq!(quicker.ratio, Some(4.0));
        let rows = vec![faster, quicker];
        assert_eq!(parse(&to_json(&rows).unwrap()).unwrap(), rows);
        assert!(parse("{\"name\": 1}").is_err());
    }
}
