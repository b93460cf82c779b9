//! The import graph of `src/`: no cycle between top-level modules, and no import from a lower layer
//! into a higher one.
//!
//! The layers, from the ground up (a module may import only modules on a lower floor):
//!
//! ```text
//! 0  util, progress          leaf helpers: formatting, globs; progress reporting and cancellation
//! 1  model, store            the LLaMA model and its files; the content-addressed store
//! 2  stage                   the stage contract: Stage, StageContext, StageError, Settings, InputRef, Preview
//! 3  data                    raw text to token batches (reads the contract's InputRef in its schema)
//! 4  train, eval             training loop and evaluation, built from model and data
//! 5  stages, recipe          the stage kinds; recipes (TOML → normalised stage tables)
//! 6  plan                    the DAG, keys and status
//! 7  exec, report            running a plan; comparing finished runs
//! ```
//!
//! Besides, the runner (`recipe`, `plan`, `store`, `exec`, `report`) never imports a stage kind
//! (`stages`): it sees kinds through the contract and a `Registry` that `main.rs` passes in.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const FLOORS: &[&[&str]] = &[
    &["util", "progress"],
    &["model", "store"],
    &["stage"],
    &["data"],
    &["train", "eval"],
    &["stages", "recipe"],
    &["plan"],
    &["exec", "report"],
];

/// Imports that the floors allow but that must never be: (from, to, why).
const NEVER: &[(&str, &str, &str)] = &[
    (
        "recipe",
        "stages",
        "the runner sees stage kinds only through the contract",
    ),
    (
        "plan",
        "stages",
        "the runner sees stage kinds only through the contract",
    ),
    (
        "exec",
        "stages",
        "the runner sees stage kinds only through the contract",
    ),
    (
        "report",
        "stages",
        "the runner sees stage kinds only through the contract",
    ),
];

/// One import: file, the top-level module it is in, the top-level module it names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Edge {
    file: String,
    from: String,
    to: String,
}

/// The top-level module a file under `src/` belongs to (`src/data/loading.rs` → `data`,
/// `src/stage.rs` → `stage`); `None` for the crate roots and for `src/bin/` (other binaries, such as
/// `sheared-bench`, are separate crates that see only the library's public API).
fn module_of(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main" && name != "bin").then(|| name.to_string())
}

/// Source text without comments (doc links name paths that are not imports) and string literals.
fn strip(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let bytes = source.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'/') {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if bytes[i] == b'"' && !(i > 0 && bytes[i - 1] == b'\'') {
            // Raw strings (r"..", r#".."#) and plain strings.
            let hashes = {
                let mut j = i;
                let mut n = 0;
                while j > 0 && bytes[j - 1] == b'#' {
                    j -= 1;
                    n += 1;
                }
                let raw = j > 0 && bytes[j - 1] == b'r';
                raw.then_some(n)
            };
            i += 1;
            match hashes {
                Some(n) => {
                    let close: Vec<u8> = std::iter::once(b'"')
                        .chain(std::iter::repeat_n(b'#', n))
                        .collect();
                    while i < bytes.len() && !bytes[i..].starts_with(&close) {
                        i += 1;
                    }
                    i += close.len();
                }
                None => {
                    while i < bytes.len() && bytes[i] != b'"' {
                        if bytes[i] == b'\\' {
                            i += 1;
                        }
                        i += 1;
                    }
                    i += 1;
                }
            }
            out.push_str("\"\"");
        } else {
            out.push(bytes[i] as char);
            i += 1;
        }
    }
    out
}

/// The top-level modules `source` names through `crate::x` paths, including `use crate::{x, y::z}`.
fn imports(source: &str) -> BTreeSet<String> {
    let text = strip(source);
    let mut found = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let rest_trim = rest.trim_start();
        if let Some(group) = rest_trim.strip_prefix('{') {
            // `crate::{a::b, c}`: the first segment of each top-level item of the group.
            let mut depth = 0;
            let mut item_start = true;
            let mut word = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        item_start = true;
                        continue;
                    }
                    _ => {}
                }
                if item_start && depth == 0 {
                    if c.is_alphanumeric() || c == '_' {
                        word.push(c);
                        continue;
                    } else if !word.is_empty() {
                        found.insert(std::mem::take(&mut word));
                        item_start = false;
                    }
                }
            }
            if !word.is_empty() {
                found.insert(word);
            }
        } else {
            let word: String = rest_trim
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !word.is_empty() {
                found.insert(word);
            }
        }
    }
    found.retain(|name| name != "self" && name != "super");
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// Every import between two different top-level modules of the crate at `src`.
fn edges(src: &Path) -> Vec<Edge> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut edges = Vec::new();
    for path in files {
        let relative = path.strip_prefix(src).unwrap();
        let Some(from) = module_of(relative) else {
            continue;
        };
        let source = std::fs::read_to_string(&path).unwrap();
        for to in imports(&source) {
            if to != from {
                edges.push(Edge {
                    file: format!("src/{}", relative.display()),
                    from: from.clone(),
                    to,
                });
            }
        }
    }
    edges.sort();
    edges
}

fn floor_of(module: &str) -> Option<usize> {
    FLOORS.iter().position(|floor| floor.contains(&module))
}

/// What is wrong with `edges`: unknown modules, imports that do not go down, forbidden pairs, cycles.
fn problems(edges: &[Edge]) -> Vec<String> {
    let mut problems = Vec::new();
    for edge in edges {
        for module in [&edge.from, &edge.to] {
            if floor_of(module).is_none() {
                problems.push(format!(
                    "{}: module `{module}` has no floor in tests/architecture.rs FLOORS",
                    edge.file
                ));
            }
        }
        if let (Some(from), Some(to)) = (floor_of(&edge.from), floor_of(&edge.to))
            && to >= from
        {
            problems.push(format!(
                "{}: `{}` (floor {from}) imports `{}` (floor {to}); imports must go down",
                edge.file, edge.from, edge.to
            ));
        }
        if let Some((_, _, why)) = NEVER
            .iter()
            .find(|(from, to, _)| *from == edge.from && *to == edge.to)
        {
            problems.push(format!(
                "{}: `{}` imports `{}`: {why}",
                edge.file, edge.from, edge.to
            ));
        }
    }
    problems.extend(cycles(edges));
    problems.sort();
    problems.dedup();
    problems
}

/// Cycles between top-level modules, each named by its modules.
fn cycles(edges: &[Edge]) -> Vec<String> {
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for edge in edges {
        graph.entry(&edge.from).or_default().insert(&edge.to);
    }
    let mut found = Vec::new();
    for &start in graph.keys() {
        // Every module reachable from `start`; a cycle when `start` is among them.
        let mut seen = BTreeSet::new();
        let mut stack = vec![(start, vec![start])];
        while let Some((node, path)) = stack.pop() {
            for &next in graph.get(node).into_iter().flatten() {
                if next == start {
                    let mut cycle = path.clone();
                    cycle.push(start);
                    if path.iter().min() == Some(&start) {
                        found.push(format!("cycle: {}", cycle.join(" → ")));
                    }
                } else if seen.insert(next) {
                    let mut longer = path.clone();
                    longer.push(next);
                    stack.push((next, longer));
                }
            }
        }
    }
    found
}

#[test]
fn imports_go_down_and_never_round() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = edges(&src);
    assert!(
        edges.len() > 20,
        "the parser found too few imports: {edges:?}"
    );
    let problems = problems(&edges);
    assert!(
        problems.is_empty(),
        "the import graph breaks the layers:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_checker_catches_an_upward_import_and_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let write = |path: &str, text: &str| {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("lib.rs", "pub mod model;\npub mod train;\n");
    write("train/mod.rs", "use crate::model::Llama;\n");
    write(
        "model/mod.rs",
        "//! See [`crate::exec`].\nuse crate::{progress::CancelFlag, train::{Trainer, fit}};\nconst S: &str = \"crate::report\";\n",
    );
    write(
        "model/cli.rs",
        "fn f() { crate::util::fmt::group_thousands(1); }\n",
    );
    let edges = edges(dir.path());
    let named: Vec<(&str, &str)> = edges
        .iter()
        .map(|edge| (edge.from.as_str(), edge.to.as_str()))
        .collect();
    assert_eq!(
        named,
        [
            ("model", "util"),
            ("model", "progress"),
            ("model", "train"),
            ("train", "model")
        ]
    );
    let found = problems(&edges);
    assert!(
        found
            .iter()
            .any(|p| p.contains("src/model/mod.rs: `model` (floor 1) imports `train` (floor 4)")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|p| p == "cycle: model → train → model"),
        "{found:?}"
    );
    assert_eq!(found.len(), 2, "{found:?}");

    // A stage kind named by the runner.
    let never = problems(&[Edge {
        file: "src/exec/cli.rs".into(),
        from: "exec".into(),
        to: "stages".into(),
    }]);
    assert_eq!(never.len(), 1, "{never:?}");
}
