//! Finding the inputs of a stage: any inline table `{ stage = .. [, file = ..] }` or `{ path = .. }`,
//! at any depth of the stage table (inside arrays too), is an edge of the DAG or an external file.

use toml::{Table, Value};

use crate::stage::InputRef;

/// One input of a stage: where it sits (`inputs.model`, `domains.0`) and what it refers to.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSite {
    /// Dotted key inside the stage table; the key of [`crate::stage::StageContext::inputs`].
    pub key: String,
    /// The same key as segments, for locating it in the recipe file.
    pub path: Vec<String>,
    pub reference: InputRef,
}

/// The input a value denotes, if it is written as one.
pub fn as_input(value: &Value) -> Option<InputRef> {
    let table = value.as_table()?;
    let text = |key: &str| table.get(key).and_then(Value::as_str).map(str::to_string);
    match table.len() {
        1 if table.contains_key("stage") => Some(InputRef::Stage {
            stage: text("stage")?,
            file: None,
        }),
        1 if table.contains_key("path") => Some(InputRef::Path {
            path: text("path")?,
        }),
        2 if table.contains_key("stage") && table.contains_key("file") => Some(InputRef::Stage {
            stage: text("stage")?,
            file: Some(text("file")?),
        }),
        _ => None,
    }
}

/// Every input in a stage table, in key order.
pub fn find_inputs(table: &Table) -> Vec<InputSite> {
    let mut found = Vec::new();
    let mut path = Vec::new();
    for (key, value) in table {
        path.push(key.clone());
        walk(value, &mut path, &mut found);
        path.pop();
    }
    found
}

fn walk(value: &Value, path: &mut Vec<String>, found: &mut Vec<InputSite>) {
    if let Some(reference) = as_input(value) {
        found.push(InputSite {
            key: path.join("."),
            path: path.clone(),
            reference,
        });
        return;
    }
    match value {
        Value::Table(table) => {
            for (key, item) in table {
                path.push(key.clone());
                walk(item, path, found);
                path.pop();
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                path.push(index.to_string());
                walk(item, path, found);
                path.pop();
            }
        }
        _ => {}
    }
}

/// Apply `f` to every input value in place (used to resolve relative paths and to blank inputs out
/// of the cache-key config).
pub fn map_inputs(value: &mut Value, f: &mut dyn FnMut(&InputRef) -> Option<Value>) {
    if let Some(reference) = as_input(value) {
        if let Some(replacement) = f(&reference) {
            *value = replacement;
        }
        return;
    }
    match value {
        Value::Table(table) => table.iter_mut().for_each(|(_, item)| map_inputs(item, f)),
        Value::Array(items) => items.iter_mut().for_each(|item| map_inputs(item, f)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_inputs_at_any_depth() {
        let table: Table = toml::from_str(
            r#"
            model = { stage = "prune" }
            data = { stage = "tokenize", file = "manifest.json" }
            domains = [{ path = "a" }, { path = "b" }]
            inputs = { x = { stage = "t" } }
            other = { stage = "t", extra = 1 }
            lr = 1.0
            "#,
        )
        .unwrap();
        let keys: Vec<String> = find_inputs(&table)
            .into_iter()
            .map(|site| site.key)
            .collect();
        assert_eq!(
            keys,
            ["model", "data", "domains.0", "domains.1", "inputs.x"]
        );
    }
}
