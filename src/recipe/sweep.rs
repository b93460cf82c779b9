//! `[sweep]`: expand one recipe into variants, each a set of overrides named by those overrides.
//!
//! ```toml
//! [sweep]
//! mode = "grid"                                    # or "zip"
//! "stages.train.loading.policy" = ["dynamic", "static"]
//! "stages.prune.target" = [{ hidden = 32 }, { hidden = 48 }]
//! ```

use toml::{Table, Value};

/// One cell of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// `train.loading.policy=dynamic,prune.target={ hidden = 32 }`: the overrides, in sweep order.
    pub name: String,
    /// (dotted key as written, value).
    pub overrides: Vec<(String, Value)>,
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
    for (key, value) in sweep.iter().filter(|(key, _)| key.as_str() != "mode") {
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
    Ok(cells
        .into_iter()
        .map(|cell| {
            let overrides: Vec<(String, Value)> = axes
                .iter()
                .zip(cell)
                .map(|((key, values), index)| (key.clone(), values[index].clone()))
                .collect();
            Variant {
                name: variant_name(&overrides),
                overrides,
            }
        })
        .collect())
}

/// `train.loading.policy=dynamic,prune.target={hidden=32}`: overrides as a name.
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
        assert_eq!(
            names,
            ["a.x=1,b.y=p", "a.x=1,b.y=q", "a.x=2,b.y=p", "a.x=2,b.y=q"]
        );
        let mut zipped = sweep.clone();
        zipped.insert("mode".into(), Value::String("zip".into()));
        let names: Vec<String> = expand(&zipped)
            .unwrap()
            .into_iter()
            .map(|variant| variant.name)
            .collect();
        assert_eq!(names, ["a.x=1,b.y=p", "a.x=2,b.y=q"]);
        zipped.insert("stages.c.z".into(), Value::Array(vec![Value::Integer(1)]));
        assert_eq!(expand(&zipped).unwrap_err().key, "stages.c.z");
    }

    #[test]
    fn table_values_get_readable_names() {
        let sweep: Table =
            toml::from_str("\"stages.p.target\" = [{ hidden = 32, heads = 2 }]").unwrap();
        assert_eq!(
            expand(&sweep).unwrap()[0].name,
            "p.target={hidden=32,heads=2}"
        );
    }
}
