//! lm-eval's `exact_match` for generated answers (`exact_match_hf_evaluate`) with the settings of
//! its `nq_open.yaml`: drop the article pattern `\b(?:The |the |An |A |The |a |an )`, lower-case,
//! delete ASCII punctuation, compare; a question counts when any gold alias matches. The generated
//! text first goes through the YAML's `remove_whitespace` filter (Python `str.strip`).
//!
//! The regex is applied by hand (sheared has no regex engine for this one pattern). `\b` before the
//! first letter means: at the start or after a non-word character, where word characters are
//! Unicode letters, digits and `_` as in Python's `re`; alternatives are tried in the pattern's order
//! and matches do not overlap, as `re.sub` does.

/// The alternatives of lm-eval nq_open's `regexes_to_ignore`, in pattern order.
const ARTICLES: [&str; 7] = ["The ", "the ", "An ", "A ", "The ", "a ", "an "];

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `re.sub(r"\b(?:The |the |An |A |The |a |an )", "", text)`.
pub fn remove_articles(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut previous: Option<char> = None;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        let at_boundary = is_word(c) && !previous.is_some_and(is_word);
        if at_boundary && let Some(article) = ARTICLES.iter().find(|a| rest.starts_with(**a)) {
            rest = &rest[article.len()..];
            previous = Some(' ');
            continue;
        }
        out.push(c);
        previous = Some(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// The normalised form both sides are compared in.
pub fn normalize(text: &str) -> String {
    remove_articles(text)
        .to_lowercase()
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect()
}

/// Whether `generated` (as the model produced it, before the whitespace filter) matches any answer.
pub fn matches_any(generated: &str, answers: &[String]) -> bool {
    let prediction = normalize(super::templates::python_strip(generated));
    answers.iter().any(|answer| normalize(answer) == prediction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nq_open_normalisation() {
        assert_eq!(
            remove_articles("The Beatles and a band"),
            "Beatles and band"
        );
        // `\b` needs a non-word character before: "Santa " inside "theSanta " is not removed.
        assert_eq!(remove_articles("theSanta an apple"), "theSanta apple");
        // Case matters before lower-casing: "THE " stays.
        assert_eq!(normalize("THE U.S. Navy!"), "the us navy");
        // After a removed article the next word starts at a boundary again (non-overlapping matches).
        assert_eq!(remove_articles("a a b"), "b");
        assert!(matches_any(" the Eiffel Tower", &["Eiffel tower".into()]));
        assert!(matches_any(
            "December 1972",
            &["14 December 1972 UTC".into(), "December, 1972".into()]
        ));
        assert!(!matches_any("1972", &["December 1972".into()]));
    }
}
