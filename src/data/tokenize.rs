//! The streaming, parallel pipeline behind the `tokenize` stage: documents → train/eval split by hash →
//! `BOS + tokens + EOS` → `train/<domain>.bin` / `eval/<domain>.bin` + `manifest.json` + `tokenizer.json`.
//!
//! Memory stays bounded by one batch of documents per domain (a reader thread decompresses and parses the next
//! batch while the rayon pool encodes the current one), so a 10 GB domain needs no more RAM than a 10 MB one.

use std::collections::BinaryHeap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use tokenizers::Tokenizer;

use super::manifest::{DomainManifest, FORMAT, FORMAT_VERSION, Manifest};
use super::shard::move_tail;
use super::source::{Document, DocumentReader, SourceOptions, resolve_sources};
use super::special::{SpecialToken, find_bos_eos};
use super::tokenizer::{load_tokenizer, train_bpe};
use super::{DataError, ShardWriter, TokenDtype};
use crate::progress::{CancelFlag, Reporter};

pub use super::tokenizer::{TokenizerSource, TrainTokenizer};

/// How a domain is split into train and eval documents.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EvalSplit {
    /// A document is eval when its hash falls in the lowest `fraction` of the hash range.
    Fraction(f64),
    /// The `n` documents with the smallest hashes are eval (identical documents share a hash, so ties can add a
    /// few more: duplicates never straddle the split).
    Documents(u64),
    /// `n` held-out sequences of `seq_len` tokens: the last `n · seq_len + 1` tokens of the domain's token
    /// stream (every document goes to train first; the tail moves to eval), as the paper holds out
    /// 500 sequences of 4096 tokens per domain.
    Sequences(u64),
}

/// One domain to tokenize.
#[derive(Debug, Clone)]
pub struct DomainSpec {
    pub name: String,
    /// File, folder or glob.
    pub source: PathBuf,
    pub split: EvalSplit,
    pub options: SourceOptions,
}

/// Everything the pipeline needs; built by the stage from its config and inputs.
#[derive(Debug, Clone)]
pub struct TokenizeSpec {
    pub domains: Vec<DomainSpec>,
    pub tokenizer: TokenizerSource,
    pub seq_len: u64,
    pub seed: u64,
    pub max_tokens_per_domain: Option<u64>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// Documents per encode batch (memory bound: this many documents are in flight, twice).
    pub batch_documents: usize,
}

/// What a run produced, plus its speed.
#[derive(Debug, Clone)]
pub struct TokenizeSummary {
    pub manifest: Manifest,
    pub seconds: f64,
    pub tokens: u64,
    pub tokens_per_s: f64,
}

/// The split hash of a document: blake3 of (seed, text), first 8 bytes. Depends on nothing but the text and the
/// seed, so adding files elsewhere never moves a document across the split.
pub fn document_hash(seed: u64, text: &str) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&seed.to_le_bytes());
    hasher.update(text.as_bytes());
    let bytes = hasher.finalize();
    u64::from_le_bytes(bytes.as_bytes()[..8].try_into().unwrap_or_default())
}

/// Decides train vs eval for one domain.
#[derive(Debug, Clone, Copy)]
struct SplitRule {
    /// A document is eval when its hash is `<= threshold` (`None`: no eval documents).
    threshold: Option<u64>,
}

impl SplitRule {
    fn is_eval(self, hash: u64) -> bool {
        self.threshold.is_some_and(|threshold| hash <= threshold)
    }
}

/// Documents per encode batch by default: each batch ends in a join of the rayon pool, so larger batches waste
/// less time waiting on the slowest thread; 1024 documents of RedPajama size are a few MB in flight.
pub const DEFAULT_BATCH_DOCUMENTS: usize = 1024;

/// Runs the pipeline into `out_dir` (which should be empty).
pub fn tokenize(
    spec: &TokenizeSpec,
    out_dir: &Path,
    reporter: &dyn Reporter,
    cancel: &CancelFlag,
) -> Result<TokenizeSummary, DataError> {
    let started = Instant::now();
    validate_spec(spec)?;
    let mut domain_files = Vec::new();
    for domain in &spec.domains {
        domain_files.push(resolve_sources(&domain.name, &domain.source)?);
    }
    let total_bytes: u64 = domain_files
        .iter()
        .flatten()
        .map(|path| std::fs::metadata(path).map(|meta| meta.len()).unwrap_or(0))
        .sum::<u64>()
        .max(1);

    // Pass 1 (only for `eval_documents`): the hash threshold of each domain.
    let mut rules = Vec::new();
    for (domain, files) in spec.domains.iter().zip(&domain_files) {
        rules.push(split_rule(domain, files, spec.seed, cancel)?);
    }

    // The tokenizer: loaded, or trained on the train split only.
    let (tokenizer, tokenizer_bytes) = match &spec.tokenizer {
        TokenizerSource::File(path) => load_tokenizer(path)?,
        TokenizerSource::Train(settings) => {
            reporter.message("training a byte-level BPE tokenizer on the train split");
            train_tokenizer(settings, spec, &domain_files, &rules, cancel)?
        }
    };
    let vocab_size = tokenizer.get_vocab_size(true) as u64;
    let dtype = TokenDtype::for_vocab(vocab_size)?;
    let (bos, eos) = find_bos_eos(
        &tokenizer,
        spec.bos_token.as_deref(),
        spec.eos_token.as_deref(),
    )?;
    for (key, token) in [("bos_token", &bos), ("eos_token", &eos)] {
        if token.id as u64 >= vocab_size {
            return Err(DataError::SpecialToken {
                key: key.into(),
                message: format!(
                    "{:?} has id {} but the vocabulary has {vocab_size} tokens",
                    token.token, token.id
                ),
            });
        }
    }
    std::fs::create_dir_all(out_dir).map_err(|error| DataError::io(out_dir, error))?;
    let tokenizer_path = out_dir.join("tokenizer.json");
    std::fs::write(&tokenizer_path, &tokenizer_bytes)
        .map_err(|error| DataError::io(&tokenizer_path, error))?;

    let progress = Progress {
        reporter,
        total_bytes,
        done_before: AtomicU64::new(0),
        tokens: AtomicU64::new(0),
        started,
        last_message: Mutex::new(None),
    };
    let mut domains = Vec::new();
    for ((domain, files), rule) in spec.domains.iter().zip(domain_files).zip(rules) {
        let manifest = encode_domain(
            domain,
            files,
            rule,
            spec,
            &tokenizer,
            (&bos, &eos),
            dtype,
            out_dir,
            &progress,
            cancel,
        )?;
        domains.push(manifest);
    }

    let manifest = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        dtype,
        vocab_size,
        tokenizer_blake3: blake3::hash(&tokenizer_bytes).to_hex().to_string(),
        bos_token: bos.token,
        bos_id: bos.id,
        eos_token: eos.token,
        eos_id: eos.id,
        seq_len: spec.seq_len,
        seed: spec.seed,
        domains,
    };
    manifest.save(&out_dir.join("manifest.json"))?;
    let seconds = started.elapsed().as_secs_f64();
    let tokens: u64 = manifest
        .domains
        .iter()
        .map(|domain| domain.train_tokens + domain.eval_tokens)
        .sum();
    Ok(TokenizeSummary {
        manifest,
        seconds,
        tokens,
        tokens_per_s: tokens as f64 / seconds.max(1e-9),
    })
}

fn validate_spec(spec: &TokenizeSpec) -> Result<(), DataError> {
    if spec.domains.is_empty() {
        return Err(DataError::config(
            "domains",
            "name at least one domain: `domains = { web = { path = \"..\" } }`",
        ));
    }
    if spec.seq_len == 0 {
        return Err(DataError::config("seq_len", "must be at least 1"));
    }
    for domain in &spec.domains {
        if domain.name.is_empty()
            || !domain
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
            || domain.name.starts_with('.')
        {
            return Err(DataError::config(
                format!("domains.{}", domain.name),
                "domain names become file names: use letters, digits, `_`, `-` and `.` (not first)",
            ));
        }
        match domain.split {
            EvalSplit::Fraction(fraction) if !(0.0..1.0).contains(&fraction) => {
                return Err(DataError::config(
                    "eval_fraction",
                    format!("{fraction} for domain `{}` is not in [0, 1)", domain.name),
                ));
            }
            _ => {}
        }
    }
    if let TokenizerSource::Train(settings) = &spec.tokenizer
        && settings.vocab_size < 260
    {
        return Err(DataError::config(
            "tokenizer.train.vocab_size",
            format!(
                "{} is below the 256 byte tokens + specials a byte-level BPE needs; use at least 260",
                settings.vocab_size
            ),
        ));
    }
    if spec.max_tokens_per_domain == Some(0) {
        return Err(DataError::config(
            "max_tokens_per_domain",
            "must be positive (leave it out for no cap)",
        ));
    }
    Ok(())
}

fn split_rule(
    domain: &DomainSpec,
    files: &[PathBuf],
    seed: u64,
    cancel: &CancelFlag,
) -> Result<SplitRule, DataError> {
    match domain.split {
        EvalSplit::Fraction(fraction) => {
            let threshold = fraction * 18_446_744_073_709_551_616.0; // 2^64
            Ok(SplitRule {
                threshold: (threshold >= 1.0).then(|| (threshold as u64).saturating_sub(1)),
            })
        }
        EvalSplit::Documents(0) | EvalSplit::Sequences(_) => Ok(SplitRule { threshold: None }),
        EvalSplit::Documents(count) => {
            // Max-heap of the `count` smallest hashes seen.
            let mut smallest = BinaryHeap::new();
            for (index, document) in
                DocumentReader::new(files.to_vec(), domain.options.clone()).enumerate()
            {
                if index % 4096 == 0 && cancel.is_cancelled() {
                    return Err(DataError::Cancelled);
                }
                let document = document?;
                if document.text.is_empty() {
                    continue;
                }
                smallest.push(document_hash(seed, &document.text));
                if smallest.len() as u64 > count {
                    smallest.pop();
                }
            }
            Ok(SplitRule {
                threshold: smallest.peek().copied(),
            })
        }
    }
}

/// Trains the tokenizer ([`super::tokenizer::train_bpe`]) on the train split of every domain, at most
/// `max_bytes_per_domain` of each.
fn train_tokenizer(
    settings: &TrainTokenizer,
    spec: &TokenizeSpec,
    domain_files: &[Vec<PathBuf>],
    rules: &[SplitRule],
    cancel: &CancelFlag,
) -> Result<(Tokenizer, Vec<u8>), DataError> {
    // The trainer pulls documents from this iterator; the first read error is kept and reported after training.
    let first_error: Arc<Mutex<Option<DataError>>> = Arc::new(Mutex::new(None));
    let mut documents: Vec<Box<dyn Iterator<Item = String> + Send>> = Vec::new();
    for ((domain, files), rule) in spec
        .domains
        .iter()
        .zip(domain_files)
        .zip(rules.iter().copied())
    {
        let error_slot = first_error.clone();
        let cancel = cancel.clone();
        let seed = spec.seed;
        let mut budget = settings.max_bytes_per_domain;
        let reader = DocumentReader::new(files.clone(), domain.options.clone());
        documents.push(Box::new(
            reader
                .map_while(move |document| {
                    if cancel.is_cancelled() {
                        error_slot.lock().ok()?.get_or_insert(DataError::Cancelled);
                        return None;
                    }
                    match document {
                        Ok(document) => Some(document),
                        Err(error) => {
                            error_slot.lock().ok()?.get_or_insert(error);
                            None
                        }
                    }
                })
                .filter(move |document| {
                    !document.text.is_empty() && !rule.is_eval(document_hash(seed, &document.text))
                })
                .take_while(move |document| {
                    let within = budget > 0;
                    budget = budget.saturating_sub(document.text.len() as u64);
                    within
                })
                .map(|document| document.text),
        ));
    }
    let trained = train_bpe(settings, documents.into_iter().flatten())?;
    if let Some(error) = first_error.lock().ok().and_then(|mut slot| slot.take()) {
        return Err(error);
    }
    Ok(trained)
}

struct Progress<'a> {
    reporter: &'a dyn Reporter,
    total_bytes: u64,
    /// Input bytes of the domains already finished.
    done_before: AtomicU64,
    tokens: AtomicU64,
    started: Instant,
    /// When the last status line went out (one every half second is plenty).
    last_message: Mutex<Option<Instant>>,
}

impl Progress<'_> {
    fn update(&self, domain: &str, domain_bytes: u64, new_tokens: u64) {
        let tokens = self.tokens.fetch_add(new_tokens, Ordering::Relaxed) + new_tokens;
        let done = self.done_before.load(Ordering::Relaxed) + domain_bytes;
        self.reporter
            .progress(done.min(self.total_bytes), self.total_bytes, "bytes");
        let Ok(mut last) = self.last_message.lock() else {
            return;
        };
        if last.is_some_and(|at| at.elapsed().as_secs_f64() < 0.5) {
            return;
        }
        *last = Some(Instant::now());
        let seconds = self.started.elapsed().as_secs_f64().max(1e-9);
        self.reporter.message(&format!(
            "{domain}: {tokens} tokens, {:.0} tokens/s",
            tokens as f64 / seconds
        ));
    }
}

/// The stream of document batches a reader thread hands to the encoder.
type BatchMessage = Result<Vec<Document>, DataError>;

#[allow(clippy::too_many_arguments)]
fn encode_domain(
    domain: &DomainSpec,
    files: Vec<PathBuf>,
    rule: SplitRule,
    spec: &TokenizeSpec,
    tokenizer: &Tokenizer,
    (bos, eos): (&SpecialToken, &SpecialToken),
    dtype: TokenDtype,
    out_dir: &Path,
    progress: &Progress<'_>,
    cancel: &CancelFlag,
) -> Result<DomainManifest, DataError> {
    let sources = files
        .iter()
        .map(|file| {
            file.strip_prefix(&domain.source)
                .ok()
                .filter(|rest| !rest.as_os_str().is_empty())
                .unwrap_or(file)
                .display()
                .to_string()
        })
        .collect();
    let mut train = ShardWriter::create(
        &out_dir.join("train").join(format!("{}.bin", domain.name)),
        dtype,
    )?;
    let mut eval = ShardWriter::create(
        &out_dir.join("eval").join(format!("{}.bin", domain.name)),
        dtype,
    )?;
    let mut manifest = DomainManifest {
        name: domain.name.clone(),
        sources,
        train_documents: 0,
        eval_documents: 0,
        train_tokens: 0,
        eval_tokens: 0,
        empty_documents: 0,
        invalid_utf8_replaced: 0,
        train_truncated: false,
        eval_from_train_tail_tokens: 0,
    };
    let cap = spec.max_tokens_per_domain.unwrap_or(u64::MAX);
    // In fraction mode nothing is left to do once the train split is full; with a fixed eval count the rest of
    // the domain is still read (only hashed, not encoded) so the eval split is the one `eval_documents` chose.
    let read_to_end = matches!(domain.split, EvalSplit::Documents(_));
    let batch_documents = spec.batch_documents.max(1);

    let mut reader = DocumentReader::new(files, domain.options.clone());
    let bytes_read = reader.bytes_read();
    let (sender, receiver) = mpsc::sync_channel::<BatchMessage>(2);
    let replaced = std::thread::scope(|scope| -> Result<u64, DataError> {
        let producer = scope.spawn(move || {
            let mut batch = Vec::with_capacity(batch_documents);
            for document in reader.by_ref() {
                match document {
                    Ok(document) => {
                        batch.push(document);
                        if batch.len() == batch_documents
                            && sender
                                .send(Ok(std::mem::replace(
                                    &mut batch,
                                    Vec::with_capacity(batch_documents),
                                )))
                                .is_err()
                        {
                            return reader.replaced;
                        }
                    }
                    Err(error) => {
                        let _ = sender.send(Err(error));
                        return reader.replaced;
                    }
                }
            }
            if !batch.is_empty() {
                let _ = sender.send(Ok(batch));
            }
            reader.replaced
        });
        let mut train_buffer = Vec::new();
        let mut eval_buffer = Vec::new();
        for message in receiver.iter() {
            if cancel.is_cancelled() {
                return Err(DataError::Cancelled);
            }
            let documents = message?;
            let mut selected: Vec<(&str, bool)> = Vec::with_capacity(documents.len());
            for document in &documents {
                if document.text.is_empty() {
                    manifest.empty_documents += 1;
                    continue;
                }
                let is_eval = rule.is_eval(document_hash(spec.seed, &document.text));
                if is_eval || !manifest.train_truncated {
                    selected.push((document.text.as_str(), is_eval));
                }
            }
            let encodings = tokenizer
                .encode_batch_fast(
                    selected.iter().map(|(text, _)| *text).collect::<Vec<_>>(),
                    false,
                )
                .map_err(|error| DataError::Tokenizer {
                    path: out_dir.join("tokenizer.json"),
                    message: format!("encoding domain `{}` failed: {error}", domain.name),
                })?;
            train_buffer.clear();
            eval_buffer.clear();
            let mut new_tokens = 0;
            for ((_, is_eval), encoding) in selected.iter().zip(&encodings) {
                let ids = encoding.get_ids();
                new_tokens += ids.len() as u64 + 2;
                let buffer = if *is_eval {
                    manifest.eval_documents += 1;
                    &mut eval_buffer
                } else if manifest.train_truncated {
                    continue;
                } else {
                    manifest.train_documents += 1;
                    &mut train_buffer
                };
                let start = buffer.len();
                buffer.push(bos.id);
                buffer.extend_from_slice(ids);
                buffer.push(eos.id);
                if !*is_eval {
                    let room = cap - manifest.train_tokens;
                    let added = (buffer.len() - start) as u64;
                    if added >= room {
                        buffer.truncate(start + room as usize);
                        manifest.train_truncated = true;
                    }
                    manifest.train_tokens += (buffer.len() - start) as u64;
                }
            }
            train.write(&train_buffer)?;
            eval.write(&eval_buffer)?;
            manifest.eval_tokens = eval.tokens_written();
            progress.update(&domain.name, bytes_read.load(Ordering::Relaxed), new_tokens);
            if manifest.train_truncated && !read_to_end {
                break;
            }
        }
        drop(receiver);
        producer.join().map_err(|_| DataError::Shard {
            path: out_dir.to_path_buf(),
            message: format!("the reader thread of domain `{}` panicked", domain.name),
        })
    })?;
    manifest.invalid_utf8_replaced = replaced;
    if replaced > 0 {
        tracing::warn!(domain = %domain.name, "replaced invalid UTF-8 in {replaced} lines/files of domain `{}`", domain.name);
    }
    manifest.train_tokens = train.finish()?;
    manifest.eval_tokens = eval.finish()?;
    progress
        .done_before
        .fetch_add(bytes_read.load(Ordering::Relaxed), Ordering::Relaxed);

    if manifest.train_documents + manifest.eval_documents == 0 {
        return Err(DataError::EmptyDomain {
            domain: domain.name.clone(),
            message: format!(
                "its files hold no non-empty documents ({} empty); check `text_field` and the files",
                manifest.empty_documents
            ),
        });
    }
    let needed = spec.seq_len + 1;
    if let EvalSplit::Sequences(count) = domain.split {
        let wanted = count.saturating_mul(spec.seq_len).saturating_add(1);
        if manifest.train_tokens < wanted.saturating_add(needed) {
            return Err(DataError::TooFewTokens {
                domain: domain.name.clone(),
                split: "train".into(),
                tokens: manifest.train_tokens.saturating_sub(wanted),
                needed,
                hint: format!(
                    ", or lower `eval_sequences` (it holds out {count} × {} + 1 = {wanted} of the domain's {} \
                     tokens)",
                    spec.seq_len, manifest.train_tokens
                ),
            });
        }
        move_tail(
            &out_dir.join("train").join(format!("{}.bin", domain.name)),
            &out_dir.join("eval").join(format!("{}.bin", domain.name)),
            wanted,
            dtype,
        )?;
        manifest.train_tokens -= wanted;
        manifest.eval_tokens += wanted;
        manifest.eval_from_train_tail_tokens = wanted;
    }
    if let EvalSplit::Fraction(fraction) = domain.split
        && fraction > 0.0
        && manifest.eval_tokens < needed
        && manifest.train_tokens >= 2 * needed
    {
        // The split is by document: one or a few long documents can all land in train. Hold out
        // the tail of the train stream instead: the fraction of the domain's tokens, at least one
        // sequence, leaving at least one sequence to train on.
        let total = manifest.train_tokens + manifest.eval_tokens;
        let wanted = ((fraction * total as f64).ceil() as u64).max(needed) - manifest.eval_tokens;
        let moved = wanted.min(manifest.train_tokens - needed);
        move_tail(
            &out_dir.join("train").join(format!("{}.bin", domain.name)),
            &out_dir.join("eval").join(format!("{}.bin", domain.name)),
            moved,
            dtype,
        )?;
        tracing::warn!(
            domain = %domain.name,
            "domain `{}`: eval_fraction = {fraction} held out {} of its {} documents ({} tokens, fewer than one \
             sequence of {needed}); held out the last {moved} tokens of its training stream instead",
            domain.name,
            manifest.eval_documents,
            manifest.eval_documents + manifest.train_documents,
            manifest.eval_tokens,
        );
        manifest.train_tokens -= moved;
        manifest.eval_tokens += moved;
        manifest.eval_from_train_tail_tokens = moved;
    }
    if manifest.train_tokens < needed {
        return Err(DataError::TooFewTokens {
            domain: domain.name.clone(),
            split: "train".into(),
            tokens: manifest.train_tokens,
            needed,
            hint: " or lower the eval split".into(),
        });
    }
    if manifest.eval_tokens < needed {
        return Err(DataError::TooFewTokens {
            domain: domain.name.clone(),
            split: "eval".into(),
            tokens: manifest.eval_tokens,
            needed,
            hint: match domain.split {
                EvalSplit::Documents(_) => ", or raise `eval_documents` (or use `eval_fraction`, which holds out the tail of the \
                     training stream when the documents are too few)"
                    .into(),
                EvalSplit::Fraction(_) => ", or raise `eval_fraction` above 0".into(),
                EvalSplit::Sequences(_) => ", or raise `eval_sequences`".into(),
            },
        });
    }
    Ok(manifest)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::data::source::InvalidUtf8;
    use crate::data::{Shard, TokenizedDataset};
    use crate::progress::NullReporter;

    const WORDS: &[&str] = &[
        "river", "stone", "compile", "function", "garden", "window", "ledger", "quantum", "harbor",
        "signal", "the", "a", "of", "and", "to", "in", "is", "was", "with", "for", "café", "naïve",
        "東京", "🦙",
    ];

    /// `count` distinct documents of a few sentences, deterministic in `salt`.
    pub(crate) fn documents(salt: u64, count: usize) -> Vec<String> {
        (0..count)
            .map(|index| {
                let mut state = salt * 1_000_003 + index as u64;
                let mut text = format!("Document {salt}-{index}:");
                for word in 0..(12 + index % 17) {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    text.push(' ');
                    text.push_str(WORDS[(state >> 33) as usize % WORDS.len()]);
                    if word % 7 == 6 {
                        text.push_str(".\n");
                    }
                }
                text
            })
            .collect()
    }

    pub(crate) fn write_jsonl(path: &Path, texts: &[String]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let lines: Vec<String> = texts
            .iter()
            .map(|text| serde_json::json!({ "text": text, "id": 1 }).to_string())
            .collect();
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    pub(crate) fn spec(root: &Path, split: EvalSplit) -> TokenizeSpec {
        let domain = |name: &str| DomainSpec {
            name: name.into(),
            source: root.join(name),
            split,
            options: SourceOptions::default(),
        };
        TokenizeSpec {
            domains: vec![domain("web"), domain("code")],
            tokenizer: TokenizerSource::Train(TrainTokenizer {
                vocab_size: 300,
                min_frequency: 2,
                max_bytes_per_domain: 1 << 20,
            }),
            seq_len: 8,
            seed: 3,
            max_tokens_per_domain: None,
            bos_token: None,
            eos_token: None,
            batch_documents: 7,
        }
    }

    fn corpus(root: &Path) -> (Vec<String>, Vec<String>) {
        let web = documents(1, 60);
        let code = documents(2, 40);
        write_jsonl(&root.join("web").join("a.jsonl"), &web[..30]);
        write_jsonl(&root.join("web").join("b.jsonl"), &web[30..]);
        write_jsonl(&root.join("code").join("all.jsonl"), &code);
        (web, code)
    }

    fn run(spec: &TokenizeSpec, out: &Path) -> Result<TokenizeSummary, DataError> {
        tokenize(spec, out, &NullReporter, &CancelFlag::default())
    }

    /// A domain of one long document cannot be split by document: the eval split gets the tail of
    /// its token stream (the fraction, at least one sequence), moved, not copied.
    #[test]
    fn one_long_document_holds_out_the_tail_of_its_stream() {
        let root = tempfile::tempdir().unwrap();
        corpus(root.path());
        let long = documents(9, 40).join(" ");
        write_jsonl(&root.path().join("book").join("one.jsonl"), &[long]);
        let mut spec = spec(root.path(), EvalSplit::Fraction(0.1));
        spec.domains.push(DomainSpec {
            name: "book".into(),
            source: root.path().join("book"),
            split: EvalSplit::Fraction(0.1),
            options: SourceOptions::default(),
        });
        let out = root.path().join("out");
        run(&spec, &out).unwrap();
        let dataset = TokenizedDataset::open(&out).unwrap();
        let book = &dataset.manifest().domains[2];
        assert_eq!(book.train_documents + book.eval_documents, 1);
        let total = book.train_tokens + book.eval_tokens;
        assert!(book.eval_from_train_tail_tokens > 0, "{book:?}");
        assert_eq!(
            book.eval_tokens,
            (total as f64 * 0.1).ceil() as u64,
            "{book:?}"
        );
        assert!(book.train_tokens > spec.seq_len as u64);
        // Nothing lost or doubled: train then eval is the one document's stream.
        let read = |split: &str| {
            let shard =
                Shard::open(&out.join(split).join("book.bin"), dataset.manifest().dtype).unwrap();
            shard.read(0, shard.len() as usize).unwrap()
        };
        let (train, eval) = (read("train"), read("eval"));
        assert_eq!(
            (train.len() as u64, eval.len() as u64),
            (book.train_tokens, book.eval_tokens)
        );
        let mut stream = train;
        stream.extend(eval);
        assert_eq!(stream.first(), Some(&dataset.manifest().bos_id));
        assert_eq!(stream.last(), Some(&dataset.manifest().eos_id));
        assert_eq!(
            stream
                .iter()
                .filter(|&&t| t == dataset.manifest().eos_id)
                .count(),
            1
        );
        // Explicit `eval_documents` is taken at its word: the error says what to change.
        let mut strict = spec.clone();
        strict.domains[2].split = EvalSplit::Documents(0);
        let error = run(&strict, &root.path().join("out2"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("book") && error.contains("eval_documents") && error.contains("tail"),
            "{error}"
        );
    }

    /// `eval_sequences = n` holds out exactly `n · seq_len + 1` tokens per domain, the tail of its
    /// stream (every document is tokenized into train first); too few tokens is an error naming
    /// the key and the numbers.
    #[test]
    fn eval_sequences_hold_out_exactly_that_many_sequences() {
        let root = tempfile::tempdir().unwrap();
        corpus(root.path());
        let spec = spec(root.path(), EvalSplit::Sequences(3));
        let out = root.path().join("out");
        run(&spec, &out).unwrap();
        let dataset = TokenizedDataset::open(&out).unwrap();
        for domain in &dataset.manifest().domains {
            assert_eq!(domain.eval_documents, 0, "{domain:?}");
            assert_eq!(domain.eval_tokens, 3 * spec.seq_len + 1, "{domain:?}");
            assert_eq!(domain.eval_from_train_tail_tokens, domain.eval_tokens);
            let eval = Shard::open(
                &out.join("eval").join(format!("{}.bin", domain.name)),
                dataset.manifest().dtype,
            )
            .unwrap();
            assert_eq!(eval.len() as u64, domain.eval_tokens);
        }
        let greedy = self::spec(root.path(), EvalSplit::Sequences(100_000));
        let error = run(&greedy, &root.path().join("out2"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("eval_sequences") && error.contains("100000 × 8 + 1"),
            "{error}"
        );
    }

    /// The documents of a shard: each `BOS .. EOS` run, decoded.
    fn decode_documents(out: &Path, split: &str, domain: &str) -> Vec<String> {
        let dataset = TokenizedDataset::open(out).unwrap();
        let manifest = dataset.manifest();
        let tokenizer = Tokenizer::from_file(dataset.tokenizer_path()).unwrap();
        let shard = Shard::open(
            &out.join(split).join(format!("{domain}.bin")),
            manifest.dtype,
        )
        .unwrap();
        let tokens = shard.read(0, shard.len() as usize).unwrap();
        let mut texts = Vec::new();
        let mut rest = &tokens[..];
        while !rest.is_empty() {
            assert_eq!(rest[0], manifest.bos_id, "each document starts with BOS");
            let end = rest
                .iter()
                .position(|&token| token == manifest.eos_id)
                .expect("each document ends with EOS");
            texts.push(tokenizer.decode(&rest[1..end], false).unwrap());
            rest = &rest[end + 1..];
        }
        texts
    }

    #[test]
    fn text_round_trips_split_is_deterministic_and_disjoint() {
        let root = tempfile::tempdir().unwrap();
        let (web, code) = corpus(root.path());
        let spec = spec(root.path(), EvalSplit::Fraction(0.25));
        let (first, second) = (root.path().join("out1"), root.path().join("out2"));
        let summary = run(&spec, &first).unwrap();
        run(&spec, &second).unwrap();
        let manifest = &summary.manifest;
        assert_eq!(
            (manifest.bos_token.as_str(), manifest.eos_token.as_str()),
            ("<s>", "</s>"),
            "found from the template"
        );
        assert_eq!(manifest.dtype, TokenDtype::U16);
        for relative in [
            "manifest.json",
            "tokenizer.json",
            "train/web.bin",
            "eval/web.bin",
            "train/code.bin",
            "eval/code.bin",
        ] {
            assert_eq!(
                std::fs::read(first.join(relative)).unwrap(),
                std::fs::read(second.join(relative)).unwrap(),
                "{relative}"
            );
        }
        for (domain, texts) in [("web", &web), ("code", &code)] {
            let train = decode_documents(&first, "train", domain);
            let eval = decode_documents(&first, "eval", domain);
            assert!(
                !eval.is_empty() && eval.len() < train.len(),
                "{domain}: {} eval, {} train",
                eval.len(),
                train.len()
            );
            let train_set: BTreeSet<&String> = train.iter().collect();
            assert!(
                eval.iter().all(|text| !train_set.contains(text)),
                "no document in both splits"
            );
            let mut all: Vec<&String> = train.iter().chain(&eval).collect();
            all.sort();
            let mut expected: Vec<&String> = texts.iter().collect();
            expected.sort();
            assert_eq!(
                all, expected,
                "decoded shards give back the input text exactly"
            );
            let entry = manifest
                .domains
                .iter()
                .find(|entry| entry.name == domain)
                .unwrap();
            assert_eq!(entry.eval_documents as usize, eval.len());
        }
    }

    #[test]
    fn adding_files_elsewhere_moves_no_document_across_the_split() {
        let root = tempfile::tempdir().unwrap();
        corpus(root.path());
        let spec = spec(root.path(), EvalSplit::Fraction(0.25));
        run(&spec, &root.path().join("before")).unwrap();
        write_jsonl(
            &root.path().join("web").join("0-new.jsonl"),
            &documents(9, 25),
        );
        run(&spec, &root.path().join("after")).unwrap();
        let before: BTreeSet<String> = decode_documents(&root.path().join("before"), "eval", "web")
            .into_iter()
            .collect();
        let after: BTreeSet<String> = decode_documents(&root.path().join("after"), "eval", "web")
            .into_iter()
            .collect();
        assert!(before.is_subset(&after));
        let old_train: BTreeSet<String> =
            decode_documents(&root.path().join("before"), "train", "web")
                .into_iter()
                .collect();
        assert!(old_train.is_disjoint(&after));
    }

    #[test]
    fn eval_documents_picks_a_fixed_count_and_the_cap_truncates_train() {
        let root = tempfile::tempdir().unwrap();
        corpus(root.path());
        let mut spec = spec(root.path(), EvalSplit::Documents(3));
        spec.max_tokens_per_domain = Some(200);
        let summary = run(&spec, &root.path().join("out")).unwrap();
        for entry in &summary.manifest.domains {
            assert_eq!(entry.eval_documents, 3, "{}", entry.name);
            assert_eq!(entry.train_tokens, 200);
            assert!(entry.train_truncated);
        }
    }

    #[test]
    fn a_vocabulary_over_65536_tokens_switches_shards_to_u32() {
        let root = tempfile::tempdir().unwrap();
        let mut vocab = serde_json::Map::new();
        for id in 0..70_000u32 {
            vocab.insert(format!("w{id}"), id.into());
        }
        for (token, id) in [("<s>", 70_000u32), ("</s>", 70_001), ("[UNK]", 70_002)] {
            vocab.insert(token.into(), id.into());
        }
        let tokenizer = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "normalizer": null, "post_processor": null,
            "decoder": null, "pre_tokenizer": { "type": "Whitespace" },
            "added_tokens": [
                { "id": 70_000, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true },
                { "id": 70_001, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true }
            ],
            "model": { "type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]" }
        });
        let tokenizer_path = root.path().join("tokenizer.json");
        std::fs::write(&tokenizer_path, tokenizer.to_string()).unwrap();
        let texts: Vec<String> = (0..40)
            .map(|index| format!("w69999 w{index} w65536 w{}", 65_000 + index))
            .collect();
        write_jsonl(&root.path().join("web").join("a.jsonl"), &texts);
        write_jsonl(&root.path().join("code").join("a.jsonl"), &texts[..20]);
        let mut spec = spec(root.path(), EvalSplit::Documents(2));
        spec.tokenizer = TokenizerSource::File(tokenizer_path);
        let out = root.path().join("out");
        let summary = run(&spec, &out).unwrap();
        assert_eq!(summary.manifest.dtype, TokenDtype::U32);
        assert_eq!(
            (summary.manifest.bos_id, summary.manifest.eos_id),
            (70_000, 70_001)
        );
        assert_eq!(
            std::fs::metadata(out.join("train/code.bin")).unwrap().len(),
            18 * 6 * 4,
            "4 bytes per token"
        );
        let dataset = TokenizedDataset::open(&out).unwrap();
        let first = dataset.train_shard(0).read(0, 6).unwrap();
        assert_eq!(first[..2], [70_000, 69_999]);
        assert_eq!(first[3..], [65_536, first[4], 70_001]);
        assert!(first[4] >= 65_000);
    }

    #[test]
    fn bad_inputs_give_clear_errors() {
        let root = tempfile::tempdir().unwrap();
        corpus(root.path());
        let out = root.path().join("out");

        let mut broken = spec(root.path(), EvalSplit::Fraction(0.25));
        let bad_tokenizer = root.path().join("tokenizer.json");
        std::fs::write(&bad_tokenizer, "{ not json").unwrap();
        broken.tokenizer = TokenizerSource::File(bad_tokenizer.clone());
        let error = run(&broken, &out).unwrap_err().to_string();
        assert!(
            error.contains("does not parse as a Hugging Face tokenizer.json"),
            "{error}"
        );

        // A vocabulary without any BOS-like token: the error names the key to set.
        std::fs::write(
            &bad_tokenizer,
            r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
                "pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
                "model":{"type":"WordLevel","vocab":{"a":0,"b":1,"[UNK]":2},"unk_token":"[UNK]"}}"#,
        )
        .unwrap();
        let error = run(&broken, &out).unwrap_err();
        assert!(
            matches!(&error, DataError::SpecialToken { key, .. } if key == "bos_token"),
            "{error}"
        );
        broken.bos_token = Some("a".into());
        broken.eos_token = Some("zzz".into());
        let error = run(&broken, &out).unwrap_err().to_string();
        assert!(
            error.contains("`eos_token`: token \"zzz\" is not in the tokenizer's vocabulary"),
            "{error}"
        );

        let mut tiny = spec(root.path(), EvalSplit::Fraction(0.25));
        tiny.seq_len = 100_000;
        let error = run(&tiny, &out).unwrap_err().to_string();
        assert!(
            error.contains("domain `web`: its train split has")
                && error.contains("seq_len + 1 = 100001"),
            "{error}"
        );

        let mut empty = spec(root.path(), EvalSplit::Fraction(0.25));
        write_jsonl(
            &root.path().join("blank").join("x.jsonl"),
            &[String::new(), String::new()],
        );
        empty.domains[1].source = root.path().join("blank");
        empty.domains[1].name = "blank".into();
        let error = run(&empty, &out).unwrap_err().to_string();
        assert!(
            error.contains("domain `blank`: its files hold no non-empty documents (2 empty)"),
            "{error}"
        );

        let mut bad_bytes = spec(root.path(), EvalSplit::Fraction(0.25));
        std::fs::write(
            root.path().join("code").join("bad.jsonl"),
            b"{\"text\": \"ok\"}\n{\"text\": \"\xff\"}\n",
        )
        .unwrap();
        let error = run(&bad_bytes, &out).unwrap_err().to_string();
        assert!(error.contains("bad.jsonl:2: not valid UTF-8"), "{error}");
        bad_bytes.domains[1].options.invalid_utf8 = InvalidUtf8::Replace;
        let summary = run(&bad_bytes, &out.join("replaced")).unwrap();
        assert_eq!(summary.manifest.domains[1].invalid_utf8_replaced, 1);

        let mut bad_name = spec(root.path(), EvalSplit::Fraction(0.25));
        bad_name.domains[0].name = "../web".into();
        assert!(matches!(
            run(&bad_name, &out),
            Err(DataError::Config { .. })
        ));
    }
}
