//! The conditions a benchmark ran under: the machine, and how busy it was. Every result row carries
//! them, so a number read later (or from another machine) says where it came from and whether the
//! machine was loaded while it was measured.

use serde::{Deserialize, Serialize};

/// CPU model, logical cores, memory and OS of this machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_bytes: Option<u64>,
    pub os: String,
}

impl Machine {
    /// This machine (Linux details from /proc; elsewhere the architecture stands for the CPU).
    pub fn detect() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|line| line.starts_with("model name"))
                    .and_then(|line| line.split(':').nth(1))
                    .map(|name| name.trim().to_string())
            })
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        let memory_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|line| line.starts_with("MemTotal"))
                    .and_then(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .map(|kib| kib * 1024);
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_bytes,
            os: std::env::consts::OS.to_string(),
        }
    }

    /// One line: `CPU, N cores, M GiB RAM, os`.
    pub fn describe(&self) -> String {
        let memory = self
            .memory_bytes
            .map(|bytes| format!(", {:.0} GiB RAM", bytes as f64 / (1u64 << 30) as f64))
            .unwrap_or_default();
        format!("{}, {} cores{memory}, {}", self.cpu, self.cores, self.os)
    }
}

/// The 1-minute load average (Linux), so that numbers measured on a busy machine say so.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
