//! Cache keys: blake3 over a canonical, versioned preimage.
//!
//! The preimage is JSON with sorted keys and canonical numbers (integers as integers, floats in their
//! shortest round-trip form), so that reordering keys in a recipe or writing `1e-4` as `0.0001` does
//! not change a key, while any change of meaning does.

use serde_json::{Map, Value as Json};
use toml::Value;

use crate::store::Digest;

/// Bump when the preimage layout changes: every key changes with it.
pub const FORMAT_VERSION: u64 = 1;

/// A TOML value as canonical JSON (object keys sorted; non-finite floats as strings).
pub fn canonical(value: &Value) -> Json {
    match value {
        Value::String(text) => Json::String(text.clone()),
        Value::Integer(number) => Json::from(*number),
        Value::Float(number) => serde_json::Number::from_f64(*number)
            .map(Json::Number)
            .unwrap_or_else(|| Json::String(number.to_string())),
        Value::Boolean(flag) => Json::Bool(*flag),
        Value::Datetime(datetime) => Json::String(datetime.to_string()),
        Value::Array(items) => Json::Array(items.iter().map(canonical).collect()),
        Value::Table(table) => {
            let mut keys: Vec<&String> = table.keys().collect();
            keys.sort();
            let mut map = Map::new();
            for key in keys {
                map.insert(key.clone(), canonical(&table[key]));
            }
            Json::Object(map)
        }
    }
}

/// Sort the keys of a JSON value recursively (for values built in code).
pub fn sorted(value: &Json) -> Json {
    match value {
        Json::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            Json::Object(
                keys.into_iter()
                    .map(|key| (key.clone(), sorted(&map[key])))
                    .collect(),
            )
        }
        Json::Array(items) => Json::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// The cache key of a preimage: blake3 of its canonical JSON text.
pub fn key_of(preimage: &Json) -> Digest {
    let text = serde_json::to_string(&sorted(preimage)).unwrap_or_default();
    Digest::from_bytes(*blake3::hash(text.as_bytes()).as_bytes())
}

/// Build the preimage of a stage from its parts.
pub fn preimage(
    kind: &str,
    version: u32,
    config: &Json,
    settings: &Json,
    input_digests: &Json,
) -> Json {
    serde_json::json!({
        "format": FORMAT_VERSION,
        "kind": kind,
        "version": version,
        "config": config,
        "settings": settings,
        "inputs": input_digests,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ignores_key_order_and_number_spelling() {
        let a: toml::Table = toml::from_str("lr = 1e-4\nsteps = 10\n[t]\nx = 1\ny = 2").unwrap();
        let b: toml::Table = toml::from_str("[t]\ny = 2\nx = 1\n[u]\n").unwrap();
        let mut b = b;
        b.remove("u");
        b.insert("steps".into(), Value::Integer(10));
        b.insert("lr".into(), Value::Float(0.0001));
        let key = |table: &toml::Table| {
            key_of(&preimage(
                "k",
                1,
                &canonical(&Value::Table(table.clone())),
                &Json::Null,
                &Json::Null,
            ))
        };
        assert_eq!(key(&a), key(&b));
        b.insert("steps".into(), Value::Integer(11));
        assert_ne!(key(&a), key(&b));
        assert_ne!(
            key_of(&preimage("k", 1, &Json::Null, &Json::Null, &Json::Null)),
            key_of(&preimage("k", 2, &Json::Null, &Json::Null, &Json::Null))
        );
    }
}
