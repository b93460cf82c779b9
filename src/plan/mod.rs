//! The plan: one DAG of stages over every recipe (and sweep variant) of a run.
//!
//! Identical stages (same kind, version, config, settings and upstream definitions) become one node,
//! so two ablations that share `tokenize` run it once. A stage name that recipes (or sweep variants)
//! define differently becomes one node per definition, named `stage[what differs]`: each recipe is its
//! own namespace, and `--only stage` still selects every one of them. Cache keys are not known when planning: a key
//! includes the digests of the upstream outputs, which exist only after upstream commits (early
//! cutoff). [`status`] resolves as much as the store allows.

pub mod dag;
pub mod key;
pub mod preview;
pub mod status;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use petgraph::algo::{kosaraju_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};
use serde_json::Value as Json;
use toml::{Table, Value};

use crate::recipe::{Recipe, Variant, map_inputs};
use crate::stage::{InputRef, Registry};

/// Why a set of recipes cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("recipe `{recipe}`: dependency cycle {cycle}; a stage cannot consume its own output")]
    Cycle { recipe: String, cycle: String },
    #[error(
        "two recipes of this run are named `{name}` ({first_file} and {second_file}); stages defined \
         differently in them would get the same name: give one of them its own `name = \"...\"`"
    )]
    SameName {
        name: String,
        first_file: String,
        second_file: String,
    },
    #[error(
        "recipe `{recipe}`: stage `{stage}` has kind `{kind}`, which this binary does not know"
    )]
    UnknownKind {
        recipe: String,
        stage: String,
        kind: String,
    },
    #[error("no stage `{stage}` in {recipes}{suggestion}")]
    NoSuchStage {
        stage: String,
        recipes: String,
        suggestion: String,
    },
}

/// Where an input comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum InputSource {
    /// The output folder of another node, or one file of it.
    Stage { node: usize, file: Option<String> },
    /// An external file or folder (absolute).
    Path(PathBuf),
}

#[derive(Debug, Clone)]
pub struct PlanInput {
    /// Dotted key inside the stage table (`inputs.model`).
    pub key: String,
    pub source: InputSource,
}

/// A (recipe, stage name) that this node stands for.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub recipe: usize,
    pub stage: String,
}

/// One stage to run.
#[derive(Debug, Clone)]
pub struct PlanNode {
    /// Unique display id: the stage name, or `name[label]` for sweep cells that differ.
    pub id: String,
    /// What tells this definition of the stage from the others (`method=magnitude`, the overrides
    /// its sweep variants share), when the stage name has several; `None` otherwise.
    pub label: Option<String>,
    pub stage: String,
    pub kind: String,
    pub version: u32,
    /// The kind's normalised config, as given to the stage.
    pub config: Table,
    /// The config in the key: canonical JSON with each input replaced by `{ "input": "<key>" }`.
    pub key_config: Json,
    /// The `[settings]` entries the kind declares as part of its key.
    pub settings: Json,
    pub inputs: Vec<PlanInput>,
    pub members: Vec<Member>,
    /// Index of the recipe whose settings this node runs with (its first member).
    pub recipe: usize,
    /// What its Slurm job asks for: the first member's `[stages.NAME.resources]` (not in the key).
    pub resources: crate::stage::Resources,
}

/// The DAG of a run.
#[derive(Debug)]
pub struct Plan {
    pub recipes: Vec<Recipe>,
    pub nodes: Vec<PlanNode>,
    /// Edges upstream → downstream; node weights are indices into `nodes`.
    pub graph: DiGraph<usize, ()>,
    /// Node indices in a topological order.
    pub order: Vec<usize>,
}

impl Plan {
    /// Plan `recipes` together: shared stages become one node.
    pub fn build(recipes: Vec<Recipe>, registry: &Registry) -> Result<Plan, PlanError> {
        let mut nodes: Vec<PlanNode> = Vec::new();
        let mut by_definition: HashMap<String, usize> = HashMap::new();
        let mut definitions_by_name: BTreeMap<String, Vec<(String, usize)>> = BTreeMap::new();
        for (recipe_index, recipe) in recipes.iter().enumerate() {
            let order = recipe_order(recipe)?;
            let mut definition_of: HashMap<String, String> = HashMap::new();
            let mut node_of: HashMap<String, usize> = HashMap::new();
            for stage_name in order {
                let decl = &recipe.stages[&stage_name];
                let kind = registry
                    .get(&decl.kind)
                    .ok_or_else(|| PlanError::UnknownKind {
                        recipe: recipe.name.clone(),
                        stage: stage_name.clone(),
                        kind: decl.kind.clone(),
                    })?;
                let mut key_table = decl.config.clone();
                for key in kind.execution_keys() {
                    key_table.remove(*key);
                }
                let mut key_config = Value::Table(key_table);
                let mut input_keys = decl.inputs.iter().map(|site| site.key.clone());
                map_inputs(&mut key_config, &mut |_| {
                    let mut marker = Table::new();
                    marker.insert(
                        "input".into(),
                        Value::String(input_keys.next().unwrap_or_default()),
                    );
                    Some(Value::Table(marker))
                });
                let key_config = key::canonical(&key_config);
                let all_settings = match Value::try_from(&recipe.settings) {
                    Ok(Value::Table(table)) => table,
                    _ => Table::new(),
                };
                let mut settings = Table::new();
                for name in kind.settings_in_key() {
                    if let Some(value) = all_settings.get(*name) {
                        settings.insert(name.to_string(), value.clone());
                    }
                }
                let settings = key::canonical(&Value::Table(settings));
                let mut inputs = Vec::new();
                let mut input_identity = serde_json::Map::new();
                for site in &decl.inputs {
                    let (source, identity) = match &site.reference {
                        InputRef::Stage { stage, file } => {
                            let upstream = node_of.get(stage).copied().unwrap_or_default();
                            let upstream_definition =
                                definition_of.get(stage).cloned().unwrap_or_default();
                            (
                                InputSource::Stage {
                                    node: upstream,
                                    file: file.clone(),
                                },
                                serde_json::json!({ "stage": upstream_definition, "file": file }),
                            )
                        }
                        InputRef::Path { path } => (
                            InputSource::Path(PathBuf::from(path)),
                            serde_json::json!({ "path": path }),
                        ),
                    };
                    input_identity.insert(site.key.clone(), identity);
                    inputs.push(PlanInput {
                        key: site.key.clone(),
                        source,
                    });
                }
                let definition = key::key_of(&key::preimage(
                    &decl.kind,
                    kind.version(),
                    &key_config,
                    &settings,
                    &Json::Object(input_identity),
                ))
                .to_hex();
                // Shared only under the same name: two names with one definition are two nodes with
                // one key (the lease makes one of them wait for and reuse the other's result).
                let shared_key = format!("{stage_name}\u{0}{definition}");
                let index = match by_definition.get(&shared_key) {
                    Some(&index) => {
                        nodes[index].members.push(Member {
                            recipe: recipe_index,
                            stage: stage_name.clone(),
                        });
                        index
                    }
                    None => {
                        nodes.push(PlanNode {
                            id: stage_name.clone(),
                            label: None,
                            stage: stage_name.clone(),
                            kind: decl.kind.clone(),
                            version: kind.version(),
                            config: decl.config.clone(),
                            key_config,
                            settings,
                            inputs,
                            members: vec![Member {
                                recipe: recipe_index,
                                stage: stage_name.clone(),
                            }],
                            recipe: recipe_index,
                            resources: decl.resources.clone(),
                        });
                        by_definition.insert(shared_key, nodes.len() - 1);
                        nodes.len() - 1
                    }
                };
                let entries = definitions_by_name.entry(stage_name.clone()).or_default();
                if !entries.iter().any(|(existing, _)| *existing == definition) {
                    entries.push((definition.clone(), index));
                }
                definition_of.insert(stage_name.clone(), definition);
                node_of.insert(stage_name, index);
            }
        }
        check_recipe_names(&recipes)?;
        for (stage, entries) in &definitions_by_name {
            if entries.len() < 2 {
                continue;
            }
            for (_, index) in entries {
                let label = node_label(&nodes[*index], &recipes);
                nodes[*index].id = format!("{stage}[{label}]");
                nodes[*index].label = Some(label);
            }
        }
        let mut graph = DiGraph::new();
        let handles: Vec<NodeIndex> = (0..nodes.len())
            .map(|index| graph.add_node(index))
            .collect();
        for (index, node) in nodes.iter().enumerate() {
            let mut upstreams = BTreeSet::new();
            for input in &node.inputs {
                if let InputSource::Stage { node: upstream, .. } = input.source {
                    upstreams.insert(upstream);
                }
            }
            for upstream in upstreams {
                graph.add_edge(handles[upstream], handles[index], ());
            }
        }
        let order = stable_order(&graph);
        Ok(Plan {
            recipes,
            nodes,
            graph,
            order,
        })
    }

    /// Direct upstream nodes of `index`.
    pub fn upstream(&self, index: usize) -> Vec<usize> {
        self.graph
            .neighbors_directed(NodeIndex::new(index), petgraph::Direction::Incoming)
            .map(|handle| self.graph[handle])
            .collect()
    }

    /// Direct downstream nodes of `index`.
    pub fn downstream(&self, index: usize) -> Vec<usize> {
        self.graph
            .neighbors_directed(NodeIndex::new(index), petgraph::Direction::Outgoing)
            .map(|handle| self.graph[handle])
            .collect()
    }

    /// `index` and everything that (transitively) consumes it.
    pub fn with_descendants(&self, index: usize) -> BTreeSet<usize> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![index];
        while let Some(next) = stack.pop() {
            if seen.insert(next) {
                stack.extend(self.downstream(next));
            }
        }
        seen
    }

    /// `index` and everything it (transitively) needs.
    pub fn with_ancestors(&self, index: usize) -> BTreeSet<usize> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![index];
        while let Some(next) = stack.pop() {
            if seen.insert(next) {
                stack.extend(self.upstream(next));
            }
        }
        seen
    }

    /// Nodes named `name`: a node id (`prune[target=..]`) or a stage name (all its variants).
    pub fn find(&self, name: &str) -> Result<Vec<usize>, PlanError> {
        let by_id: Vec<usize> = (0..self.nodes.len())
            .filter(|&index| self.nodes[index].id == name)
            .collect();
        if !by_id.is_empty() {
            return Ok(by_id);
        }
        let by_stage: Vec<usize> = (0..self.nodes.len())
            .filter(|&index| self.nodes[index].stage == name)
            .collect();
        if !by_stage.is_empty() {
            return Ok(by_stage);
        }
        let names: BTreeSet<&str> = self
            .nodes
            .iter()
            .flat_map(|node| [node.id.as_str(), node.stage.as_str()])
            .collect();
        Err(PlanError::NoSuchStage {
            stage: name.to_string(),
            recipes: self
                .recipes
                .iter()
                .map(|recipe| format!("`{}`", recipe.base_name))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
                .join(", "),
            suggestion: format!(
                "{}; stages: {}",
                crate::recipe::did_you_mean(name, names.iter().copied()),
                names.iter().copied().collect::<Vec<_>>().join(", ")
            ),
        })
    }

    /// The name under which `last_committed` records this node: its first member's recipe and stage.
    pub fn record_name(&self, index: usize) -> (&str, &str) {
        let node = &self.nodes[index];
        (self.recipes[node.recipe].name.as_str(), node.stage.as_str())
    }
}

/// A topological order that prefers lower node indices (creation order: recipe order, then each
/// recipe's dependency order), so `plan` and `dag` list stages the way the recipes read.
fn stable_order(graph: &DiGraph<usize, ()>) -> Vec<usize> {
    let mut waiting: Vec<usize> = graph
        .node_indices()
        .map(|handle| {
            graph
                .neighbors_directed(handle, petgraph::Direction::Incoming)
                .count()
        })
        .collect();
    let mut ready: BTreeSet<usize> = (0..waiting.len())
        .filter(|&index| waiting[index] == 0)
        .collect();
    let mut order = Vec::with_capacity(waiting.len());
    while let Some(index) = ready.pop_first() {
        order.push(graph[NodeIndex::new(index)]);
        for next in graph.neighbors(NodeIndex::new(index)) {
            waiting[next.index()] -= 1;
            if waiting[next.index()] == 0 {
                ready.insert(next.index());
            }
        }
    }
    order
}

/// Load recipe files (each expanded into its sweep variants) and plan them together: what
/// `sheared run/plan/why/path` do first, exposed for other commands (e.g. `compare`).
pub fn load_plan(
    files: &[std::path::PathBuf],
    options: &crate::recipe::LoadOptions,
    registry: &Registry,
) -> anyhow::Result<Plan> {
    let mut recipes = Vec::new();
    for file in files {
        recipes.extend(crate::recipe::load(file, options, registry)?);
    }
    Ok(Plan::build(recipes, registry)?)
}

/// Stage names of one recipe in dependency order; a cycle is an error that names it.
fn recipe_order(recipe: &Recipe) -> Result<Vec<String>, PlanError> {
    let mut graph = DiGraph::<&str, ()>::new();
    let handles: HashMap<&str, NodeIndex> = recipe
        .stages
        .keys()
        .map(|name| (name.as_str(), graph.add_node(name.as_str())))
        .collect();
    for (name, decl) in &recipe.stages {
        for site in &decl.inputs {
            if let InputRef::Stage { stage, .. } = &site.reference
                && let Some(&upstream) = handles.get(stage.as_str())
            {
                graph.add_edge(upstream, handles[name.as_str()], ());
            }
        }
    }
    match toposort(&graph, None) {
        Ok(order) => Ok(order
            .into_iter()
            .map(|handle| graph[handle].to_string())
            .collect()),
        Err(_) => {
            let component = kosaraju_scc(&graph)
                .into_iter()
                .find(|component| {
                    component.len() > 1 || graph.contains_edge(component[0], component[0])
                })
                .unwrap_or_default();
            Err(PlanError::Cycle {
                recipe: recipe.name.clone(),
                cycle: describe_cycle(&graph, &component),
            })
        }
    }
}

/// Walk a strongly connected component until a node repeats: `a → b → a`.
fn describe_cycle(graph: &DiGraph<&str, ()>, component: &[NodeIndex]) -> String {
    let Some(&start) = component.first() else {
        return "(unknown)".into();
    };
    let inside: BTreeSet<NodeIndex> = component.iter().copied().collect();
    let mut path = vec![start];
    let mut current = start;
    while let Some(next) = graph.neighbors(current).find(|next| inside.contains(next)) {
        if let Some(position) = path.iter().position(|&seen| seen == next) {
            let mut names: Vec<&str> = path[position..]
                .iter()
                .map(|&handle| graph[handle])
                .collect();
            names.push(graph[next]);
            return names.join(" → ");
        }
        path.push(next);
        current = next;
    }
    path.iter()
        .map(|&handle| graph[handle])
        .collect::<Vec<_>>()
        .join(" → ")
}

/// Two definitions of one stage name are fine only between variants of one sweep recipe.
/// Recipes name the rows of `compare` and the nodes of a stage name they define differently, so
/// two recipe files of one run may not share a name (sweep variants of one file differ by theirs).
fn check_recipe_names(recipes: &[Recipe]) -> Result<(), PlanError> {
    let mut files: HashMap<&str, &Recipe> = HashMap::new();
    for recipe in recipes {
        match files.get(recipe.base_name.as_str()) {
            Some(first) if first.file != recipe.file => {
                return Err(PlanError::SameName {
                    name: recipe.base_name.clone(),
                    first_file: first.file.display().to_string(),
                    second_file: recipe.file.display().to_string(),
                });
            }
            Some(_) => {}
            None => {
                files.insert(&recipe.base_name, recipe);
            }
        }
    }
    Ok(())
}

/// What tells one definition of a stage name from the others, for its node id `stage[label]`:
/// for variants of one sweep, the overrides they share (`prune.method=magnitude`); otherwise the
/// names of the recipes (and variants) that define the stage this way, in run order.
fn node_label(node: &PlanNode, recipes: &[Recipe]) -> String {
    let members: Vec<&Recipe> = node
        .members
        .iter()
        .map(|member| &recipes[member.recipe])
        .collect();
    let one_sweep = members
        .iter()
        .all(|recipe| recipe.variant.is_some() && recipe.file == members[0].file);
    if one_sweep {
        let variants: Vec<&Variant> = members
            .iter()
            .filter_map(|recipe| recipe.variant.as_ref())
            .collect();
        return common_overrides(&variants);
    }
    let mut names: Vec<&str> = Vec::new();
    for recipe in members {
        if !names.contains(&recipe.name.as_str()) {
            names.push(&recipe.name);
        }
    }
    names.join(",")
}

/// The name parts of the overrides every variant in `variants` shares (`method=magnitude`), or
/// the first variant's name when they share none.
fn common_overrides(variants: &[&Variant]) -> String {
    let Some(first) = variants.first() else {
        return String::new();
    };
    let common: Vec<&str> = first
        .overrides
        .iter()
        .zip(&first.parts)
        .filter(|(pair, _)| {
            variants
                .iter()
                .all(|variant| variant.overrides.contains(pair))
        })
        .map(|(_, part)| part.as_str())
        .collect();
    if common.is_empty() {
        first.name.clone()
    } else {
        common.join(",")
    }
}
