//! A Hugging Face `tokenizer.json` + `tokenizer_config.json` rebuilt from the `tokenizer.ggml.*`
//! metadata of GPT-2 style byte-level BPE vocabularies.

use serde_json::{Value, json};

use super::reader::{GgufFile, MetadataValue};

/// Pre-tokenizer of a GGUF `tokenizer.ggml.pre` name (llama.cpp's list), as HF tokenizer.json JSON.
fn pre_tokenizer(pre: &str) -> Result<Value, String> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    Ok(match pre {
        "default" | "gpt2" | "gpt-2" => byte_level(true),
        // llama.cpp: "\\p{N}" then the GPT-2 regex == HF Digits(individual) + ByteLevel.
        "smollm" | "starcoder" | "refact" | "codeshell" => json!({
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)],
        }),
        "llama-bpe" | "llama3" => json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
                 "behavior": "Isolated", "invert": false},
                byte_level(false),
            ],
        }),
        other => {
            return Err(format!(
                "tokenizer pre-tokenizer `{other}` (tokenizer.ggml.pre) is not supported (gpt2, smollm, starcoder, llama-bpe are)"
            ));
        }
    })
}

/// `tokenizer.json` and `tokenizer_config.json` rebuilt from a GPT-2 style (`tokenizer.ggml.model =
/// gpt2`) vocabulary. Errors say why no tokenizer could be built (the weights are still converted).
pub fn tokenizer_json(gguf: &GgufFile) -> Result<(Value, Value), String> {
    let model = gguf
        .get("tokenizer.ggml.model")
        .and_then(MetadataValue::as_str)
        .unwrap_or("(missing)");
    if model != "gpt2" {
        return Err(format!(
            "tokenizer model `{model}` (tokenizer.ggml.model) is not supported; only GPT-2 style byte-level BPE (`gpt2`) is"
        ));
    }
    let strings = |key: &str| -> Result<Vec<String>, String> {
        gguf.get(key)
            .and_then(MetadataValue::as_array)
            .ok_or_else(|| format!("missing `{key}`"))?
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("`{key}` must hold strings"))
            })
            .collect()
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?;
    let token_types: Vec<i64> = gguf
        .get("tokenizer.ggml.token_type")
        .and_then(MetadataValue::as_array)
        .map(|items| {
            items
                .iter()
                .map(|item| item.as_u64().map_or(1, |v| v as i64))
                .collect()
        })
        .unwrap_or_default();
    let pre = pre_tokenizer(
        gguf.get("tokenizer.ggml.pre")
            .and_then(MetadataValue::as_str)
            .unwrap_or("default"),
    )?;

    let mut vocab = serde_json::Map::new();
    for (id, token) in tokens.iter().enumerate() {
        vocab.insert(token.clone(), json!(id));
    }
    // Control (3) and user-defined (4) tokens are matched before BPE, as HF does with added tokens.
    let added: Vec<Value> = tokens
        .iter()
        .enumerate()
        .filter(|(id, _)| matches!(token_types.get(*id), Some(3) | Some(4)))
        .map(|(id, content)| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": token_types.get(id) == Some(&4), "special": token_types.get(id) == Some(&3)})
        })
        .collect();
    let token_of = |key: &str| {
        gguf.get(&format!("tokenizer.ggml.{key}"))
            .and_then(MetadataValue::as_u64)
            .and_then(|id| tokens.get(id as usize).cloned())
    };
    let add_bos = gguf
        .get("tokenizer.ggml.add_bos_token")
        .and_then(MetadataValue::as_bool)
        .unwrap_or(false);
    let bos = token_of("bos_token_id");
    let post_processor = match (&bos, add_bos) {
        (Some(bos), true) => {
            let bos_id = gguf
                .get("tokenizer.ggml.bos_token_id")
                .and_then(MetadataValue::as_u64)
                .unwrap_or(0);
            json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos.clone(): {"id": bos, "ids": [bos_id], "tokens": [bos]}},
            })
        }
        _ => {
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
        }
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    });
    let mut tokenizer_config = serde_json::Map::new();
    tokenizer_config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    tokenizer_config.insert("add_bos_token".into(), json!(add_bos));
    tokenizer_config.insert("clean_up_tokenization_spaces".into(), json!(false));
    for (field, key) in [
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("unk_token", "unknown_token_id"),
        ("pad_token", "padding_token_id"),
    ] {
        if let Some(token) = token_of(key) {
            tokenizer_config.insert(field.into(), json!(token));
        }
    }
    if let Some(template) = gguf
        .get("tokenizer.chat_template")
        .and_then(MetadataValue::as_str)
    {
        tokenizer_config.insert("chat_template".into(), json!(template));
    }
    Ok((tokenizer, Value::Object(tokenizer_config)))
}
