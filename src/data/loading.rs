//! Loading policies: which domain each training sequence is drawn from.
//!
//! - `static`: fixed weights (e.g. the RedPajama proportions), normalised.
//! - `uniform`: every domain equally often.
//! - `dynamic`: Sheared LLaMA's dynamic batch loading (paper, arXiv 2310.06694
//!   §2.2, Algorithm 1). After each evaluation (or every
//!   `update_every` steps) the weights move toward the domains whose eval loss lags furthest behind a
//!   reference loss:
//!
//! ```text
//! Δ_i = ℓ_i − ℓref_i                      (clamp_at_zero: Δ_i = max(Δ_i, 0))
//! α   = softmax(ln w_i + η·Δ_i)           (= w_i·e^{ηΔ_i} / Σ_j w_j·e^{ηΔ_j})
//! w'  = normalise((1 − c)·α + c/k)        (c = smoothing, k = number of domains)
//! ```
//!
//! **Default: the reference code's variant** (`clamp_at_zero = false`, `smoothing = 1e-4`, `eta = 1`).
//! That is the rule that produced the released Sheared-LLaMA models (the maintainer confirmed in
//! LLM-Shearing issue #42 that the code, not Algorithm 1, is what ran), so it is the one whose published
//! curves a user can compare against; the smoothing also keeps every domain's weight above c/k, so no
//! domain is starved for good. The paper's Algorithm 1 is `clamp_at_zero = true, smoothing = 0`: domains
//! already at or below their reference then keep their relative weight instead of losing it.
//!
//! Reference losses come from an explicit table, from another stage's `metrics.json`
//! (`{"domains": {"<domain>": {"loss": ..}}}`, e.g. the source model's eval: the paper's "source
//! reference"), or from a scaling-law fit ([`scaling_law`]).

pub mod scaling_law;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::stage::{InputRef, MetricsError, StageMetrics};

#[derive(Debug, thiserror::Error)]
pub enum LoadingError {
    /// A config value is wrong; `key` is relative to the `loading` table (`reference.cc`).
    #[error("`{key}`: {message}")]
    Config { key: String, message: String },
    /// The reference losses could not be read from the given stage output.
    #[error("reference losses from {path}: {message}")]
    ReferenceFile { path: String, message: String },
    /// Eval losses handed to [`LoadingPolicy::update`] are unusable.
    #[error("dynamic loading update: {0}")]
    Update(String),
    /// A restored state does not belong to this policy.
    #[error("loading-policy state: {0}")]
    State(String),
}

fn config_error(key: impl Into<String>, message: impl Into<String>) -> LoadingError {
    LoadingError::Config {
        key: key.into(),
        message: message.into(),
    }
}

/// The `loading = { policy = "...", ... }` table of a stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "policy", rename_all = "snake_case", deny_unknown_fields)]
pub enum LoadingConfig {
    /// `{ policy = "static", weights = { cc = 0.67, github = 0.045, ... } }`
    Static { weights: BTreeMap<String, f64> },
    /// `{ policy = "uniform" }`
    #[default]
    Uniform,
    /// `{ policy = "dynamic", reference = ..., initial_weights = {..}, eta = 1.0, smoothing = 1e-4, ... }`
    Dynamic(DynamicConfig),
}

/// Options of dynamic batch loading; see the module docs for the rule and the default variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamicConfig {
    /// Target losses per domain.
    pub reference: ReferenceSpec,
    /// Starting weights (normalised); absent = uniform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_weights: Option<BTreeMap<String, f64>>,
    /// Step size η of the exponentiated update (1 in the paper and the code).
    #[serde(default = "default_eta")]
    pub eta: f64,
    /// c in `(1 − c)·α + c/k` (1e-4 in the code, 0 in the paper).
    #[serde(default = "default_smoothing")]
    pub smoothing: f64,
    /// Δ ← max(Δ, 0) as in the paper's Algorithm 1 (false in the code).
    #[serde(default)]
    pub clamp_at_zero: bool,
    /// Update every this many steps; absent = after each evaluation (the paper).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_every: Option<u64>,
}

fn default_eta() -> f64 {
    1.0
}
fn default_smoothing() -> f64 {
    1e-4
}

/// Where the reference losses come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ReferenceSpec {
    /// `{ stage = "eval-source" }` or `{ path = "..." }`: a folder (or file) with `metrics.json`
    /// holding `{"domains": {"<domain>": {"loss": ..}}}`.
    Input(InputRef),
    /// `{ scaling_law = { sizes = [...], losses = { cc = [...], ... }, target_params = N } }`
    ScalingLaw { scaling_law: ScalingLawSpec },
    /// `{ cc = 1.87, github = 0.69, ... }`
    Table(BTreeMap<String, f64>),
}

/// Fit `L(N) = a/N^b + c` per domain to losses of models of `sizes` parameters; evaluate at `target_params`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalingLawSpec {
    pub sizes: Vec<f64>,
    pub losses: BTreeMap<String, Vec<f64>>,
    pub target_params: f64,
}

impl LoadingConfig {
    /// Checks that need no data (weights sum positive, option ranges). Keys are relative to `loading`.
    pub fn validate(&self) -> Result<(), LoadingError> {
        match self {
            LoadingConfig::Static { weights } => check_weight_values("weights", weights),
            LoadingConfig::Uniform => Ok(()),
            LoadingConfig::Dynamic(dynamic) => {
                if let Some(initial) = &dynamic.initial_weights {
                    check_weight_values("initial_weights", initial)?;
                }
                if !dynamic.eta.is_finite() || dynamic.eta < 0.0 {
                    return Err(config_error(
                        "eta",
                        format!(
                            "{} must be a finite number >= 0 (the paper uses 1)",
                            dynamic.eta
                        ),
                    ));
                }
                if !(0.0..=1.0).contains(&dynamic.smoothing) {
                    return Err(config_error(
                        "smoothing",
                        format!(
                            "{} must be in [0, 1] (code: 1e-4, paper: 0)",
                            dynamic.smoothing
                        ),
                    ));
                }
                if dynamic.update_every == Some(0) {
                    return Err(config_error(
                        "update_every",
                        "must be at least 1 step (omit it to update after each evaluation)",
                    ));
                }
                match &dynamic.reference {
                    ReferenceSpec::Table(table) => {
                        for (domain, loss) in table {
                            if !loss.is_finite() {
                                return Err(config_error(
                                    format!("reference.{domain}"),
                                    format!("{loss} is not a finite loss"),
                                ));
                            }
                        }
                        Ok(())
                    }
                    ReferenceSpec::ScalingLaw { scaling_law } => {
                        if !(scaling_law.target_params > 0.0
                            && scaling_law.target_params.is_finite())
                        {
                            return Err(config_error(
                                "reference.scaling_law.target_params",
                                "must be the target model's total parameter count",
                            ));
                        }
                        for (domain, losses) in &scaling_law.losses {
                            scaling_law::fit(&scaling_law.sizes, losses).map_err(|error| {
                                config_error(
                                    format!("reference.scaling_law.losses.{domain}"),
                                    error.to_string(),
                                )
                            })?;
                        }
                        Ok(())
                    }
                    ReferenceSpec::Input(_) => Ok(()),
                }
            }
        }
    }
}

fn check_weight_values(key: &str, weights: &BTreeMap<String, f64>) -> Result<(), LoadingError> {
    for (domain, weight) in weights {
        if !(weight.is_finite() && *weight >= 0.0) {
            return Err(config_error(
                format!("{key}.{domain}"),
                format!("{weight} must be a finite number >= 0"),
            ));
        }
    }
    let total: f64 = weights.values().sum();
    if total <= 0.0 {
        return Err(config_error(
            key,
            format!("weights sum to {total}; at least one domain needs a positive weight"),
        ));
    }
    Ok(())
}

fn suggestion(name: &str, domains: &[String]) -> String {
    domains
        .iter()
        .map(|domain| (strsim::jaro_winkler(name, domain), domain))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, domain)| format!(" (did you mean `{domain}`?)"))
        .unwrap_or_default()
}

/// Orders a per-domain table by `domains`, failing on an unknown or a missing domain.
pub fn table_in_domain_order<V: Clone>(
    key: &str,
    table: &BTreeMap<String, V>,
    domains: &[String],
) -> Result<Vec<V>, LoadingError> {
    if let Some(unknown) = table.keys().find(|name| !domains.contains(name)) {
        return Err(config_error(
            format!("{key}.{unknown}"),
            format!(
                "unknown domain{}; the data has domains [{}]",
                suggestion(unknown, domains),
                domains.join(", ")
            ),
        ));
    }
    domains
        .iter()
        .map(|domain| {
            table.get(domain).cloned().ok_or_else(|| {
                config_error(
                    key,
                    format!(
                        "domain `{domain}` is missing; give a value for every domain [{}]",
                        domains.join(", ")
                    ),
                )
            })
        })
        .collect()
}

fn normalised(weights: &[f64]) -> Vec<f64> {
    let total: f64 = weights.iter().sum();
    weights.iter().map(|w| w / total).collect()
}

/// Reads per-domain losses from a `metrics.json` (a file, or a folder containing one):
/// `{"domains": {"<domain>": {"loss": <number>}}}`. Returns them in `domains` order.
pub fn reference_from_metrics(path: &Path, domains: &[String]) -> Result<Vec<f64>, LoadingError> {
    let file = StageMetrics::file_in(path);
    let file_error = |message: String| LoadingError::ReferenceFile {
        path: file.display().to_string(),
        message,
    };
    // `MetricsError` names the file itself; the variant's `path` already says it once.
    let metrics = StageMetrics::read(&file).map_err(|error| match error {
        MetricsError::Read { source, .. } => file_error(source.to_string()),
        MetricsError::Parse { source, .. } => file_error(source.to_string()),
    })?;
    let Some(table) = &metrics.domains else {
        return Err(file_error(
            "no `domains` object; expected {\"domains\": {\"<domain>\": {\"loss\": ..}}}".into(),
        ));
    };
    let mut losses = Vec::with_capacity(domains.len());
    for domain in domains {
        let loss = table
            .get(domain)
            .and_then(|entry| entry.loss)
            .ok_or_else(|| {
                file_error(format!(
                    "no `domains.{domain}.loss`; the reference must cover every training domain"
                ))
            })?;
        if !loss.is_finite() {
            return Err(file_error(format!("`domains.{domain}.loss` is {loss}")));
        }
        losses.push(loss);
    }
    Ok(losses)
}

/// Resolves `spec` to one reference loss per domain, in `domains` order. `input` is the materialised
/// path of a `{ stage = .. }` / `{ path = .. }` reference (the runner's input `loading.reference`).
pub fn resolve_reference(
    spec: &ReferenceSpec,
    domains: &[String],
    input: Option<&Path>,
) -> Result<Vec<f64>, LoadingError> {
    match spec {
        ReferenceSpec::Table(table) => table_in_domain_order("reference", table, domains),
        ReferenceSpec::Input(_) => {
            let path = input.ok_or_else(|| {
                config_error("reference", "the reference input was not materialised")
            })?;
            reference_from_metrics(path, domains)
        }
        ReferenceSpec::ScalingLaw { scaling_law: law } => {
            let per_domain =
                table_in_domain_order("reference.scaling_law.losses", &law.losses, domains)?;
            domains
                .iter()
                .zip(per_domain)
                .map(|(domain, losses)| {
                    scaling_law::fit(&law.sizes, &losses)
                        .map(|fit| fit.loss(law.target_params))
                        .map_err(|error| {
                            config_error(
                                format!("reference.scaling_law.losses.{domain}"),
                                error.to_string(),
                            )
                        })
                })
                .collect()
        }
    }
}

/// One dynamic-loading update, in the policy's history and in `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyUpdate {
    /// The training step after which the update happened.
    pub step: u64,
    pub losses: Vec<f64>,
    /// Δ_i as used (after the optional clamp).
    pub deltas: Vec<f64>,
    /// The weights after the update.
    pub weights: Vec<f64>,
}

/// The serialisable state of a policy (part of every checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyState {
    pub domains: Vec<String>,
    pub weights: Vec<f64>,
    pub history: Vec<PolicyUpdate>,
}

/// Parameters of the dynamic rule, resolved against the data's domains.
#[derive(Debug, Clone, PartialEq)]
pub struct DynamicRule {
    pub reference: Vec<f64>,
    pub eta: f64,
    pub smoothing: f64,
    pub clamp_at_zero: bool,
    pub update_every: Option<u64>,
}

/// The rule on plain numbers: returns (new weights, Δ as used). All slices are in domain order.
pub fn dynamic_update(weights: &[f64], losses: &[f64], rule: &DynamicRule) -> (Vec<f64>, Vec<f64>) {
    let deltas: Vec<f64> = losses
        .iter()
        .zip(&rule.reference)
        .map(|(loss, reference)| {
            let delta = loss - reference;
            if rule.clamp_at_zero {
                delta.max(0.0)
            } else {
                delta
            }
        })
        .collect();
    // softmax(ln w + ηΔ), computed with the max subtracted so large Δ cannot overflow
    let logits: Vec<f64> = weights
        .iter()
        .zip(&deltas)
        .map(|(w, delta)| w.ln() + rule.eta * delta)
        .collect();
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exponentials: Vec<f64> = logits.iter().map(|logit| (logit - max).exp()).collect();
    let alpha = normalised(&exponentials);
    let domain_count = weights.len() as f64;
    let smoothed: Vec<f64> = alpha
        .iter()
        .map(|a| (1.0 - rule.smoothing) * a + rule.smoothing / domain_count)
        .collect();
    (normalised(&smoothed), deltas)
}

/// A loading policy bound to the data's domains.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadingPolicy {
    domains: Vec<String>,
    weights: Vec<f64>,
    dynamic: Option<DynamicRule>,
    history: Vec<PolicyUpdate>,
}

impl LoadingPolicy {
    /// Binds `config` to `domains`, checking every domain name. `reference_input` is the materialised
    /// path of a `{ stage = .. }` reference. Fails before any compute on a bad table.
    pub fn new(
        config: &LoadingConfig,
        domains: &[String],
        reference_input: Option<&Path>,
    ) -> Result<Self, LoadingError> {
        config.validate()?;
        if domains.is_empty() {
            return Err(config_error("policy", "the data has no domains"));
        }
        let (weights, dynamic) = match config {
            LoadingConfig::Uniform => (vec![1.0; domains.len()], None),
            LoadingConfig::Static { weights } => {
                (table_in_domain_order("weights", weights, domains)?, None)
            }
            LoadingConfig::Dynamic(options) => {
                let weights = match &options.initial_weights {
                    Some(initial) => table_in_domain_order("initial_weights", initial, domains)?,
                    None => vec![1.0; domains.len()],
                };
                let rule = DynamicRule {
                    reference: resolve_reference(&options.reference, domains, reference_input)?,
                    eta: options.eta,
                    smoothing: options.smoothing,
                    clamp_at_zero: options.clamp_at_zero,
                    update_every: options.update_every,
                };
                (weights, Some(rule))
            }
        };
        if weights.iter().sum::<f64>() <= 0.0 {
            let key = if dynamic.is_some() {
                "initial_weights"
            } else {
                "weights"
            };
            return Err(config_error(
                key,
                "the weights of the data's domains sum to 0; give at least one a positive weight",
            ));
        }
        Ok(LoadingPolicy {
            domains: domains.to_vec(),
            weights: normalised(&weights),
            dynamic,
            history: Vec::new(),
        })
    }

    pub fn domains(&self) -> &[String] {
        &self.domains
    }

    /// Current sampling weights, in `domains()` order, summing to 1.
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// The dynamic rule, or `None` for `static`/`uniform`.
    pub fn dynamic_rule(&self) -> Option<&DynamicRule> {
        self.dynamic.as_ref()
    }

    /// Whether `update` must be called after the optimiser step numbered `steps_done` (1-based count)
    /// when the policy updates every `update_every` steps. Policies that update after each eval
    /// return `false` here; the caller updates them when it evaluates.
    pub fn wants_update_at(&self, steps_done: u64) -> bool {
        matches!(&self.dynamic, Some(DynamicRule { update_every: Some(every), .. }) if steps_done.is_multiple_of(*every))
    }

    /// Whether the policy updates after each evaluation (dynamic without `update_every`).
    pub fn updates_on_eval(&self) -> bool {
        matches!(
            &self.dynamic,
            Some(DynamicRule {
                update_every: None,
                ..
            })
        )
    }

    /// Applies the dynamic rule to per-domain eval `losses` (domain order). No-op for static/uniform.
    /// Returns the update made, if any. Non-finite losses are refused and leave the weights unchanged.
    pub fn update(
        &mut self,
        step: u64,
        losses: &[f64],
    ) -> Result<Option<&PolicyUpdate>, LoadingError> {
        let Some(rule) = &self.dynamic else {
            return Ok(None);
        };
        if losses.len() != self.domains.len() {
            return Err(LoadingError::Update(format!(
                "{} losses for {} domains",
                losses.len(),
                self.domains.len()
            )));
        }
        if let Some(index) = losses.iter().position(|loss| !loss.is_finite()) {
            return Err(LoadingError::Update(format!(
                "eval loss of domain `{}` is {}; weights left unchanged",
                self.domains[index], losses[index]
            )));
        }
        let (weights, deltas) = dynamic_update(&self.weights, losses, rule);
        self.weights = weights.clone();
        self.history.push(PolicyUpdate {
            step,
            losses: losses.to_vec(),
            deltas,
            weights,
        });
        Ok(self.history.last())
    }

    pub fn history(&self) -> &[PolicyUpdate] {
        &self.history
    }

    /// `{domain: weight}` in domain order, for `metrics.jsonl`.
    pub fn domain_weights(&self) -> serde_json::Map<String, serde_json::Value> {
        self.domains
            .iter()
            .cloned()
            .zip(self.weights.iter().map(|w| serde_json::json!(w)))
            .collect()
    }

    pub fn state(&self) -> PolicyState {
        PolicyState {
            domains: self.domains.clone(),
            weights: self.weights.clone(),
            history: self.history.clone(),
        }
    }

    /// Restores a state saved by [`Self::state`] of a policy over the same domains.
    pub fn restore(&mut self, state: PolicyState) -> Result<(), LoadingError> {
        if state.domains != self.domains {
            return Err(LoadingError::State(format!(
                "saved for domains [{}], this run has [{}]",
                state.domains.join(", "),
                self.domains.join(", ")
            )));
        }
        if state.weights.len() != self.domains.len()
            || state.weights.iter().any(|w| !w.is_finite() || *w < 0.0)
        {
            return Err(LoadingError::State("weights are malformed".into()));
        }
        self.weights = state.weights;
        self.history = state.history;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domains() -> Vec<String> {
        ["cc", "github", "wiki"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn parse(text: &str) -> LoadingConfig {
        let table: toml::Table = toml::from_str(text).unwrap();
        table["loading"].clone().try_into().unwrap()
    }

    fn rule(clamp_at_zero: bool, smoothing: f64) -> DynamicRule {
        DynamicRule {
            reference: vec![2.0, 1.0, 1.5],
            eta: 1.0,
            smoothing,
            clamp_at_zero,
            update_every: None,
        }
    }

    #[test]
    fn code_variant_equals_the_formula() {
        let weights = [0.5, 0.2, 0.3];
        let losses = [2.3, 0.9, 1.5]; // Δ = [0.3, -0.1, 0.0]
        let (new, deltas) = dynamic_update(&weights, &losses, &rule(false, 1e-4));
        for (got, want) in deltas.iter().zip([0.3, -0.1, 0.0]) {
            assert!((got - want).abs() < 1e-12);
        }
        let raw = [0.5 * 0.3f64.exp(), 0.2 * (-0.1f64).exp(), 0.3];
        let total: f64 = raw.iter().sum();
        let expected: Vec<f64> = raw
            .iter()
            .map(|r| 0.9999 * r / total + 1e-4 / 3.0)
            .collect();
        let expected_total: f64 = expected.iter().sum();
        for (got, want) in new.iter().zip(&expected) {
            assert!(
                (got - want / expected_total).abs() < 1e-12,
                "{got} vs {want}"
            );
        }
        assert!((new.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn paper_variant_clamps_and_does_not_smooth() {
        let weights = [0.5, 0.2, 0.3];
        let losses = [2.3, 0.9, 1.5];
        let (new, deltas) = dynamic_update(&weights, &losses, &rule(true, 0.0));
        assert_eq!(deltas[1], 0.0);
        let raw = [0.5 * 0.3f64.exp(), 0.2, 0.3];
        let total: f64 = raw.iter().sum();
        for (got, r) in new.iter().zip(raw) {
            assert!((got - r / total).abs() < 1e-12);
        }
    }

    #[test]
    fn parses_every_policy_form() {
        assert_eq!(
            parse("loading = { policy = \"uniform\" }"),
            LoadingConfig::Uniform
        );
        let static_config = parse(
            "loading = { policy = \"static\", weights = { cc = 0.67, github = 0.045, wiki = 0.045 } }",
        );
        let policy = LoadingPolicy::new(&static_config, &domains(), None).unwrap();
        assert!((policy.weights()[0] - 0.67 / 0.76).abs() < 1e-12);

        let table = parse(
            "loading = { policy = \"dynamic\", reference = { cc = 2.0, github = 1.0, wiki = 1.5 } }",
        );
        let LoadingConfig::Dynamic(options) = &table else {
            panic!()
        };
        assert!(!options.clamp_at_zero && options.smoothing == 1e-4 && options.eta == 1.0);
        let policy = LoadingPolicy::new(&table, &domains(), None).unwrap();
        assert_eq!(
            policy.dynamic_rule().unwrap().reference,
            vec![2.0, 1.0, 1.5]
        );
        assert!(policy.updates_on_eval());

        let stage = parse(
            "loading = { policy = \"dynamic\", reference = { stage = \"eval-source\" }, update_every = 10 }",
        );
        let LoadingConfig::Dynamic(options) = &stage else {
            panic!()
        };
        assert_eq!(
            options.reference,
            ReferenceSpec::Input(InputRef::Stage {
                stage: "eval-source".into(),
                file: None
            })
        );

        let law = parse(
            "loading = { policy = \"dynamic\", reference = { scaling_law = { sizes = [6738415616, 13015864320, 68976648192], \
             losses = { cc = [1.7520, 1.6680, 1.4621], github = [0.6216, 0.5791, 0.4890], wiki = [1.4844, 1.3945, 1.2118] }, \
             target_params = 2701560320 } } }",
        );
        let policy = LoadingPolicy::new(&law, &domains(), None).unwrap();
        let reference = &policy.dynamic_rule().unwrap().reference;
        assert!(
            (reference[0] - 1.8712).abs() < 5e-4 && (reference[2] - 1.6297).abs() < 5e-4,
            "{reference:?}"
        );

        let unknown_key: Result<LoadingConfig, _> = toml::from_str::<toml::Table>(
            "policy = \"dynamic\"\nreference = { cc = 1.0 }\netta = 2.0",
        )
        .unwrap()
        .try_into();
        assert!(unknown_key.is_err());
    }

    #[test]
    fn bad_tables_fail_before_compute_with_the_key() {
        let missing =
            parse("loading = { policy = \"dynamic\", reference = { cc = 2.0, github = 1.0 } }");
        let error = LoadingPolicy::new(&missing, &domains(), None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("`wiki` is missing"), "{error}");

        let unknown = parse(
            "loading = { policy = \"dynamic\", reference = { cc = 2.0, github = 1.0, wikii = 1.0, wiki = 1.0 } }",
        );
        let error = LoadingPolicy::new(&unknown, &domains(), None)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("reference.wikii") && error.contains("did you mean `wiki`"),
            "{error}"
        );

        let zero = parse(
            "loading = { policy = \"static\", weights = { cc = 0.0, github = 0.0, wiki = 0.0 } }",
        );
        let error = LoadingPolicy::new(&zero, &domains(), None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("sum to 0"), "{error}");

        let negative = parse(
            "loading = { policy = \"static\", weights = { cc = -1.0, github = 2.0, wiki = 0.0 } }",
        );
        assert!(
            negative
                .validate()
                .unwrap_err()
                .to_string()
                .contains("weights.cc")
        );
    }

    #[test]
    fn reference_from_an_eval_stage_output() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("metrics.json"),
            r#"{"domains": {"cc": {"loss": 2.0}, "github": {"loss": 1.0}, "wiki": {"loss": 1.5}, "extra": {"loss": 9.0}}}"#,
        )
        .unwrap();
        assert_eq!(
            reference_from_metrics(dir.path(), &domains()).unwrap(),
            vec![2.0, 1.0, 1.5]
        );
        std::fs::write(
            dir.path().join("metrics.json"),
            r#"{"domains": {"cc": {"loss": 2.0}}}"#,
        )
        .unwrap();
        let error = reference_from_metrics(dir.path(), &domains())
            .unwrap_err()
            .to_string();
        assert!(error.contains("domains.github.loss"), "{error}");
    }

    #[test]
    fn updates_are_recorded_and_state_round_trips() {
        let config = parse(
            "loading = { policy = \"dynamic\", reference = { cc = 2.0, github = 1.0, wiki = 1.5 } }",
        );
        let mut policy = LoadingPolicy::new(&config, &domains(), None).unwrap();
        policy.update(10, &[2.5, 1.0, 1.4]).unwrap();
        assert!(
            policy.weights()[0] > policy.weights()[1] && policy.weights()[1] > policy.weights()[2]
        );
        assert!(policy.update(20, &[f64::NAN, 1.0, 1.0]).is_err());
        assert_eq!(policy.history().len(), 1);

        let json = serde_json::to_string(&policy.state()).unwrap();
        let mut restored = LoadingPolicy::new(&config, &domains(), None).unwrap();
        restored
            .restore(serde_json::from_str(&json).unwrap())
            .unwrap();
        assert_eq!(restored, policy);

        let mut static_policy =
            LoadingPolicy::new(&LoadingConfig::Uniform, &domains(), None).unwrap();
        assert!(
            static_policy
                .update(10, &[9.0, 9.0, 9.0])
                .unwrap()
                .is_none()
        );
        assert_eq!(static_policy.weights(), &[1.0 / 3.0; 3]);
    }
}
