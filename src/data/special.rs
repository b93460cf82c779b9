//! Finding BOS and EOS in any HF `tokenizer.json`: an explicit override, else the post-processor's template
//! (LLaMA's `<s> $A`, BERT/RoBERTa's cls/sep), else well-known special tokens (`<s>`/`</s>`,
//! `<|begin_of_text|>`/`<|end_of_text|>`, GPT-2's `<|endoftext|>` for both).

use tokenizers::Tokenizer;

use super::DataError;

/// A special token and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialToken {
    pub token: String,
    pub id: u32,
}

const BOS_NAMES: &[&str] = &[
    "<s>",
    "<|begin_of_text|>",
    "<|startoftext|>",
    "<bos>",
    "<BOS>",
    "[BOS]",
];
const EOS_NAMES: &[&str] = &["</s>", "<|end_of_text|>", "<eos>", "<EOS>", "[EOS]"];
/// Tokens that GPT-2 style vocabularies use as both document start and end.
const BOTH_NAMES: &[&str] = &["<|endoftext|>"];

/// BOS and EOS of `tokenizer`. `bos_override`/`eos_override` are the stage's `bos_token`/`eos_token`.
pub fn find_bos_eos(
    tokenizer: &Tokenizer,
    bos_override: Option<&str>,
    eos_override: Option<&str>,
) -> Result<(SpecialToken, SpecialToken), DataError> {
    let from_template = template_tokens(tokenizer);
    let bos = match bos_override {
        Some(token) => lookup(tokenizer, "bos_token", token)?,
        None => from_template
            .0
            .clone()
            .or_else(|| known(tokenizer, BOS_NAMES))
            .or_else(|| known(tokenizer, BOTH_NAMES))
            .ok_or_else(|| missing("bos_token", "BOS", "<s>"))?,
    };
    let eos = match eos_override {
        Some(token) => lookup(tokenizer, "eos_token", token)?,
        None => from_template
            .1
            .clone()
            .or_else(|| known(tokenizer, EOS_NAMES))
            .or_else(|| known(tokenizer, BOTH_NAMES))
            .ok_or_else(|| missing("eos_token", "EOS", "</s>"))?,
    };
    Ok((bos, eos))
}

fn lookup(tokenizer: &Tokenizer, key: &str, token: &str) -> Result<SpecialToken, DataError> {
    tokenizer
        .token_to_id(token)
        .map(|id| SpecialToken {
            token: token.into(),
            id,
        })
        .ok_or_else(|| DataError::SpecialToken {
            key: key.into(),
            message: format!(
                "token {token:?} is not in the tokenizer's vocabulary; name a token it has"
            ),
        })
}

fn known(tokenizer: &Tokenizer, names: &[&str]) -> Option<SpecialToken> {
    names.iter().find_map(|&name| {
        tokenizer.token_to_id(name).map(|id| SpecialToken {
            token: name.into(),
            id,
        })
    })
}

fn missing(key: &str, what: &str, example: &str) -> DataError {
    DataError::SpecialToken {
        key: key.into(),
        message: format!(
            "the tokenizer names no {what} token (neither its post-processor nor a known special token such as \
             {example} or <|endoftext|>); set `{key} = \"...\"` in the tokenize stage to a token of its vocabulary"
        ),
    }
}

/// (tokens before `$A`, tokens after `$A`) of the post-processor, read from its JSON form so every processor
/// variant (including nested `Sequence`s) is handled the same way.
fn template_tokens(tokenizer: &Tokenizer) -> (Option<SpecialToken>, Option<SpecialToken>) {
    let Some(processor) = tokenizer.get_post_processor() else {
        return (None, None);
    };
    let Ok(json) = serde_json::to_value(processor) else {
        return (None, None);
    };
    from_processor_json(tokenizer, &json)
}

fn from_processor_json(
    tokenizer: &Tokenizer,
    json: &serde_json::Value,
) -> (Option<SpecialToken>, Option<SpecialToken>) {
    let special = |name: &str| -> Option<SpecialToken> {
        tokenizer.token_to_id(name).map(|id| SpecialToken {
            token: name.into(),
            id,
        })
    };
    match json.get("type").and_then(|kind| kind.as_str()) {
        Some("TemplateProcessing") => {
            let Some(pieces) = json.get("single").and_then(|single| single.as_array()) else {
                return (None, None);
            };
            let mut before = None;
            let mut after = None;
            let mut seen_sequence = false;
            for piece in pieces {
                if piece.get("Sequence").is_some() {
                    seen_sequence = true;
                } else if let Some(name) =
                    piece.pointer("/SpecialToken/id").and_then(|id| id.as_str())
                {
                    if !seen_sequence && before.is_none() {
                        before = special(name);
                    } else if seen_sequence {
                        after = special(name);
                    }
                }
            }
            (before, after)
        }
        Some("BertProcessing") | Some("RobertaProcessing") => {
            let name = |key: &str| {
                json.pointer(&format!("/{key}/0"))
                    .and_then(|name| name.as_str())
                    .and_then(special)
            };
            (name("cls"), name("sep"))
        }
        Some("Sequence") => {
            let mut found = (None, None);
            for inner in json
                .get("processors")
                .and_then(|list| list.as_array())
                .into_iter()
                .flatten()
            {
                let (bos, eos) = from_processor_json(tokenizer, inner);
                found.0 = found.0.or(bos);
                found.1 = found.1.or(eos);
            }
            found
        }
        _ => (None, None),
    }
}
