//! Refusing a stage whose estimated peak memory exceeds its device's, before it computes anything.
//!
//! A stage's preview may carry `memory_bytes` (its heaviest step, [`crate::model::memory`]); the
//! runner recomputes the preview from the stage's materialised inputs just before the stage would
//! start and compares it with the memory of `settings.device`:
//! - `settings.device_memory_gb > 0` is taken as given (tests, shared machines, a GPU partition);
//! - `cpu` / `torch-cpu`: the machine's `MemTotal` from `/proc/meminfo` (no check off Linux);
//! - `cuda:N`: `nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits -i N`.
//!
//! When the size cannot be found the check is skipped with a warning: a missing `nvidia-smi` must
//! not stop a run that would have fitted. A refused stage fails like any other (its dependents are
//! skipped, `--keep-going` runs the rest, committed outputs stay), with nothing computed.
//!
//! The same probe refuses `settings.precision = "bf16"` on a GPU below compute capability 8.0
//! (`nvidia-smi --query-gpu=compute_cap`): bf16 matrix units arrived with Ampere (A100, RTX 30xx);
//! on a V100 (7.0) or T4 (7.5) libtorch runs bf16 through slow emulation or not at all, which a user
//! would only find out after hours of a stage. Only stages that compute with the model (those whose
//! preview estimates memory) are checked; an unknown capability is not a refusal.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::model::memory::{GIB, format_bytes};
use crate::model::precision::Precision;
use crate::stage::{Preview, Settings};

/// How much memory a device has, as far as it can be found.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceMemory {
    Known {
        bytes: u64,
        /// Where the number comes from (`MemTotal in /proc/meminfo`, `settings.device_memory_gb`).
        source: String,
    },
    Unknown {
        reason: String,
    },
}

/// The refusal, with everything needed to act on it.
#[derive(Debug, thiserror::Error)]
#[error(
    "stage `{stage}` needs an estimated {} of memory for one step ({breakdown}) but device `{device}` has {} \
     ({memory_source}); refused before computing anything. To fit: {advice}; or run on a device with more memory \
     (settings.device_memory_gb overrides the detected size)",
    format_bytes(*.estimate_bytes),
    format_bytes(*.available_bytes)
)]
pub struct MemoryRefusal {
    pub stage: String,
    pub device: String,
    pub estimate_bytes: u64,
    pub available_bytes: u64,
    /// `weights 25.1, grads 25.1, ...` (GiB).
    pub breakdown: String,
    /// Where the device's size comes from.
    pub memory_source: String,
    pub advice: String,
}

/// Detected device sizes (and GPU compute capabilities), one lookup per device and override for
/// the whole run (`nvidia-smi` is slow to start, and the warning for an unknown size is printed once).
#[derive(Default)]
pub struct DeviceMemoryProbe {
    known: Mutex<BTreeMap<String, DeviceMemory>>,
    capabilities: Mutex<BTreeMap<usize, Capability>>,
}

/// A GPU's compute capability `(major, minor)`, or why it could not be found.
type Capability = Result<(u32, u32), String>;

/// Compute capability at which GPUs have bf16 matrix units (Ampere).
const BF16_MIN_CAPABILITY: (u32, u32) = (8, 0);

/// bf16 asked of a GPU that cannot compute it natively.
#[derive(Debug, thiserror::Error)]
#[error(
    "stage `{stage}`: settings.precision = \"bf16\" but GPU {index} (`{device}`) has compute capability {}.{} \
     (nvidia-smi compute_cap); bf16 needs {}.{} or newer (A100, H100, RTX 30xx and later). Refused before \
     computing anything: set settings.precision = \"fp32\" (or --set settings.precision='\"fp32\"'), or use a newer GPU",
    .capability.0, .capability.1, BF16_MIN_CAPABILITY.0, BF16_MIN_CAPABILITY.1
)]
pub struct PrecisionRefusal {
    pub stage: String,
    pub device: String,
    pub index: usize,
    pub capability: (u32, u32),
}

impl DeviceMemoryProbe {
    pub fn memory(&self, settings: &Settings) -> DeviceMemory {
        let key = format!("{}\u{0}{}", settings.device, settings.device_memory_gb);
        let mut known = self
            .known
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        known
            .entry(key)
            .or_insert_with(|| {
                let memory = device_memory(settings);
                if let DeviceMemory::Unknown { reason } = &memory {
                    tracing::warn!(
                        "not checking that stages fit in the memory of device `{}`: {reason}; set \
                         settings.device_memory_gb to check",
                        settings.device
                    );
                }
                memory
            })
            .clone()
    }

    /// `Err` when `preview` estimates more memory than the device of `settings` has.
    pub fn check(
        &self,
        stage: &str,
        preview: &Preview,
        settings: &Settings,
    ) -> Result<(), Box<MemoryRefusal>> {
        let Some(estimate_bytes) = preview.memory_bytes else {
            return Ok(());
        };
        let DeviceMemory::Known { bytes, source } = self.memory(settings) else {
            return Ok(());
        };
        if estimate_bytes <= bytes {
            return Ok(());
        }
        let (breakdown, advice) = match &preview.memory {
            Some(memory) => (
                memory
                    .estimate
                    .parts()
                    .iter()
                    .map(|(name, bytes)| format!("{name} {}", format_bytes(*bytes)))
                    .collect::<Vec<_>>()
                    .join(", "),
                memory.advice.clone(),
            ),
            None => (String::new(), "use smaller batches".into()),
        };
        Err(Box::new(MemoryRefusal {
            stage: stage.to_string(),
            device: settings.device.clone(),
            estimate_bytes,
            available_bytes: bytes,
            breakdown,
            memory_source: source,
            advice,
        }))
    }
}

impl DeviceMemoryProbe {
    /// `Err` when a stage that computes with the model (its preview estimates memory) asks for bf16
    /// on a CUDA GPU below compute capability 8.0.
    pub fn check_precision(
        &self,
        stage: &str,
        preview: &Preview,
        settings: &Settings,
    ) -> Result<(), Box<PrecisionRefusal>> {
        self.check_precision_with(stage, preview, settings, &gpu_compute_capability)
    }

    fn check_precision_with(
        &self,
        stage: &str,
        preview: &Preview,
        settings: &Settings,
        lookup: &dyn Fn(usize) -> Capability,
    ) -> Result<(), Box<PrecisionRefusal>> {
        if settings.precision != Precision::Bf16 || preview.memory_bytes.is_none() {
            return Ok(());
        }
        let Some(index) = cuda_index(&settings.device) else {
            return Ok(());
        };
        let capability = self
            .capabilities
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .entry(index)
            .or_insert_with(|| {
                let found = lookup(index);
                if let Err(reason) = &found {
                    tracing::warn!(
                        "not checking that GPU {index} computes bf16 natively: {reason}"
                    );
                }
                found
            })
            .clone();
        match capability {
            Ok(capability) if capability < BF16_MIN_CAPABILITY => Err(Box::new(PrecisionRefusal {
                stage: stage.to_string(),
                device: settings.device.clone(),
                index,
                capability,
            })),
            _ => Ok(()),
        }
    }
}

/// `cuda` → 0, `cuda:3` → 3; `None` for other devices.
fn cuda_index(device: &str) -> Option<usize> {
    match device.strip_prefix("cuda")? {
        "" => Some(0),
        rest => rest.strip_prefix(':')?.parse().ok(),
    }
}

fn gpu_compute_capability(index: usize) -> Capability {
    let text = nvidia_smi("compute_cap", "csv,noheader", index)?;
    parse_compute_cap(&text)
        .ok_or_else(|| format!("unexpected nvidia-smi compute_cap output {text:?}"))
}

/// `nvidia-smi --query-gpu=<field> --format=<format> -i <index>`'s stdout, or why there is none.
fn nvidia_smi(field: &str, format: &str, index: usize) -> Result<String, String> {
    let output = std::process::Command::new("nvidia-smi")
        .args([
            &format!("--query-gpu={field}"),
            &format!("--format={format}"),
            "-i",
            &index.to_string(),
        ])
        .output()
        .map_err(|error| format!("cannot run nvidia-smi: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "nvidia-smi -i {index} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `8.6\n` → (8, 6).
pub fn parse_compute_cap(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.lines().next()?.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The memory of `settings.device` (or the override).
pub fn device_memory(settings: &Settings) -> DeviceMemory {
    if settings.device_memory_gb > 0.0 {
        return DeviceMemory::Known {
            bytes: (settings.device_memory_gb * GIB) as u64,
            source: format!("settings.device_memory_gb = {}", settings.device_memory_gb),
        };
    }
    let device = settings.device.trim();
    match device {
        "cpu" | "torch-cpu" => host_memory(),
        _ => match device.strip_prefix("cuda") {
            Some("") => gpu_memory(0),
            Some(rest) => match rest.strip_prefix(':').and_then(|n| n.parse::<usize>().ok()) {
                Some(index) => gpu_memory(index),
                None => DeviceMemory::Unknown {
                    reason: format!("`{device}` is not `cuda:N`"),
                },
            },
            None => DeviceMemory::Unknown {
                reason: format!("no way to find the memory of a `{device}` device"),
            },
        },
    }
}

#[cfg(target_os = "linux")]
fn host_memory() -> DeviceMemory {
    let path = "/proc/meminfo";
    match std::fs::read_to_string(path) {
        Ok(text) => match parse_mem_total(&text) {
            Some(bytes) => DeviceMemory::Known {
                bytes,
                source: format!("MemTotal in {path}"),
            },
            None => DeviceMemory::Unknown {
                reason: format!("{path} has no readable MemTotal line"),
            },
        },
        Err(error) => DeviceMemory::Unknown {
            reason: format!("{path}: {error}"),
        },
    }
}

#[cfg(not(target_os = "linux"))]
fn host_memory() -> DeviceMemory {
    DeviceMemory::Unknown {
        reason: "the host's memory is read from /proc/meminfo, which only Linux has".into(),
    }
}

/// `MemTotal:       16316412 kB` → bytes.
pub fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))?;
    let mut fields = line.split_whitespace();
    let value: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => Some(value * 1024),
        None => Some(value),
        Some(_) => None,
    }
}

fn gpu_memory(index: usize) -> DeviceMemory {
    let unknown = |reason: String| DeviceMemory::Unknown { reason };
    match nvidia_smi("memory.total", "csv,noheader,nounits", index) {
        Err(reason) => unknown(reason),
        Ok(text) => match parse_nvidia_smi_total(&text) {
            Some(bytes) => DeviceMemory::Known {
                bytes,
                source: format!("nvidia-smi memory.total of GPU {index}"),
            },
            None => unknown(format!("unexpected nvidia-smi output {text:?}")),
        },
    }
}

/// `81559\n` (MiB, `nounits`) → bytes.
pub fn parse_nvidia_smi_total(text: &str) -> Option<u64> {
    let mebibytes: u64 = text.lines().next()?.trim().parse().ok()?;
    Some(mebibytes << 20)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::memory::{MemoryEstimate, MemoryOptions, StepShape};

    fn settings(device: &str, gb: f64) -> Settings {
        Settings {
            device: device.into(),
            device_memory_gb: gb,
            ..Settings::default()
        }
    }

    fn preview_needing(bytes: u64) -> Preview {
        let mut preview = Preview::default();
        preview.add_memory(
            MemoryEstimate {
                weights_bytes: bytes / 2,
                activations_bytes: bytes - bytes / 2,
                ..MemoryEstimate::default()
            },
            StepShape {
                micro_batch: 4,
                seq_len: 128,
            },
            MemoryOptions::FP32,
            "lower batch_size".into(),
        );
        preview
    }

    #[test]
    fn bf16_is_refused_below_ampere_and_only_for_model_stages_on_cuda() {
        let probe = DeviceMemoryProbe::default();
        let mut settings = settings("cuda:1", 0.0);
        settings.precision = Precision::Bf16;
        let model_stage = preview_needing(1 << 30);
        let turing = |index: usize| {
            assert_eq!(index, 1);
            Ok((7, 5))
        };
        let refusal = probe
            .check_precision_with("prune", &model_stage, &settings, &turing)
            .unwrap_err()
            .to_string();
        assert!(
            refusal.contains("GPU 1")
                && refusal.contains("7.5")
                && refusal.contains("settings.precision = \"fp32\""),
            "{refusal}"
        );
        // A command stage (no memory estimate), fp32, another device, an Ampere GPU, an unknown one: no refusal.
        let command = Preview::default();
        assert!(
            probe
                .check_precision_with("fetch", &command, &settings, &turing)
                .is_ok()
        );
        let ampere = DeviceMemoryProbe::default();
        assert!(
            ampere
                .check_precision_with("prune", &model_stage, &settings, &|_| Ok((8, 0)))
                .is_ok()
        );
        let unknown = DeviceMemoryProbe::default();
        assert!(
            unknown
                .check_precision_with("prune", &model_stage, &settings, &|_| Err(
                    "no nvidia-smi".into()
                ))
                .is_ok()
        );
        settings.precision = Precision::Fp32;
        assert!(
            DeviceMemoryProbe::default()
                .check_precision_with("prune", &model_stage, &settings, &turing)
                .is_ok()
        );
        settings.precision = Precision::Bf16;
        settings.device = "torch-cpu".into();
        assert!(
            DeviceMemoryProbe::default()
                .check_precision_with("prune", &model_stage, &settings, &turing)
                .is_ok()
        );
        assert_eq!(parse_compute_cap("8.6\n"), Some((8, 6)));
        assert_eq!(parse_compute_cap("[N/A]"), None);
        assert_eq!(
            (
                cuda_index("cuda"),
                cuda_index("cuda:2"),
                cuda_index("cudax")
            ),
            (Some(0), Some(2), None)
        );
    }

    #[test]
    fn parses_meminfo_and_nvidia_smi() {
        let meminfo = "MemFree:  100 kB\nMemTotal:       16316412 kB\nSwapTotal: 0 kB\n";
        assert_eq!(parse_mem_total(meminfo), Some(16_316_412 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_nvidia_smi_total("81559\n"), Some(81_559 << 20));
        assert_eq!(parse_nvidia_smi_total("[N/A]\n"), None);
    }

    #[test]
    fn the_override_wins_and_unknown_devices_are_not_checked() {
        assert_eq!(
            device_memory(&settings("cuda:7", 2.0)),
            DeviceMemory::Known {
                bytes: 2 << 30,
                source: "settings.device_memory_gb = 2".into()
            }
        );
        assert!(matches!(
            device_memory(&settings("tpu:0", 0.0)),
            DeviceMemory::Unknown { .. }
        ));
        let probe = DeviceMemoryProbe::default();
        assert!(
            probe
                .check("s", &preview_needing(u64::MAX / 2), &settings("tpu:0", 0.0))
                .is_ok()
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn cpu_memory_is_the_machines() {
        let DeviceMemory::Known { bytes, .. } = device_memory(&settings("cpu", 0.0)) else {
            panic!("MemTotal not found");
        };
        assert!(bytes > 64 << 20, "{bytes}");
    }

    #[test]
    fn refuses_only_what_does_not_fit_and_says_what_to_change() {
        let probe = DeviceMemoryProbe::default();
        let one_gib = settings("cpu", 1.0);
        assert!(
            probe
                .check("train", &preview_needing(1 << 30), &one_gib)
                .is_ok()
        );
        assert!(probe.check("train", &Preview::default(), &one_gib).is_ok());
        let refusal = probe
            .check("train", &preview_needing(3 << 30), &one_gib)
            .unwrap_err();
        assert_eq!(refusal.estimate_bytes, 3 << 30);
        assert_eq!(refusal.available_bytes, 1 << 30);
        let message = refusal.to_string();
        for part in [
            "stage `train`",
            "3.0 GiB",
            "1.0 GiB",
            "weights 1.5 GiB, activations 1.5 GiB",
            "settings.device_memory_gb = 1",
            "lower batch_size",
            "before computing anything",
        ] {
            assert!(message.contains(part), "{part:?} not in {message}");
        }
    }
}
