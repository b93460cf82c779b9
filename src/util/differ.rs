//! Short names for values that differ: what a sweep variant's name and a folded `compare` column
//! show instead of a whole table (`policy=static` rather than every leaf of a loading table).

/// One item's leaves as (dotted path, value as text).
pub type Leaves = Vec<(String, String)>;

/// For each item, `path=value` of the leaves that tell it from the others, joined with `,`: the
/// leaves every item has and that differ between them; when there are none, every leaf of the item
/// that is not the same in all items. Empty for an item with nothing of its own.
pub fn distinguishing(items: &[Leaves]) -> Vec<String> {
    let differs = |(path, value): &(String, String)| {
        items
            .iter()
            .any(|other| !other.iter().any(|(p, v)| p == path && v == value))
    };
    let in_all = |(path, _): &(String, String)| {
        items
            .iter()
            .all(|other| other.iter().any(|(p, _)| p == path))
    };
    items
        .iter()
        .map(|own| {
            let pick = |keep: &dyn Fn(&(String, String)) -> bool| -> Vec<String> {
                own.iter()
                    .filter(|leaf| keep(leaf))
                    .map(|(path, value)| format!("{path}={value}"))
                    .collect()
            };
            let mut chosen = pick(&|leaf| differs(leaf) && in_all(leaf));
            if chosen.is_empty() {
                chosen = pick(&differs);
            }
            chosen.join(",")
        })
        .collect()
}

/// `text` cut to `max_chars` characters, ending in `~` and 6 hex digits of the hash of `identity`
/// when it was longer, so two long texts that share a prefix stay distinct (and the same text always
/// gets the same cut).
pub fn cut_with_hash(text: &str, identity: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let hash = blake3::hash(identity.as_bytes()).to_hex();
    let kept: String = text.chars().take(max_chars.saturating_sub(7)).collect();
    format!("{kept}~{}", &hash[..6])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(pairs: &[(&str, &str)]) -> Leaves {
        pairs
            .iter()
            .map(|(path, value)| (path.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn common_leaves_that_differ_win() {
        let items = [
            leaves(&[("policy", "dynamic"), ("reference.stage", "eval-source")]),
            leaves(&[("policy", "static"), ("weights.web", "1.0")]),
        ];
        assert_eq!(distinguishing(&items), ["policy=dynamic", "policy=static"]);
        let items = [leaves(&[("a", "1")]), leaves(&[("b", "2")]), leaves(&[])];
        assert_eq!(distinguishing(&items), ["a=1", "b=2", ""]);
    }

    #[test]
    fn long_texts_are_cut_distinctly() {
        let a = cut_with_hash(&"x".repeat(50), "a", 20);
        let b = cut_with_hash(&"x".repeat(50), "b", 20);
        assert_eq!(a.chars().count(), 20);
        assert_ne!(a, b);
        assert_eq!(cut_with_hash("short", "a", 20), "short");
    }
}
