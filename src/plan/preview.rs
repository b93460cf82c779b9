//! Previews of every node of a plan (parameter counts, token budgets; see
//! [`crate::stage::preview`]): each stage kind's [`Stage::preview`](crate::stage::Stage::preview)
//! is given what exists now — external paths, committed upstream outputs — and the previews of the
//! upstream stages that have not run, in topological order so that a prediction flows down the DAG
//! (source → prune → consolidate → train → eval).

use std::path::PathBuf;

use super::status::NodeStatus;
use super::{InputSource, Plan};
use crate::stage::{Preview, PreviewInput, PreviewInputs, Registry};
use crate::store::Store;
use crate::util::glob::external_exists;

/// One preview per node, indexed like `plan.nodes` (and `statuses`, from
/// [`plan_status`](super::status::plan_status)).
pub fn previews(
    plan: &Plan,
    statuses: &[NodeStatus],
    store: &Store,
    registry: &Registry,
) -> Vec<Preview> {
    // Committed outputs are hard links into the object store, so materialising one is cheap.
    let committed: Vec<Option<PathBuf>> = statuses
        .iter()
        .map(|status| {
            let manifest = &status.committed.as_ref()?.manifest;
            store.outputs(manifest).ok()
        })
        .collect();
    let mut previews = vec![Preview::default(); plan.nodes.len()];
    for &index in &plan.order {
        let node = &plan.nodes[index];
        let Some(kind) = registry.get(&node.kind) else {
            continue;
        };
        let sources: Vec<(String, Option<PathBuf>, Option<usize>)> = node
            .inputs
            .iter()
            .map(|input| match &input.source {
                InputSource::Path(path) => (
                    input.key.clone(),
                    external_exists(path).then(|| path.clone()),
                    None,
                ),
                InputSource::Stage { node, file } => {
                    let path = committed[*node].as_ref().map(|dir| match file {
                        Some(file) => dir.join(file),
                        None => dir.clone(),
                    });
                    (input.key.clone(), path, Some(*node))
                }
            })
            .collect();
        let preview = {
            let inputs = PreviewInputs {
                precision: plan.recipes[node.recipe].settings.precision,
                inputs: sources
                    .iter()
                    .map(|(key, path, upstream)| {
                        let input = PreviewInput {
                            path: path.as_deref(),
                            upstream: upstream.map(|node| &previews[node]),
                        };
                        (key.clone(), input)
                    })
                    .collect(),
            };
            kind.preview(&node.config, &inputs)
        };
        previews[index] = preview;
    }
    previews
}
