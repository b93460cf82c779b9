//! `[sweep]`: expand one recipe into variants, each a set of overrides with a short name.
//!
//! ```toml
//! [sweep]
//! mode = "grid"                                    # or "zip"
//! "stages.train.loading.policy" = ["dynamic", "static"]
//! "stages.prune.target" = [{ hidden = 32 }, { hidden = 48 }]
//! labels = { "stages.prune.target" = ["h32", "h48"] }   # optional, per axis
//! # names = ["small", "large"]                      # optional, zip mode: one name per row
//! ```
//!
//! A variant is named by one part per axis, joined with `,` (`policy=dynamic,h32`): the axis's label
//! for the value when `labels` gives one (an array parallel to the axis's values, or a table keyed
//! by the value as it is written in a name), otherwise `key=value` with the key's last segment and,
//! for a table value, only the leaves that tell it from the axis's other values (`policy=static`
//! rather than the whole loading table). Parts longer than [`MAX_PART_CHARS`] are cut and end in a
//! hash of the full value, so names stay short, distinct and stable. The full overrides stay in
//! [`Variant::overrides`] (and in `compare --format json`).

use toml::{Table, Value};

use crate::util::differ::{Leaves, cut_with_hash, distinguishing};

/// The longest a variant name's part for one axis gets before it is cut and hashed.
pub const MAX_PART_CHARS: usize = 32;

/// One cell of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// `policy=dynamic,method=magnitude`: the parts, in sweep order (or the row's `names` entry).
    pub name: String,
    /// (dotted key as written, value).
    pub overrides: Vec<(String, Value)>,
    /// The name's part for each override (same order): what a node shared by some variants of
    /// the sweep is called by (the parts they have in common).
    pub parts: Vec<String>,
}

/// Why a `[sweep]` table is not valid; `key` is the offending key inside `[sweep]`.
#[derive(Debug)]
pub struct SweepError {
    pub key: String,
    pub message: String,
}

/// Expand `[sweep]` into variants (grid: cartesian product in key order; zip: element-wise).
pub fn expand(sweep: &Table) -> Result<Vec<Variant>, SweepError> {
    let mode = match sweep.get("mode") {
        None => "grid",
        Some(Value::String(mode)) if mode == "grid" || mode == "zip" => mode.as_str(),
        Some(other) => {
            return Err(SweepError {
                key: "mode".into(),
                message: format!("must be \"grid\" or \"zip\", not {other}"),
            });
        }
    };
    let mut axes: Vec<(String, Vec<Value>)> = Vec::new();
    for (key, value) in sweep
        .iter()
        .filter(|(key, _)| !matches!(key.as_str(), "mode" | "labels" | "names"))
    {
        match value {
            Value::Array(values) if !values.is_empty() => axes.push((key.clone(), values.clone())),
            _ => {
                return Err(SweepError {
                    key: key.clone(),
                    message: "a sweep axis is a non-empty array of values, e.g. `\"stages.train.lr\" = [1e-4, 3e-4]`"
                        .into(),
                });
            }
        }
    }
    if axes.is_empty() {
        return Err(SweepError {
            key: String::new(),
            message: "[sweep] needs at least one `\"dotted.key\" = [..]` axis".into(),
        });
    }
    let cells: Vec<Vec<usize>> = if mode == "zip" {
        let length = axes[0].1.len();
        if let Some((key, values)) = axes.iter().find(|(_, values)| values.len() != length) {
            return Err(SweepError {
                key: key.clone(),
                message: format!(
                    "mode = \"zip\" needs axes of equal length: `{}` has {length}, this one {}",
                    axes[0].0,
                    values.len()
                ),
            });
        }
        (0..length).map(|index| vec![index; axes.len()]).collect()
    } else {
        let mut cells = vec![Vec::new()];
        for (_, values) in &axes {
            cells = cells
                .into_iter()
                .flat_map(|prefix| {
                    (0..values.len()).map(move |index| {
                        let mut cell = prefix.clone();
                        cell.push(index);
                        cell
                    })
                })
                .collect();
        }
        cells
    };
    let labels = axis_labels(sweep, &axes)?;
    let row_names = row_names(sweep, mode, cells.len())?;
    let variants: Vec<Variant> = cells
        .into_iter()
        .enumerate()
        .map(|(row, cell)| {
            let overrides: Vec<(String, Value)> = axes
                .iter()
                .zip(&cell)
                .map(|((key, values), index)| (key.clone(), values[*index].clone()))
                .collect();
            let parts: Vec<String> = labels
                .iter()
                .zip(&cell)
                .map(|(axis, index)| axis[*index].clone())
                .collect();
            Variant {
                name: match &row_names {
                    Some(names) => names[row].clone(),
                    None => parts.join(","),
                },
                overrides,
                parts,
            }
        })
        .collect();
    for (index, variant) in variants.iter().enumerate() {
        if let Some(other) = variants[..index]
            .iter()
            .find(|other| other.name == variant.name)
        {
            let key = if row_names.is_some() {
                "names"
            } else {
                "labels"
            };
            return Err(SweepError {
                key: key.into(),
                message: format!(
                    "two variants are both named `{}` ({} and {}); give them distinct labels or names",
                    variant.name,
                    variant_name(&other.overrides),
                    variant_name(&variant.overrides)
                ),
            });
        }
    }
    Ok(variants)
}

/// The name part of every value of every axis (`labels`, or made from the values).
fn axis_labels(
    sweep: &Table,
    axes: &[(String, Vec<Value>)],
) -> Result<Vec<Vec<String>>, SweepError> {
    let given = match sweep.get("labels") {
        None => Table::new(),
        Some(Value::Table(table)) => table.clone(),
        Some(other) => {
            return Err(SweepError {
                key: "labels".into(),
                message: format!(
                    "must be a table of axis = labels, e.g. `labels = {{ \"stages.prune.method\" = {{ magnitude = \"mag\" }} }}`, not a {}",
                    other.type_str()
                ),
            });
        }
    };
    if let Some(unknown) = given
        .keys()
        .find(|key| !axes.iter().any(|(axis, _)| axis == *key))
    {
        let known: Vec<&str> = axes.iter().map(|(axis, _)| axis.as_str()).collect();
        return Err(SweepError {
            key: format!("labels.{unknown}"),
            message: format!("is not an axis of this sweep (axes: {})", known.join(", ")),
        });
    }
    let short_keys = short_axis_keys(axes);
    let mut out = Vec::new();
    for ((axis, values), short_key) in axes.iter().zip(short_keys) {
        let made = made_labels(&short_key, values);
        let labels = match given.get(axis) {
            None => made,
            Some(labels) => given_labels(axis, labels, values, made)?,
        };
        out.push(labels);
    }
    Ok(out)
}

/// The labels a recipe gives one axis: an array (one per value) or a table keyed by the value as
/// written in a name; values without a label keep the made one.
fn given_labels(
    axis: &str,
    labels: &Value,
    values: &[Value],
    made: Vec<String>,
) -> Result<Vec<String>, SweepError> {
    let error = |message: String| SweepError {
        key: format!("labels.{axis}"),
        message,
    };
    let label = |value: &Value| match value {
        Value::String(text) if !text.trim().is_empty() => Ok(text.clone()),
        other => Err(error(format!("a label is a non-empty string, not {other}"))),
    };
    match labels {
        Value::Array(items) => {
            if items.len() != values.len() {
                return Err(error(format!(
                    "has {} labels for the axis's {} values; give one per value, in order",
                    items.len(),
                    values.len()
                )));
            }
            items.iter().map(label).collect()
        }
        Value::Table(table) => {
            let written: Vec<String> = values.iter().map(short_value).collect();
            if let Some(unknown) = table.keys().find(|key| !written.contains(key)) {
                return Err(error(format!(
                    "labels the value `{unknown}`, which is not in the sweep (its values: {})",
                    written.join(", ")
                )));
            }
            written
                .iter()
                .zip(made)
                .map(|(value, made)| match table.get(value) {
                    Some(given) => label(given),
                    None => Ok(made),
                })
                .collect()
        }
        other => Err(error(format!(
            "must be an array (one label per value) or a table (value = label), not a {}",
            other.type_str()
        ))),
    }
}

/// `names = [..]`: one name per row of a zip sweep.
fn row_names(sweep: &Table, mode: &str, rows: usize) -> Result<Option<Vec<String>>, SweepError> {
    let Some(names) = sweep.get("names") else {
        return Ok(None);
    };
    let error = |message: String| SweepError {
        key: "names".into(),
        message,
    };
    if mode != "zip" {
        return Err(error(
            "names one variant per row of a `mode = \"zip\"` sweep; a grid's variants are named by their axes' `labels`".into(),
        ));
    }
    let Value::Array(items) = names else {
        return Err(error(format!(
            "must be an array of strings, not a {}",
            names.type_str()
        )));
    };
    if items.len() != rows {
        return Err(error(format!(
            "has {} names for {rows} rows; give one per row",
            items.len()
        )));
    }
    items
        .iter()
        .map(|item| match item {
            Value::String(text) if !text.trim().is_empty() => Ok(text.clone()),
            other => Err(error(format!("a name is a non-empty string, not {other}"))),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Each axis's key as its name part shows it: the last segment (`method`), or more of the key
/// where two axes end alike (`prune.lr`, `train.lr`).
fn short_axis_keys(axes: &[(String, Vec<Value>)]) -> Vec<String> {
    let segments: Vec<Vec<&str>> = axes
        .iter()
        .map(|(key, _)| {
            key.strip_prefix("stages.")
                .unwrap_or(key)
                .split('.')
                .collect()
        })
        .collect();
    let suffix =
        |parts: &[&str], length: usize| parts[parts.len().saturating_sub(length)..].join(".");
    segments
        .iter()
        .map(|parts| {
            (1..=parts.len())
                .map(|length| suffix(parts, length))
                .find(|candidate| {
                    segments
                        .iter()
                        .filter(|other| suffix(other, candidate.split('.').count()) == *candidate)
                        .count()
                        == 1
                })
                .unwrap_or_else(|| parts.join("."))
        })
        .collect()
}

/// Name parts made from an axis's values: `key=value` for plain values; for tables, the leaves
/// that tell the values apart ([`distinguishing`]); cut to [`MAX_PART_CHARS`] with a hash of the
/// whole value.
fn made_labels(short_key: &str, values: &[Value]) -> Vec<String> {
    let all_tables = values.iter().all(|value| matches!(value, Value::Table(_)));
    let texts: Vec<String> = if all_tables && values.len() > 1 {
        let leaves: Vec<Leaves> = values.iter().map(|value| leaves_of(value, "")).collect();
        distinguishing(&leaves)
    } else {
        values
            .iter()
            .map(|value| format!("{short_key}={}", short_value(value)))
            .collect()
    };
    texts
        .iter()
        .zip(values)
        .map(|(text, value)| cut_with_hash(text, &value.to_string(), MAX_PART_CHARS))
        .collect()
}

/// Leaves of a value as (dotted path, value as written in a name); a non-table is one leaf.
fn leaves_of(value: &Value, prefix: &str) -> Leaves {
    match value {
        Value::Table(table) => table
            .iter()
            .flat_map(|(key, inner)| {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaves_of(inner, &path)
            })
            .collect(),
        other => vec![(prefix.to_string(), short_value(other))],
    }
}

/// `train.loading.policy=dynamic,prune.target={hidden=32}`: overrides spelled out whole (error
/// messages, where the short name is ambiguous).
pub fn variant_name(overrides: &[(String, Value)]) -> String {
    overrides
        .iter()
        .map(|(key, value)| {
            format!(
                "{}={}",
                key.strip_prefix("stages.").unwrap_or(key),
                short_value(value)
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Values as they read in a variant name: strings without quotes, everything else as inline TOML.
fn short_value(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Table(table) => {
            let inner: Vec<String> = table
                .iter()
                .map(|(key, value)| format!("{key}={}", short_value(value)))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(short_value).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_and_zip() {
        let sweep: Table =
            toml::from_str("\"stages.a.x\" = [1, 2]\n\"stages.b.y\" = [\"p\", \"q\"]").unwrap();
        let names: Vec<String> = expand(&sweep)
            .unwrap()
            .into_iter()
            .map(|variant| variant.name)
            .collect();
        assert_eq!(names, ["x=1,y=p", "x=1,y=q", "x=2,y=p", "x=2,y=q"]);
        let mut zipped = sweep.clone();
        zipped.insert("mode".into(), Value::String("zip".into()));
        let names: Vec<String> = expand(&zipped)
            .unwrap()
            .into_iter()
            .map(|variant| variant.name)
            .collect();
        assert_eq!(names, ["x=1,y=p", "x=2,y=q"]);
        zipped.insert("stages.c.z".into(), Value::Array(vec![Value::Integer(1)]));
        assert_eq!(expand(&zipped).unwrap_err().key, "stages.c.z");
    }

    #[test]
    fn table_values_get_readable_names() {
        let sweep: Table =
            toml::from_str("\"stages.p.target\" = [{ hidden = 32, heads = 2 }]").unwrap();
        assert_eq!(
            expand(&sweep).unwrap()[0].name,
            "target={hidden=32,heads=2}"
        );
    }

    fn names_of(text: &str) -> Vec<String> {
        let sweep: Table = toml::from_str(text).unwrap();
        expand(&sweep)
            .unwrap()
            .into_iter()
            .map(|variant| variant.name)
            .collect()
    }

    fn error_of(text: &str) -> SweepError {
        let sweep: Table = toml::from_str(text).unwrap();
        expand(&sweep).unwrap_err()
    }

    /// A table axis is named by the leaves that tell its values apart, not spelled out whole.
    #[test]
    fn table_values_are_named_by_what_differs() {
        let names = names_of(
            "\"stages.train.loading\" = [\n\
               { policy = \"dynamic\", reference = { stage = \"eval-source\" } },\n\
               { policy = \"static\", weights = { web = 1.0, code = 1.0, books = 1.0, wiki = 1.0, arxiv = 1.0 } },\n]\n\
             \"stages.prune.method\" = [\"l0\", \"magnitude\"]",
        );
        assert_eq!(
            names,
            [
                "policy=dynamic,method=l0",
                "policy=dynamic,method=magnitude",
                "policy=static,method=l0",
                "policy=static,method=magnitude"
            ]
        );
        // Axes that end alike keep enough of their keys to differ.
        assert_eq!(
            names_of("\"stages.prune.lr\" = [1, 2]\n\"stages.train.lr\" = [3]"),
            ["prune.lr=1,train.lr=3", "prune.lr=2,train.lr=3"]
        );
    }

    #[test]
    fn long_parts_are_cut_with_a_hash() {
        let names = names_of(&format!(
            "\"stages.a.note\" = [\"{0}1\", \"{0}2\"]",
            "x".repeat(60)
        ));
        assert_eq!(names.len(), 2);
        assert_ne!(names[0], names[1]);
        for name in &names {
            assert_eq!(name.chars().count(), MAX_PART_CHARS, "{name}");
            assert!(name.starts_with("note=xxx") && name.contains('~'), "{name}");
        }
    }

    #[test]
    fn labels_and_row_names() {
        let axes = "\"stages.prune.method\" = [\"l0\", \"magnitude\"]\n\"stages.train.loading\" = [{ policy = \"dynamic\" }, { policy = \"static\" }]\n";
        assert_eq!(
            names_of(&format!(
                "{axes}labels = {{ \"stages.prune.method\" = {{ magnitude = \"mag\" }}, \"stages.train.loading\" = [\"dyn\", \"static\"] }}"
            )),
            ["method=l0,dyn", "method=l0,static", "mag,dyn", "mag,static"]
        );
        assert_eq!(
            names_of(&format!(
                "mode = \"zip\"\nnames = [\"ours\", \"baseline\"]\n{axes}"
            )),
            ["ours", "baseline"]
        );
        let variant = &expand(
            &toml::from_str(&format!(
                "{axes}labels = {{ \"stages.prune.method\" = [\"a\", \"b\"] }}"
            ))
            .unwrap(),
        )
        .unwrap()[3];
        assert_eq!(variant.overrides[0].1, Value::String("magnitude".into()));
        assert_eq!(variant.parts, ["b", "policy=static"]);
    }

    #[test]
    fn bad_labels_and_names_are_named() {
        let axes = "\"stages.prune.method\" = [\"l0\", \"magnitude\"]\n";
        let error = error_of(&format!(
            "{axes}labels = {{ \"stages.prune.method\" = {{ taylor = \"t\" }} }}"
        ));
        assert_eq!(error.key, "labels.stages.prune.method");
        assert!(
            error.message.contains("`taylor`") && error.message.contains("l0, magnitude"),
            "{}",
            error.message
        );
        let error = error_of(&format!(
            "{axes}labels = {{ \"stages.prune.mthod\" = [\"a\", \"b\"] }}"
        ));
        assert!(error.message.contains("not an axis"), "{}", error.message);
        let error = error_of(&format!(
            "{axes}labels = {{ \"stages.prune.method\" = [\"same\", \"same\"] }}"
        ));
        assert_eq!(error.key, "labels");
        assert!(
            error.message.contains("both named `same`"),
            "{}",
            error.message
        );
        let error = error_of(&format!(
            "{axes}labels = {{ \"stages.prune.method\" = [\"one\"] }}"
        ));
        assert!(
            error.message.contains("1 labels") && error.message.contains("2 values"),
            "{}",
            error.message
        );
        let error = error_of(&format!("{axes}names = [\"a\", \"b\"]"));
        assert_eq!(error.key, "names");
        assert!(error.message.contains("zip"), "{}", error.message);
        let error = error_of(&format!("mode = \"zip\"\n{axes}names = [\"a\"]"));
        assert!(
            error.message.contains("1 names for 2 rows"),
            "{}",
            error.message
        );
    }
}
