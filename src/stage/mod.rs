//! The stage contract between the runner and every stage kind: [`Stage`], [`StageContext`],
//! [`StageError`], [`Settings`], [`InputRef`], [`Registry`], previews ([`preview`]) and the typed
//! `metrics.json` ([`StageMetrics`]). The kinds live in
//! [`crate::stages`]; the runner (`recipe`, `plan`, `exec`) sees them only through this module.
//!
//! A stage kind (`command`, `tokenize`, `prune`, ...) implements [`Stage`]. The runner:
//! 1. calls [`Stage::normalize`] on the stage's TOML table (defaults filled, unknown keys rejected) and
//!    uses the result, with [`Stage::version`] and the digests of the inputs, as the cache-key preimage;
//! 2. calls [`Stage::validate`] before any compute, for checks that need the config only;
//! 3. materialises the inputs and calls [`Stage::run`] with a [`StageContext`] whose `out_dir` is empty.
//!
//! An *input* is any value in the stage table written as an inline table `{ stage = "x" }`,
//! `{ stage = "x", file = "f" }` or `{ path = "p" }`. The runner finds them wherever they sit and gives
//! their materialised paths to the stage keyed by their dotted key (`"model"`, `"domains.cc"`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use crate::progress::{CancelFlag, Cancelled, NullReporter, Reporter};
pub use metrics::{
    DomainMetrics, METRICS_FILE, MetricsError, ParameterCounts, Parameters, StageMetrics,
    TaskMetrics,
};
pub use preview::{Preview, PreviewInput, PreviewInputs};

pub mod metrics;
pub mod preview;
#[cfg(test)]
pub(crate) mod testing;

/// Errors a stage reports. `Config` errors name the key so the runner can point at the recipe line.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// A config value is invalid. `key` is the dotted key inside the stage table (`target.hidden`).
    #[error("`{key}`: {message}")]
    Config { key: String, message: String },
    /// An input (model folder, data, tokenizer) is unusable. `key` is the input's dotted key.
    #[error("input `{key}`: {message}")]
    Input { key: String, message: String },
    /// The run was cancelled through [`StageContext::cancel`]; scratch is kept for the next attempt.
    #[error("cancelled")]
    Cancelled,
    /// Anything else; the message should say what to do.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<Cancelled> for StageError {
    fn from(_: Cancelled) -> Self {
        StageError::Cancelled
    }
}

impl StageError {
    pub fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        StageError::Config {
            key: key.into(),
            message: message.into(),
        }
    }
    pub fn input(key: impl Into<String>, message: impl Into<String>) -> Self {
        StageError::Input {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Run-wide settings (`[settings]` of a recipe, overridable with `--device`, `--set settings.seed=..`).
#[derive(Debug, Clone, serde::Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `"cpu"`, `"torch-cpu"` or `"cuda:N"` ([`crate::model::device`]); which backends exist depends
    /// on the cargo features the binary was built with.
    pub device: String,
    /// Base seed; stages derive their own streams from it.
    pub seed: u64,
    /// Memory of the device in GB (GiB, 2^30 bytes), for the runner's check that a stage's
    /// estimated peak memory fits before it starts; 0 = detect (`MemTotal` for `cpu`, `nvidia-smi`
    /// for `cuda:N`). Not part of any cache key.
    pub device_memory_gb: f64,
    /// What matrix products compute in: `"fp32"` (default) or `"bf16"` mixed precision with fp32
    /// masters ([`crate::model::precision`]). In the key of the stages that compute with a model;
    /// serialised only when not fp32, so recipes that never set it keep their keys.
    #[serde(skip_serializing_if = "crate::model::precision::Precision::is_fp32")]
    pub precision: crate::model::precision::Precision,
    /// Where stages compute: `"local"` (in this process, the default) or `"slurm"` (one Slurm job
    /// per stage, [`crate::exec::slurm`]). Not part of any cache key.
    #[serde(skip_serializing_if = "Executor::is_local")]
    pub executor: Executor,
    /// `[settings.slurm]`: every stage's Slurm job resources unless `[stages.NAME.resources]` says
    /// otherwise. Not part of any cache key.
    #[serde(skip_serializing_if = "Resources::is_empty")]
    pub slurm: Resources,
}

/// Where the runner computes a stage (`settings.executor`, `sheared run --executor`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Executor {
    /// In the `sheared run` process itself.
    #[default]
    Local,
    /// As a Slurm batch job running `sheared stage-job`; `sheared run` coordinates and commits.
    Slurm,
}

impl Executor {
    pub fn is_local(&self) -> bool {
        *self == Executor::Local
    }
}

impl std::str::FromStr for Executor {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "local" => Ok(Executor::Local),
            "slurm" => Ok(Executor::Slurm),
            other => Err(format!(
                "unknown executor `{other}`; use `local` or `slurm`"
            )),
        }
    }
}

/// What a stage's Slurm job asks for (`[stages.NAME.resources]`, defaults in `[settings.slurm]`).
/// Each field maps to one `sbatch` option; unset fields are left to the cluster's defaults. Not part
/// of any cache key: the same stage on other hardware is the same stage.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Resources {
    /// `--partition`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// `--time`, Slurm's syntax (`"12:00:00"`, `"2-00:00:00"`, minutes as `"90"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// `--mem`, Slurm's syntax (`"480G"`, `"64000M"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// `--cpus-per-task`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// `--gpus`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
    /// Further `sbatch` arguments, passed as given (`["--account=lab", "--qos=high"]`); a stage's
    /// list comes after `[settings.slurm]`'s, so its options win where Slurm takes the last one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra_args: Vec<String>,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        *self == Resources::default()
    }

    /// `self` (a stage's) over `defaults` (`[settings.slurm]`): each field the stage sets wins; the
    /// extra arguments are both lists, defaults first.
    pub fn over(&self, defaults: &Resources) -> Resources {
        Resources {
            partition: self
                .partition
                .clone()
                .or_else(|| defaults.partition.clone()),
            time: self.time.clone().or_else(|| defaults.time.clone()),
            memory: self.memory.clone().or_else(|| defaults.memory.clone()),
            cpus: self.cpus.or(defaults.cpus),
            gpus: self.gpus.or(defaults.gpus),
            extra_args: defaults
                .extra_args
                .iter()
                .chain(&self.extra_args)
                .cloned()
                .collect(),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            device: "cpu".into(),
            seed: 17,
            device_memory_gb: 0.0,
            precision: crate::model::precision::Precision::Fp32,
            executor: Executor::Local,
            slurm: Resources::default(),
        }
    }
}

impl Settings {
    /// The defaults with the device tests run on ([`crate::model::device::name_for_tests`]).
    pub fn for_tests() -> Self {
        Settings {
            device: crate::model::device::name_for_tests(),
            ..Settings::default()
        }
    }
}

/// Everything a stage may touch while it runs.
pub struct StageContext<'a> {
    /// The stage's name in the recipe (`prune`).
    pub name: &'a str,
    /// The normalised config (output of [`Stage::normalize`]).
    pub config: &'a toml::Table,
    /// Materialised inputs by dotted key: a folder for `{ stage = .. }` and `{ path = folder }`,
    /// a file for `{ stage = .., file = .. }` and `{ path = file }`. Read-only.
    pub inputs: BTreeMap<String, PathBuf>,
    /// Empty folder; everything written here is committed to the store when `run` returns `Ok`.
    pub out_dir: PathBuf,
    /// Kept across failed or killed attempts of the same cache key; deleted when the stage commits.
    /// Put in-stage checkpoints here.
    pub scratch_dir: PathBuf,
    /// Run-wide settings.
    pub settings: &'a Settings,
    pub reporter: &'a dyn Reporter,
    pub cancel: CancelFlag,
}

impl StageContext<'_> {
    /// The materialised path of the input at `key`, or an error naming the key.
    pub fn input(&self, key: &str) -> Result<&Path, StageError> {
        self.inputs.get(key).map(PathBuf::as_path).ok_or_else(|| {
            StageError::input(key, "this stage needs this input; write e.g. `{ stage = \"...\" }` or `{ path = \"...\" }`")
        })
    }
}

/// One stage kind. This is the whole contract between the runner and a kind.
///
/// **What the runner guarantees.**
/// - [`normalize`](Stage::normalize) comes first, on the stage table without `kind`. Its result, with
///   [`version`](Stage::version), the values of [`settings_in_key`](Stage::settings_in_key) and the
///   content digests of the inputs, is the cache-key preimage (less its
///   [`execution_keys`](Stage::execution_keys)). `validate`, `preview` and `run` only
///   ever see a normalised table.
/// - [`validate`](Stage::validate) runs for every stage of the plan before any stage runs.
/// - [`run`](Stage::run) is called only when no committed output exists for the key, and never
///   twice at once for one key (a lease, shared with other `sheared` processes, guards it).
///   `ctx.out_dir` is empty; `ctx.inputs` are materialised and must be treated as read-only;
///   `ctx.scratch_dir` holds whatever earlier failed or killed attempts of the same key left there.
/// - On `Ok`, everything in `out_dir` is hashed and committed, and `scratch_dir` is deleted. On `Err`
///   nothing is committed: the failure and its log tail are recorded, `out_dir` is removed and
///   `scratch_dir` is kept for the next attempt. A killed process leaves the same state: its `out_dir`
///   is removed by the next attempt of that key, its `scratch_dir` is kept.
///
/// **What a stage must do.**
/// - Be deterministic given the key: the same normalised config, `version`, key settings and input
///   contents give the same outputs. When a change of code changes what a kind writes for the same
///   config, bump `version` (it changes every key of that kind, so only then).
/// - Keep `normalize` idempotent (`normalize(normalize(t)) == normalize(t)`): fill defaults, reject
///   unknown keys, leave inputs as written. A new key must be left out of the table while it has its
///   default (`skip_serializing_if`), or every existing recipe's key changes.
/// - Expect other stages, of any kind, to run at the same time on other threads under `--jobs N`:
///   touch no process-wide state (current directory, environment) and share nothing mutable.
/// - Write only into `out_dir` and `scratch_dir`; put resumable checkpoints in `scratch_dir`. Check
///   `ctx.cancel` between steps of long loops and return [`StageError::Cancelled`].
/// - Optionally write `metrics.json` (a JSON object) into `out_dir`; it is recorded with the output.
///   The keys other code reads (tokens, per-domain eval losses, task scores, parameter counts), which
///   kind writes which and who reads them, are the contract documented on [`StageMetrics`]; readers
///   go through that type. Other keys are shown by `sheared compare`; no code depends on them.
/// - List in `settings_in_key` exactly the `[settings]` keys that change its outputs.
/// - Keep `preview` best-effort and cheap: read config files, not weights; leave out what is not
///   known yet; never fail. A preview is never part of a key.
///
/// Each kind reads its table through one typed round trip, [`normalize_typed`], in `normalize` and
/// again (on the normalised table) in `validate`, `preview` and `run`.
pub trait Stage: Send + Sync {
    /// The `kind = ".."` name.
    fn kind(&self) -> &'static str;
    /// Implementation version: bump when the kind's outputs change for the same config. Part of the key.
    fn version(&self) -> u32;
    /// One-line description for `sheared kinds` and docs.
    fn about(&self) -> &'static str;
    /// Parse `table` (the stage table without `kind`), reject unknown keys, fill defaults, and return
    /// the canonical table. Inputs stay as they are written. Usually [`normalize_typed`].
    fn normalize(&self, table: &toml::Table) -> Result<toml::Table, StageError>;
    /// Which `[settings]` keys enter this kind's cache key (e.g. `["seed", "device"]`).
    fn settings_in_key(&self) -> &'static [&'static str] {
        &["seed"]
    }
    /// Keys of the normalised config that change how the stage runs but not one bit of its outputs
    /// (e.g. `optimizer_offload`): the runner leaves them out of the cache key, so toggling one
    /// reuses committed outputs. A key belongs here only if a test shows the outputs are identical.
    fn execution_keys(&self) -> &'static [&'static str] {
        &[]
    }
    /// Checks that need only the normalised config (before any compute, before upstream stages run).
    fn validate(&self, _config: &toml::Table) -> Result<(), StageError> {
        Ok(())
    }
    /// What `sheared plan` shows about this stage before it runs: parameter counts, token budget
    /// ([`preview`]). Best-effort and cheap (config files, not weights); never part of the key.
    fn preview(&self, _config: &toml::Table, _inputs: &PreviewInputs<'_>) -> Preview {
        Preview::default()
    }
    /// Do the work. Write outputs to `ctx.out_dir`; write `metrics.json` there to have it recorded.
    fn run(&self, ctx: &StageContext<'_>) -> Result<(), StageError>;
}

/// Deserialise `table` into the kind's typed config `T` (which should use `#[serde(deny_unknown_fields)]`
/// and defaults) and serialise it back, so the returned table has every default filled in.
pub fn normalize_typed<T: DeserializeOwned + Serialize>(
    table: &toml::Table,
) -> Result<(T, toml::Table), StageError> {
    let typed: T =
        toml::Value::Table(table.clone())
            .try_into()
            .map_err(|error: toml::de::Error| {
                StageError::config(String::new(), error.message().to_string())
            })?;
    match toml::Value::try_from(&typed).map_err(|error| StageError::Other(error.into()))? {
        toml::Value::Table(back) => Ok((typed, back)),
        other => Err(StageError::Other(anyhow::anyhow!(
            "config serialised to a {} instead of a table",
            other.type_str()
        ))),
    }
}

/// An input reference as written in a recipe. Stage configs use this type for their input fields so
/// that normalisation round-trips them unchanged.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, Serialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum InputRef {
    Stage {
        stage: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<String>,
    },
    Path {
        path: String,
    },
}

/// The stage kinds known to this binary.
#[derive(Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Box<dyn Stage>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn register(&mut self, stage: Box<dyn Stage>) {
        self.kinds.insert(stage.kind(), stage);
    }
    pub fn get(&self, kind: &str) -> Option<&dyn Stage> {
        self.kinds.get(kind).map(|stage| stage.as_ref())
    }
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.kinds.keys().copied()
    }
}
