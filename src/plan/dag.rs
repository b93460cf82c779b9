//! `sheared dag`: the plan as Mermaid or Graphviz dot text.

use super::{InputSource, Plan};

/// Output formats of `sheared dag`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DagFormat {
    Mermaid,
    Dot,
}

/// Render the plan; edges are labelled with the input key (and file) they feed.
pub fn render(plan: &Plan, format: DagFormat) -> String {
    let mut out = String::new();
    let label = |index: usize| format!("{} ({})", plan.nodes[index].id, plan.nodes[index].kind);
    let edges = || {
        plan.nodes.iter().enumerate().flat_map(|(index, node)| {
            node.inputs
                .iter()
                .filter_map(move |input| match &input.source {
                    InputSource::Stage {
                        node: upstream,
                        file,
                    } => Some((
                        *upstream,
                        index,
                        match file {
                            Some(file) => format!("{}: {file}", input.key),
                            None => input.key.clone(),
                        },
                    )),
                    InputSource::Path(_) => None,
                })
        })
    };
    match format {
        DagFormat::Mermaid => {
            out.push_str("flowchart TD\n");
            for &index in &plan.order {
                out.push_str(&format!("    n{index}[\"{}\"]\n", escape(&label(index))));
            }
            for (from, to, key) in edges() {
                out.push_str(&format!("    n{from} -->|\"{}\"| n{to}\n", escape(&key)));
            }
        }
        DagFormat::Dot => {
            out.push_str("digraph sheared {\n    rankdir=TB;\n    node [shape=box];\n");
            for &index in &plan.order {
                out.push_str(&format!(
                    "    n{index} [label=\"{}\"];\n",
                    escape(&label(index))
                ));
            }
            for (from, to, key) in edges() {
                out.push_str(&format!(
                    "    n{from} -> n{to} [label=\"{}\"];\n",
                    escape(&key)
                ));
            }
            out.push_str("}\n");
        }
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "'")
}
