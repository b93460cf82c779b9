//! Recipe loading: extends, --set, sweeps, and the errors people will hit.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::*;
use crate::stage::{Stage, StageContext, StageError, normalize_typed};

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ToyConfig {
    #[serde(default)]
    target: ToyTarget,
    #[serde(default = "default_lr")]
    lr: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    model: Option<InputRef>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ToyTarget {
    hidden: u32,
    heads: u32,
}

impl Default for ToyTarget {
    fn default() -> Self {
        ToyTarget {
            hidden: 4,
            heads: 2,
        }
    }
}

fn default_lr() -> f64 {
    0.1
}

struct Toy;
impl Stage for Toy {
    fn kind(&self) -> &'static str {
        "toy"
    }
    fn version(&self) -> u32 {
        1
    }
    fn about(&self) -> &'static str {
        "test kind"
    }
    fn normalize(&self, table: &Table) -> Result<Table, StageError> {
        normalize_typed::<ToyConfig>(table).map(|(_, table)| table)
    }
    fn validate(&self, config: &Table) -> Result<(), StageError> {
        match config.get("lr").and_then(Value::as_float) {
            Some(lr) if lr <= 0.0 => Err(StageError::config("lr", "must be positive")),
            _ => Ok(()),
        }
    }
    fn run(&self, _: &StageContext<'_>) -> Result<(), StageError> {
        Ok(())
    }
}

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register(Box::new(Toy));
    registry
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, text).unwrap();
    path
}

fn load_one(path: &Path, overrides: &[&str]) -> Result<Recipe, RecipeError> {
    let options = LoadOptions {
        overrides: overrides.iter().map(|s| s.to_string()).collect(),
        device: None,
    };
    load(path, &options, &registry()).map(|mut recipes| recipes.remove(0))
}

fn error(path: &Path, overrides: &[&str]) -> String {
    load_one(path, overrides)
        .err()
        .map(|error| error.to_string())
        .unwrap_or_else(|| "no error".into())
}

#[test]
fn extends_chain_merges_deeply_and_resolves_paths_per_file() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "pipelines/data/a.txt", "x");
    write(
        dir.path(),
        "pipelines/base.toml",
        "name = \"base\"\n[stages.p]\nkind = \"toy\"\nmodel = { path = \"data/a.txt\" }\n[stages.p.target]\nhidden = 8\nheads = 2\n",
    );
    write(
        dir.path(),
        "mid.toml",
        "extends = \"pipelines/base.toml\"\n[stages.p.target]\nheads = 4\n",
    );
    let top = write(
        dir.path(),
        "recipes/top.toml",
        "extends = \"../mid.toml\"\nname = \"top\"\n[stages.p]\nlr = 0.5\n",
    );
    let recipe = load_one(&top, &[]).unwrap();
    assert_eq!(recipe.name, "top");
    let config = &recipe.stages["p"].config;
    assert_eq!(config["target"]["hidden"].as_integer(), Some(8));
    assert_eq!(config["target"]["heads"].as_integer(), Some(4));
    assert_eq!(config["lr"].as_float(), Some(0.5));
    let model = config["model"]["path"].as_str().unwrap();
    assert!(model.ends_with("pipelines/data/a.txt"), "{model}");
    assert!(recipe.check_paths().is_ok());
}

#[test]
fn extends_cycle_names_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "b.toml", "extends = \"a.toml\"\n");
    let a = write(dir.path(), "a.toml", "extends = \"b.toml\"\n");
    let message = error(&a, &[]);
    assert!(
        message.contains("`extends` cycle")
            && message.contains("a.toml →")
            && message.contains("b.toml →"),
        "{message}"
    );
}

#[test]
fn syntax_errors_have_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "bad.toml",
        "name = \"x\"\n[stages.p]\nkind = \"toy\"\nlr = = 3\n",
    );
    let message = error(&path, &[]);
    assert!(message.contains("bad.toml:4:"), "{message}");
}

#[test]
fn unknown_keys_point_at_their_line_with_a_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "r.toml",
        "[stages.p]\nkind = \"toy\"\n[stages.p.target]\nhidden = 3\nheads = 1\nhiden = 3\n",
    );
    let message = error(&path, &[]);
    assert!(message.contains("r.toml:6:1"), "{message}");
    assert!(message.contains("did you mean `hidden`"), "{message}");
    let path = write(dir.path(), "s.toml", "nme = \"x\"\n");
    let message = error(&path, &[]);
    assert!(
        message.contains("s.toml:1:1") && message.contains("did you mean `name`"),
        "{message}"
    );
    let path = write(dir.path(), "t.toml", "[settings]\nsed = 3\n");
    let message = error(&path, &[]);
    assert!(
        message.contains("t.toml:2:1") && message.contains("did you mean `seed`"),
        "{message}"
    );
}

#[test]
fn validate_errors_name_the_key_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "r.toml",
        "[stages.p]\nkind = \"toy\"\nlr = -1.0\n",
    );
    let message = error(&path, &[]);
    assert!(
        message.contains("r.toml:3:1") && message.contains("`lr`: must be positive"),
        "{message}"
    );
}

#[test]
fn missing_stage_and_unknown_kind() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "r.toml",
        "[stages.source]\nkind = \"toy\"\n[stages.p]\nkind = \"toy\"\nmodel = { stage = \"sourse\" }\n",
    );
    let message = error(&path, &[]);
    assert!(
        message.contains("r.toml:5:1") && message.contains("did you mean `source`"),
        "{message}"
    );
    let path = write(dir.path(), "n.toml", "[stages.\"a.b\"]\nkind = \"toy\"\n");
    let message = error(&path, &[]);
    assert!(
        message.contains("n.toml:1:9") && message.contains("stage name `a.b`"),
        "{message}"
    );
    let path = write(dir.path(), "k.toml", "[stages.p]\nkind = \"tyo\"\n");
    let message = error(&path, &[]);
    assert!(
        message.contains("k.toml:2:1")
            && message.contains("did you mean `toy`")
            && message.contains("known kinds: toy"),
        "{message}"
    );
}

#[test]
fn set_overrides_written_and_default_keys_and_rejects_typos() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "r.toml",
        "[stages.p]\nkind = \"toy\"\n[stages.p.target]\nhidden = 3\nheads = 1\n",
    );
    let recipe = load_one(
        &path,
        &[
            "stages.p.target.hidden=1024",
            "stages.p.lr=0.01",
            "settings.seed=5",
        ],
    )
    .unwrap();
    assert_eq!(
        recipe.stages["p"].config["target"]["hidden"].as_integer(),
        Some(1024)
    );
    assert_eq!(recipe.stages["p"].config["lr"].as_float(), Some(0.01));
    assert_eq!(recipe.settings.seed, 5);
    let message = error(&path, &["stages.p.target.hiden=1"]);
    assert!(message.contains("did you mean `hidden`"), "{message}");
    let message = error(&path, &["stages.q.lr=1"]);
    assert!(
        message.contains("`q` is not a key of `stages`"),
        "{message}"
    );
    let message = error(&path, &["stages.p.lr"]);
    assert!(message.contains("KEY=VALUE"), "{message}");
    // A setting kept out of serialisation at its default is settable and suggested.
    let recipe = load_one(&path, &["settings.precision=\"bf16\""]).unwrap();
    assert_eq!(
        recipe.settings.precision,
        crate::model::precision::Precision::Bf16
    );
    let message = error(&path, &["settings.precison=\"bf16\""]);
    assert!(message.contains("did you mean `precision`"), "{message}");
}

#[test]
fn sweeps_expand_into_named_variants() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "r.toml",
        "name = \"abl\"\n[stages.p]\nkind = \"toy\"\n[sweep]\n\"stages.p.lr\" = [0.1, 0.2]\n\"stages.p.target\" = [{ hidden = 1, heads = 1 }, { hidden = 2, heads = 1 }]\nmode = \"zip\"\n",
    );
    let recipes = load(&path, &LoadOptions::default(), &registry()).unwrap();
    let names: Vec<&str> = recipes.iter().map(|recipe| recipe.name.as_str()).collect();
    assert_eq!(
        names,
        ["abl[lr=0.1,hidden=1]", "abl[lr=0.2,hidden=2]"],
        "short names: the key's last segment, a table by the leaf that differs"
    );
    assert_eq!(
        recipes[1].stages["p"].config["target"]["hidden"].as_integer(),
        Some(2)
    );
    let bad = write(
        dir.path(),
        "bad.toml",
        "[stages.p]\nkind = \"toy\"\n[sweep]\n\"stages.p.lx\" = [1]\n",
    );
    let message = load(&bad, &LoadOptions::default(), &registry())
        .err()
        .unwrap()
        .to_string();
    assert!(
        message.contains("bad.toml:4:1") && message.contains("did you mean `lr`"),
        "{message}"
    );
}
