//! `extends` deep merge and `--set` overrides.

use toml::{Table, Value};

use super::inputs::as_input;

/// Merge `over` into `base`: tables merge key by key, everything else (scalars, arrays, and input
/// tables such as `{ stage = .. }`, which are one value) replaces.
pub fn deep_merge(base: &mut Table, over: Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(Value::Table(base_table)), Value::Table(over_table))
                if as_input(&Value::Table(over_table.clone())).is_none()
                    && as_input(&Value::Table(base_table.clone())).is_none() =>
            {
                deep_merge(base_table, over_table)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Parse a dotted key as TOML does (`stages.prune.target.hidden`, `"stages"."a.b"`).
pub fn parse_key(key: &str) -> Result<Vec<String>, String> {
    let document: Table = toml::from_str(&format!("{key} = 0"))
        .map_err(|error| format!("`{key}` is not a TOML key: {}", error.message()))?;
    let mut path = Vec::new();
    let mut current = &document;
    loop {
        let mut entries = current.iter();
        match (entries.next(), entries.next()) {
            (Some((segment, value)), None) => {
                path.push(segment.clone());
                match value {
                    Value::Table(inner) => current = inner,
                    _ => return Ok(path),
                }
            }
            _ => return Err(format!("`{key}` is not a single dotted key")),
        }
    }
}

/// Parse a `--set` value with TOML value syntax; a bare word that is not valid TOML (`cuda:0`,
/// `dynamic`) is taken as a string, because that is what people type.
pub fn parse_value(text: &str) -> Result<Value, String> {
    let document: Result<Table, _> = toml::from_str(&format!("value = {text}"));
    match document {
        Ok(mut table) => table
            .remove("value")
            .ok_or_else(|| format!("`{text}` is not a TOML value")),
        Err(error) => {
            let bare = !text.is_empty()
                && !text.contains(['"', '\'', '[', ']', '{', '}', '=', '\n', ',', ' ']);
            if bare {
                Ok(Value::String(text.to_string()))
            } else {
                Err(format!("`{text}` is not a TOML value: {}", error.message()))
            }
        }
    }
}

/// Why a key path could not be set.
pub struct SetFailure {
    /// How many leading segments exist.
    pub existing: usize,
    /// Keys available at the level where the path left the document (for suggestions).
    pub candidates: Vec<String>,
}

/// Replace the value at `path` if every segment exists (array elements by index).
pub fn set_existing(root: &mut Table, path: &[String], value: Value) -> Result<(), SetFailure> {
    let mut wrapped = Value::Table(std::mem::take(root));
    let result = set_in(&mut wrapped, path, value, 0);
    if let Value::Table(table) = wrapped {
        *root = table;
    }
    result
}

fn set_in(
    current: &mut Value,
    path: &[String],
    value: Value,
    depth: usize,
) -> Result<(), SetFailure> {
    let Some((first, rest)) = path.split_first() else {
        *current = value;
        return Ok(());
    };
    let child = match current {
        Value::Table(table) => {
            if !table.contains_key(first) {
                return Err(SetFailure {
                    existing: depth,
                    candidates: table.keys().cloned().collect(),
                });
            }
            table.get_mut(first)
        }
        Value::Array(items) => {
            let length = items.len();
            match first.parse::<usize>() {
                Ok(index) if index < length => items.get_mut(index),
                _ => {
                    return Err(SetFailure {
                        existing: depth,
                        candidates: (0..length).map(|i| i.to_string()).collect(),
                    });
                }
            }
        }
        _ => None,
    };
    match child {
        Some(child) => set_in(child, rest, value, depth + 1),
        None => Err(SetFailure {
            existing: depth,
            candidates: Vec::new(),
        }),
    }
}

/// Insert `value` at `path`, creating missing tables (used when the key exists only as a default).
pub fn insert_path(root: &mut Table, path: &[String], value: Value) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut current = root;
    for segment in parents {
        let entry = current
            .entry(segment.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        match entry {
            Value::Table(table) => current = table,
            _ => return false,
        }
    }
    current.insert(last.clone(), value);
    true
}

/// Whether `path` names a value inside `table`.
pub fn has_path(table: &Table, path: &[String]) -> bool {
    let mut current = Value::Table(table.clone());
    for segment in path {
        let next = match &current {
            Value::Table(inner) => inner.get(segment).cloned(),
            Value::Array(items) => segment
                .parse::<usize>()
                .ok()
                .and_then(|index| items.get(index).cloned()),
            _ => None,
        };
        match next {
            Some(value) => current = value,
            None => return false,
        }
    }
    true
}

/// Keys of the table at `path` inside `table` (for suggestions).
pub fn keys_at(table: &Table, path: &[String]) -> Vec<String> {
    let mut current = table;
    for segment in path {
        match current.get(segment) {
            Some(Value::Table(inner)) => current = inner,
            _ => return Vec::new(),
        }
    }
    current.keys().cloned().collect()
}

/// The closest candidate to `word`, if it is close enough to be a plausible typo (one edit for
/// short words, a third of the letters for long ones; transpositions count as one edit).
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let allowed = if word.chars().count() <= 4 {
        1
    } else {
        word.chars().count().div_ceil(3)
    };
    candidates
        .into_iter()
        .filter(|candidate| *candidate != word)
        .map(|candidate| (strsim::damerau_levenshtein(word, candidate), candidate))
        .filter(|(distance, _)| *distance <= allowed)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate.to_string())
}

/// `" (did you mean `x`?)"` or nothing.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    suggest(word, candidates)
        .map(|best| format!(" (did you mean `{best}`?)"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn merge_is_deep_for_tables_and_replaces_scalars_arrays_and_inputs() {
        let mut base = table("a = 1\nlist = [1, 2]\n[t]\nx = 1\ny = 2\ninput = { path = \"p\" }");
        deep_merge(
            &mut base,
            table("list = [3]\n[t]\ny = 5\ninput = { stage = \"s\" }"),
        );
        assert_eq!(
            base,
            table("a = 1\nlist = [3]\n[t]\nx = 1\ny = 5\ninput = { stage = \"s\" }")
        );
    }

    #[test]
    fn keys_and_values_parse_as_toml() {
        assert_eq!(
            parse_key("stages.prune.target.hidden").unwrap(),
            ["stages", "prune", "target", "hidden"]
        );
        assert_eq!(parse_key("stages.\"a.b\"").unwrap(), ["stages", "a.b"]);
        assert_eq!(parse_value("1024").unwrap(), Value::Integer(1024));
        assert_eq!(
            parse_value("cuda:0").unwrap(),
            Value::String("cuda:0".into())
        );
        assert_eq!(
            parse_value("[1, 2]").unwrap(),
            Value::Array(vec![Value::Integer(1), Value::Integer(2)])
        );
        assert!(parse_value("[1, ").is_err());
    }

    #[test]
    fn set_existing_reports_how_far_it_got() {
        let mut root = table("[stages.prune.target]\nhidden = 4\nheads = 2");
        let path = parse_key("stages.prune.target.hidden").unwrap();
        assert!(set_existing(&mut root, &path, Value::Integer(8)).is_ok());
        assert_eq!(
            root["stages"]["prune"]["target"]["hidden"].as_integer(),
            Some(8)
        );
        let failure = set_existing(
            &mut root,
            &parse_key("stages.prune.target.hiden").unwrap(),
            Value::Integer(1),
        )
        .err()
        .unwrap();
        assert_eq!(failure.existing, 3);
        assert_eq!(
            suggest("hiden", failure.candidates.iter().map(String::as_str)).as_deref(),
            Some("hidden")
        );
    }
}
