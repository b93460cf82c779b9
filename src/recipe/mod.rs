//! Recipes: TOML files that describe a DAG of stages (see `docs/recipes.md`).
//!
//! Loading a recipe resolves `extends` chains (deep merge), applies `--set` overrides, expands
//! `[sweep]` into variants, normalises every stage through its kind ([`crate::stage::Stage::normalize`])
//! and finds its inputs. Every error names `file:line:col` and the key, because a recipe is code that
//! people edit by hand.

mod inputs;
mod merge;
mod source;
mod sweep;

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use toml::{Table, Value};

pub use inputs::{InputSite, as_input, find_inputs, map_inputs};
pub use merge::{did_you_mean, parse_key, parse_value, suggest};
pub use source::{Location, SourceMap, join_dotted, split_dotted};
pub use sweep::{Variant, variant_name};

use crate::stage::{InputRef, Registry, Resources, Settings, StageError};

/// Why a recipe cannot be used. Each message says where and what to do.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("cannot read recipe {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{location}: {message}")]
    At { location: Location, message: String },
    #[error("`extends` cycle: {chain}; remove one of these `extends`")]
    ExtendsCycle { chain: String },
    #[error("--set {assignment}: {message}")]
    Set { assignment: String, message: String },
}

/// Options from the command line that change a recipe.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `KEY=VALUE` assignments (`stages.prune.target.hidden=1024`), TOML value syntax.
    pub overrides: Vec<String>,
    /// `--device`: replaces `settings.device`.
    pub device: Option<String>,
}

/// One stage as declared in a recipe, normalised by its kind.
#[derive(Debug, Clone)]
pub struct StageDecl {
    pub name: String,
    pub kind: String,
    /// The kind's normalised config (defaults filled, inputs as written with absolute paths).
    pub config: Table,
    pub inputs: Vec<InputSite>,
    /// `[stages.NAME.resources]`: what its Slurm job asks for (not part of the key).
    pub resources: Resources,
}

/// A loaded recipe (one sweep variant, if the file has a `[sweep]`).
#[derive(Debug, Clone)]
pub struct Recipe {
    /// `name` of the recipe, plus `[variant]` for sweep variants.
    pub name: String,
    /// `name` without the variant.
    pub base_name: String,
    pub variant: Option<Variant>,
    /// The recipe file as given on the command line (canonical).
    pub file: PathBuf,
    pub settings: Settings,
    pub stages: BTreeMap<String, StageDecl>,
    pub sources: Arc<SourceMap>,
}

impl Recipe {
    /// Where a key of stage `stage` (dotted inside the stage table) was written.
    pub fn locate(&self, stage: &str, dotted: &str) -> Location {
        self.sources.locate_dotted(&["stages", stage], dotted)
    }
}

const TOP_LEVEL_KEYS: [&str; 4] = ["name", "description", "settings", "stages"];

/// Load a recipe file: every variant if it has a `[sweep]`, else one recipe.
pub fn load(
    path: &Path,
    options: &LoadOptions,
    registry: &Registry,
) -> Result<Vec<Recipe>, RecipeError> {
    let mut chain = Vec::new();
    let (mut table, sources) = load_chain(path, &mut chain)?;
    let file = chain.first().cloned().unwrap_or_else(|| path.to_path_buf());
    let sources = Arc::new(sources);
    let cwd = std::env::current_dir().unwrap_or_default();
    for assignment in &options.overrides {
        let set_error = |message: String| RecipeError::Set {
            assignment: assignment.clone(),
            message,
        };
        let (key, value_text) = assignment.split_once('=').ok_or_else(|| {
            set_error("write KEY=VALUE, e.g. `--set stages.prune.target.hidden=1024`".into())
        })?;
        let path = parse_key(key.trim()).map_err(set_error)?;
        let mut value = parse_value(value_text.trim()).map_err(set_error)?;
        resolve_paths(&mut value, &cwd);
        apply_override(&mut table, &path, value, registry).map_err(set_error)?;
    }
    let sweep = table.remove("sweep");
    match sweep {
        None => Ok(vec![build(
            table, None, &file, &sources, options, registry,
        )?]),
        Some(Value::Table(sweep)) => {
            let variants = sweep::expand(&sweep).map_err(|error| {
                let mut path = vec!["sweep".to_string()];
                match error.key.strip_prefix("labels.") {
                    Some(axis) => path.extend(["labels".to_string(), axis.to_string()]),
                    None => path.push(error.key.clone()),
                }
                RecipeError::At {
                    location: sources.locate(&path),
                    message: format!("[sweep] `{}`: {}", error.key, error.message),
                }
            })?;
            variants
                .into_iter()
                .map(|variant| {
                    let mut cell = table.clone();
                    for (key, value) in &variant.overrides {
                        let path = parse_key(key).map_err(|message| RecipeError::At {
                            location: sources.locate(&["sweep".to_string(), key.clone()]),
                            message,
                        })?;
                        apply_override(&mut cell, &path, value.clone(), registry).map_err(
                            |message| RecipeError::At {
                                location: sources.locate(&["sweep".to_string(), key.clone()]),
                                message: format!("[sweep] `{key}`: {message}"),
                            },
                        )?;
                    }
                    build(cell, Some(variant), &file, &sources, options, registry)
                })
                .collect()
        }
        Some(other) => Err(RecipeError::At {
            location: sources.locate(&["sweep".to_string()]),
            message: format!("`sweep` must be a table, not a {}", other.type_str()),
        }),
    }
}

/// Read `path` and everything it `extends`, merged; `chain` collects the canonical files in order.
fn load_chain(path: &Path, chain: &mut Vec<PathBuf>) -> Result<(Table, SourceMap), RecipeError> {
    let canonical = path.canonicalize().map_err(|source| RecipeError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if chain.contains(&canonical) {
        let mut names: Vec<String> = chain
            .iter()
            .map(|file| file.display().to_string())
            .collect();
        names.push(canonical.display().to_string());
        return Err(RecipeError::ExtendsCycle {
            chain: names.join(" → "),
        });
    }
    chain.push(canonical.clone());
    let text = std::fs::read_to_string(&canonical).map_err(|source| RecipeError::Read {
        path: canonical.clone(),
        source,
    })?;
    let file = source::SourceFile::new(&canonical, &text);
    let mut table: Table = toml::from_str(&text).map_err(|error| RecipeError::At {
        location: match error.span() {
            Some(span) => file.location_of_offset(span.start),
            None => Location {
                file: canonical.clone(),
                line: None,
            },
        },
        message: format!("invalid TOML: {}", error.message().trim()),
    })?;
    let directory = canonical
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    for value in table
        .iter_mut()
        .filter(|(key, _)| key.as_str() == "stages" || key.as_str() == "sweep")
        .map(|(_, v)| v)
    {
        resolve_paths(value, &directory);
    }
    let this_file = SourceMap { files: vec![file] };
    match table.remove("extends") {
        None => Ok((table, this_file)),
        Some(Value::String(base)) => {
            let base_path = directory.join(&base);
            if !base_path.exists() {
                return Err(RecipeError::At {
                    location: this_file.locate(&["extends".to_string()]),
                    message: format!(
                        "`extends = \"{base}\"`: {} does not exist",
                        base_path.display()
                    ),
                });
            }
            let (mut merged, base_sources) = load_chain(&base_path, chain)?;
            // A recipe's name is its own (or its file's stem), never its base's: `b.toml` that extends
            // `a.toml` to change one value is a second experiment, compared beside the first.
            merged.remove("name");
            merge::deep_merge(&mut merged, table);
            let mut sources = this_file;
            sources.files.extend(base_sources.files);
            Ok((merged, sources))
        }
        Some(other) => Err(RecipeError::At {
            location: this_file.locate(&["extends".to_string()]),
            message: format!(
                "`extends` must be a path string, not a {}",
                other.type_str()
            ),
        }),
    }
}

/// Make `{ path = .. }` inputs absolute, relative to `directory` (the file that wrote them).
fn resolve_paths(value: &mut Value, directory: &Path) {
    map_inputs(value, &mut |reference| match reference {
        InputRef::Path { path } => {
            let mut table = Table::new();
            table.insert(
                "path".into(),
                Value::String(absolute(directory, Path::new(path)).display().to_string()),
            );
            Some(Value::Table(table))
        }
        InputRef::Stage { .. } => None,
    });
}

/// `directory/path` with `.` and `..` removed lexically (the target may not exist yet).
fn absolute(directory: &Path, path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        directory.join(path)
    };
    let mut clean = PathBuf::new();
    for component in joined.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                clean.pop();
            }
            other => clean.push(other),
        }
    }
    clean
}

/// The field names serde lists after "expected one of" in an unknown-field error (`` `a`, `b` ``),
/// for did-you-mean suggestions that include keys kept out of the normalised table.
fn expected_fields(message: &str) -> Vec<String> {
    let Some((_, list)) = message.split_once("expected one of") else {
        return Vec::new();
    };
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// Set `path` to `value`. The key must exist in the recipe, or be a key the stage's kind knows
/// (a default), so that a typo in `--set` is an error rather than a silently ignored value.
fn apply_override(
    table: &mut Table,
    path: &[String],
    value: Value,
    registry: &Registry,
) -> Result<(), String> {
    let dotted = join_dotted(path);
    let failure = match merge::set_existing(table, path, value.clone()) {
        Ok(()) => return Ok(()),
        Err(failure) => failure,
    };
    // A stage's `resources` (or one of its keys) and `settings.slurm`'s keys are the runner's, not
    // the kind's: settable whether or not the file writes them.
    let resources_at = match path {
        [stages, _, resources, rest @ ..]
            if stages.as_str() == "stages" && resources.as_str() == "resources" =>
        {
            Some(rest)
        }
        [settings, slurm, rest @ ..]
            if settings.as_str() == "settings" && slurm.as_str() == "slurm" =>
        {
            Some(rest)
        }
        _ => None,
    };
    if let Some(rest) = resources_at {
        let keys = resources_keys();
        return match rest {
            [] => {
                merge::insert_path(table, path, value);
                Ok(())
            }
            [key] if keys.contains(key) => {
                merge::insert_path(table, path, value);
                Ok(())
            }
            [key, ..] => Err(format!(
                "key `{dotted}` does not exist: `{key}` is not a resources key ({}){}",
                keys.join(", "),
                did_you_mean(key, keys.iter().map(String::as_str))
            )),
        };
    }
    // A key the stage's kind fills with a default is settable too.
    if path.len() >= 3 && path[0] == "stages" && failure.existing >= 2 {
        let stage = table
            .get("stages")
            .and_then(|stages| stages.get(&path[1]))
            .and_then(Value::as_table);
        if let Some(stage) = stage
            && let Some(kind) = registry.get(
                stage
                    .get("kind")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
            )
        {
            let mut raw = stage.clone();
            raw.remove("kind");
            if let Ok(normalized) = kind.normalize(&raw)
                && merge::has_path(&normalized, &path[2..])
                && merge::insert_path(table, path, value.clone())
            {
                return Ok(());
            }
            // A key that normalisation leaves out while it has its default (so that adding it kept
            // older cache keys): the kind knows it if the table with it still normalises, or fails
            // for a reason other than an unknown key (a bad value is reported by the stage itself,
            // naming the key).
            let mut with_value = raw.clone();
            let mut expected = Vec::new();
            if merge::insert_path(&mut with_value, &path[2..], value.clone()) {
                let known = match kind.normalize(&with_value) {
                    Ok(_) => true,
                    Err(error) => {
                        let text = error.to_string();
                        expected = expected_fields(&text);
                        !text.contains("unknown field")
                    }
                };
                if known && merge::insert_path(table, path, value) {
                    return Ok(());
                }
            }
            let mut candidates = failure.candidates.clone();
            candidates.extend(expected);
            if let Ok(normalized) = kind.normalize(&raw) {
                let inner = &path[2..failure.existing.max(2)];
                candidates.extend(merge::keys_at(&normalized, inner));
            }
            let missing = path.get(failure.existing).cloned().unwrap_or_default();
            return Err(format!(
                "key `{dotted}` does not exist: `{missing}` is not a key of `{}`{}",
                join_dotted(&path[..failure.existing]),
                did_you_mean(&missing, candidates.iter().map(String::as_str))
            ));
        }
    }
    let settings_keys = settings_keys();
    if path.len() == 2 && path[0] == "settings" && settings_keys.contains(&path[1]) {
        merge::insert_path(table, path, value);
        return Ok(());
    }
    if path.len() == 2 && path[0] == "settings" {
        // `[settings]` may be absent from the file; its keys are the type's either way.
        return Err(format!(
            "key `{dotted}` does not exist: `{}` is not a key of `settings`{}",
            path[1],
            did_you_mean(&path[1], settings_keys.iter().map(String::as_str))
        ));
    }
    let missing = path.get(failure.existing).cloned().unwrap_or_default();
    let mut candidates = failure.candidates;
    if failure.existing == 1 && path[0] == "settings" {
        candidates.extend(settings_keys);
    }
    let parent = if failure.existing == 0 {
        "the recipe".to_string()
    } else {
        format!("`{}`", join_dotted(&path[..failure.existing]))
    };
    Err(format!(
        "key `{dotted}` does not exist: `{missing}` is not a key of {parent}{}",
        did_you_mean(&missing, candidates.iter().map(String::as_str))
    ))
}

/// The keys `[settings]` accepts, as serde lists them for a key it does not know: read from the
/// type, keys that serialisation leaves out at their defaults (`precision`) included, so a new
/// setting needs no change here.
fn settings_keys() -> Vec<String> {
    let mut probe = Table::new();
    probe.insert("\u{1}".into(), Value::Integer(0));
    match Value::Table(probe).try_into::<Settings>() {
        Err(error) => expected_fields(error.message()),
        Ok(_) => Vec::new(),
    }
}

/// The keys of `[stages.NAME.resources]` and `[settings.slurm]`, read from the type like
/// [`settings_keys`].
fn resources_keys() -> Vec<String> {
    let mut probe = Table::new();
    probe.insert("\u{1}".into(), Value::Integer(0));
    match Value::Table(probe).try_into::<Resources>() {
        Err(error) => expected_fields(error.message()),
        Ok(_) => Vec::new(),
    }
}

/// Turn a merged table into a validated recipe.
fn build(
    mut table: Table,
    variant: Option<Variant>,
    file: &Path,
    sources: &Arc<SourceMap>,
    options: &LoadOptions,
    registry: &Registry,
) -> Result<Recipe, RecipeError> {
    let at = |path: &[&str], message: String| RecipeError::At {
        location: sources.locate(
            &path
                .iter()
                .map(|segment| segment.to_string())
                .collect::<Vec<_>>(),
        ),
        message,
    };
    for key in table.keys() {
        if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
            return Err(at(
                &[key],
                format!(
                    "unknown top-level key `{key}`{}; a recipe has `name`, `extends`, `[settings]`, `[stages.<name>]` and `[sweep]`",
                    did_you_mean(
                        key,
                        TOP_LEVEL_KEYS.iter().copied().chain(["extends", "sweep"])
                    )
                ),
            ));
        }
    }
    let base_name = match table.remove("name") {
        None => file
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_else(|| "recipe".into()),
        Some(Value::String(name)) if !name.trim().is_empty() => name,
        Some(_) => return Err(at(&["name"], "`name` must be a non-empty string".into())),
    };
    let mut settings: Settings = match table.remove("settings") {
        None => Settings::default(),
        Some(value @ Value::Table(_)) => value.try_into().map_err(|error: toml::de::Error| {
            let message = error.message().trim().to_string();
            let field = unknown_field(&message);
            let path: Vec<&str> = ["settings"].into_iter().chain(field.as_deref()).collect();
            at(
                &path,
                format!(
                    "[settings]: {}{}",
                    message,
                    suggestion_from_message(&message)
                ),
            )
        })?,
        Some(other) => {
            return Err(at(
                &["settings"],
                format!("`settings` must be a table, not a {}", other.type_str()),
            ));
        }
    };
    if let Some(device) = &options.device {
        settings.device = device.clone();
    }
    if !(settings.device_memory_gb.is_finite() && settings.device_memory_gb >= 0.0) {
        return Err(at(
            &["settings", "device_memory_gb"],
            format!(
                "`settings.device_memory_gb` = {} must be a number of GB >= 0 (0 = detect the device's memory)",
                settings.device_memory_gb
            ),
        ));
    }
    let stage_tables = match table.remove("stages") {
        None => Table::new(),
        Some(Value::Table(stages)) => stages,
        Some(other) => {
            return Err(at(
                &["stages"],
                format!("`stages` must be a table, not a {}", other.type_str()),
            ));
        }
    };
    let kinds: Vec<&str> = registry.kinds().collect();
    let mut stages = BTreeMap::new();
    for (name, value) in &stage_tables {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(at(
                &["stages", name],
                format!(
                    "stage name `{name}`: use letters, digits, `_` and `-` only (it names folders, events and `--only` targets)"
                ),
            ));
        }
        let Value::Table(stage_table) = value else {
            return Err(at(
                &["stages", name],
                format!("stage `{name}` must be a table with a `kind`"),
            ));
        };
        let kind_name = match stage_table.get("kind") {
            Some(Value::String(kind)) => kind.clone(),
            Some(_) => {
                return Err(at(
                    &["stages", name, "kind"],
                    format!("stage `{name}`: `kind` must be a string"),
                ));
            }
            None => {
                return Err(at(
                    &["stages", name],
                    format!(
                        "stage `{name}` has no `kind`; known kinds: {}",
                        kinds.join(", ")
                    ),
                ));
            }
        };
        let Some(kind) = registry.get(&kind_name) else {
            return Err(at(
                &["stages", name, "kind"],
                format!(
                    "stage `{name}`: unknown stage kind `{kind_name}`{}; known kinds: {}",
                    did_you_mean(&kind_name, kinds.iter().copied()),
                    kinds.join(", ")
                ),
            ));
        };
        let mut raw = stage_table.clone();
        raw.remove("kind");
        let resources = match raw.remove("resources") {
            None => Resources::default(),
            Some(value @ Value::Table(_)) => {
                value.try_into().map_err(|error: toml::de::Error| {
                    let message = error.message().trim().to_string();
                    let field = unknown_field(&message);
                    let path: Vec<&str> = ["stages", name.as_str(), "resources"]
                        .into_iter()
                        .chain(field.as_deref())
                        .collect();
                    at(
                        &path,
                        format!(
                            "stage `{name}`: [resources]: {message}{} (keys: partition, time, memory, cpus, gpus, extra_args)",
                            suggestion_from_message(&message)
                        ),
                    )
                })?
            }
            Some(other) => {
                return Err(at(
                    &["stages", name, "resources"],
                    format!(
                        "stage `{name}`: `resources` must be a table (`resources = {{ gpus = 8, time = \"12:00:00\" }}`), not a {}",
                        other.type_str()
                    ),
                ));
            }
        };
        let stage_error = |error: StageError| stage_error_at(sources, name, &raw, error);
        let config = kind.normalize(&raw).map_err(stage_error)?;
        kind.validate(&config).map_err(stage_error)?;
        let inputs = find_inputs(&config);
        for site in &inputs {
            let mut site_path: Vec<&str> = vec!["stages", name];
            site_path.extend(site.path.iter().map(String::as_str));
            match &site.reference {
                InputRef::Stage { stage, .. } if !stage_tables.contains_key(stage) => {
                    return Err(at(
                        &site_path,
                        format!(
                            "stage `{name}`: input `{}` refers to stage `{stage}`, which this recipe does not define{}",
                            site.key,
                            did_you_mean(stage, stage_tables.keys().map(String::as_str))
                        ),
                    ));
                }
                _ => {}
            }
        }
        stages.insert(
            name.clone(),
            StageDecl {
                name: name.clone(),
                kind: kind_name,
                config,
                inputs,
                resources,
            },
        );
    }
    let name = match &variant {
        Some(variant) => format!("{base_name}[{}]", variant.name),
        None => base_name.clone(),
    };
    Ok(Recipe {
        name,
        base_name,
        variant,
        file: file.to_path_buf(),
        settings,
        stages,
        sources: sources.clone(),
    })
}

impl Recipe {
    /// Every `{ path = .. }` input must exist before a run. (`plan` works without them, so that
    /// recipes for big machines can be inspected anywhere.)
    pub fn check_paths(&self) -> Result<(), RecipeError> {
        for (name, decl) in &self.stages {
            for site in &decl.inputs {
                if let InputRef::Path { path } = &site.reference
                    && !crate::util::glob::external_exists(Path::new(path))
                {
                    return Err(RecipeError::At {
                        location: self.sources.locate_dotted(&["stages", name], &site.key),
                        message: if crate::util::glob::is_glob(Path::new(path)) {
                            format!(
                                "stage `{name}`: input `{}`: glob {path} matches no file (relative paths are relative to the recipe file that writes them)",
                                site.key
                            )
                        } else {
                            format!(
                                "stage `{name}`: input `{}`: path {path} does not exist (relative paths are relative to the recipe file that writes them)",
                                site.key
                            )
                        },
                    });
                }
            }
        }
        Ok(())
    }
}

/// Map a kind's error to the recipe line of the offending key.
fn stage_error_at(sources: &SourceMap, stage: &str, raw: &Table, error: StageError) -> RecipeError {
    let prefix = |key: &str| -> Vec<String> {
        let mut path = vec!["stages".to_string(), stage.to_string()];
        path.extend(split_dotted(key));
        path
    };
    match error {
        StageError::Config { key, message } => {
            let message = message.trim().to_string();
            let key = if key.is_empty() {
                unknown_field(&message)
                    .and_then(|field| find_key(raw, &field))
                    .map(|path| path.join("."))
                    .unwrap_or_default()
            } else {
                key
            };
            let shown = if key.is_empty() {
                String::new()
            } else {
                format!("`{key}`: ")
            };
            RecipeError::At {
                location: sources.locate(&prefix(&key)),
                message: format!(
                    "stage `{stage}`: {shown}{message}{}",
                    suggestion_from_message(&message)
                ),
            }
        }
        StageError::Input { key, message } => RecipeError::At {
            location: sources.locate(&prefix(&key)),
            message: format!("stage `{stage}`: input `{key}`: {message}"),
        },
        other => RecipeError::At {
            location: sources.locate(&prefix("")),
            message: format!("stage `{stage}`: {other:#}"),
        },
    }
}

/// The field named by serde's "unknown field `x`, expected ..." message.
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.split_once("unknown field `")?.1;
    Some(rest.split_once('`')?.0.to_string())
}

/// " (did you mean `y`?)" built from serde's "unknown field `x`, expected one of `a`, `b`" message.
fn suggestion_from_message(message: &str) -> String {
    let Some(field) = unknown_field(message) else {
        return String::new();
    };
    let Some((_, expected)) = message.split_once("expected") else {
        return String::new();
    };
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    did_you_mean(&field, candidates)
}

/// The first path (depth-first) to a key named `name`.
fn find_key(table: &Table, name: &str) -> Option<Vec<String>> {
    for (key, value) in table {
        if key == name {
            return Some(vec![key.clone()]);
        }
        if let Value::Table(inner) = value
            && let Some(mut path) = find_key(inner, name)
        {
            path.insert(0, key.clone());
            return Some(path);
        }
    }
    None
}

#[cfg(test)]
mod tests;
