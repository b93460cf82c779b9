//! [`DomainMixture`]: the seeded sampler behind dynamic batch loading.
//!
//! Each sequence of a batch draws its domain from the current weights (categorical, like the reference's per-sample
//! `np.random.choice`), then takes that domain's next window in a seeded shuffled order. A window is `seq_len + 1`
//! tokens starting at a multiple of `seq_len`, so within one epoch every token after a domain's first is a target
//! exactly once. Weights may change between any two batches.
//!
//! The shuffled order is a keyed permutation (a Feistel network with cycle walking) rather than a stored list, so a
//! 10 GB domain costs no memory and the whole resume state is, per domain, `(epoch, cursor)` plus the position of
//! one ChaCha8 stream: restoring it replays exactly the batches the uninterrupted sampler would have produced.

use serde::{Deserialize, Serialize};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{DataError, Shard, TokenizedDataset};

/// What to do when a domain has handed out every window of its current epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Exhaustion {
    /// Start a new epoch of that domain in a fresh shuffled order, with a warning naming the epoch.
    #[default]
    Wrap,
    /// Stop with [`DataError::DomainExhausted`] (the reference's one-epoch limit, made explicit).
    Error,
}

/// One batch: `batch_size` rows of `seq_len + 1` tokens (inputs are `[.., ..seq_len]`, targets `[.., 1..]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Row-major `[batch_size, seq_len + 1]`.
    pub tokens: Vec<u32>,
    /// Domain id of each row, `[batch_size]`.
    pub domain_ids: Vec<usize>,
    pub batch_size: usize,
    pub seq_len: usize,
}

impl Batch {
    /// Row `index`, `seq_len + 1` tokens.
    pub fn row(&self, index: usize) -> &[u32] {
        let width = self.seq_len + 1;
        &self.tokens[index * width..(index + 1) * width]
    }
    /// How many rows each of `num_domains` domains got.
    pub fn domain_counts(&self, num_domains: usize) -> Vec<usize> {
        let mut counts = vec![0; num_domains];
        for &id in &self.domain_ids {
            if let Some(count) = counts.get_mut(id) {
                *count += 1;
            }
        }
        counts
    }
}

/// Exact, small resume state of a [`DomainMixture`] (serde; a few hundred bytes for seven domains).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerState {
    pub seed: u64,
    pub seq_len: usize,
    /// Word position of the ChaCha8 stream that draws domains (seeded from `seed`).
    pub rng_word_pos: u64,
    pub weights: Vec<f64>,
    pub domains: Vec<DomainCursor>,
}

/// Where one domain's shuffled order stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainCursor {
    pub name: String,
    /// Windows per epoch (checked on restore: a different dataset or `seq_len` gives another number).
    pub windows: u64,
    /// Epochs started before the current one (0 during the first pass).
    pub epoch: u64,
    /// Windows of the current epoch already handed out.
    pub cursor: u64,
}

/// The file a stage's output records its [`ConsumedWindows`] in (`prune` writes it).
pub const CONSUMED_WINDOWS_FILE: &str = "consumed_windows.json";

/// Where a stage's sampler stopped in each domain ([`CONSUMED_WINDOWS_FILE`] of `prune`): the windows it drew
/// are the first `epoch × windows + cursor` of each domain's order, which depends only on (seed,
/// domain, epoch). A later stage that starts there ([`DomainMixture::skip_consumed`]) draws other
/// windows until a domain runs out and wraps. `domains` is empty for a stage that drew nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumedWindows {
    pub seed: u64,
    pub seq_len: usize,
    pub domains: Vec<DomainCursor>,
}

impl ConsumedWindows {
    /// Nothing drawn (the one-shot pruning baselines).
    pub fn none(seed: u64, seq_len: usize) -> Self {
        ConsumedWindows {
            seed,
            seq_len,
            domains: Vec::new(),
        }
    }
}

/// A bijection of `0..windows`, keyed by (seed, domain, epoch): balanced Feistel network over the smallest
/// even-bit power of two covering `windows`, with cycle walking back into range.
#[derive(Debug, Clone)]
struct WindowPermutation {
    windows: u64,
    half_bits: u32,
    round_keys: [u64; 6],
}

impl WindowPermutation {
    fn new(windows: u64, seed: u64, domain: &str, epoch: u64) -> Self {
        let mut half_bits = 1;
        while half_bits < 32 && (1u64 << (2 * half_bits)) < windows {
            half_bits += 1;
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"sheared window permutation v1");
        hasher.update(&seed.to_le_bytes());
        hasher.update(&epoch.to_le_bytes());
        hasher.update(domain.as_bytes());
        let mut key_bytes = [0u8; 48];
        hasher.finalize_xof().fill(&mut key_bytes);
        let mut round_keys = [0u64; 6];
        for (key, chunk) in round_keys.iter_mut().zip(key_bytes.chunks_exact(8)) {
            *key = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        }
        WindowPermutation {
            windows,
            half_bits,
            round_keys,
        }
    }

    fn feistel(&self, value: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let (mut left, mut right) = (value >> self.half_bits, value & mask);
        for key in self.round_keys {
            let mixed = splitmix64(right ^ key) & mask;
            (left, right) = (right, left ^ mixed);
        }
        (left << self.half_bits) | right
    }

    /// The window at shuffled position `index` (`index < windows`).
    fn apply(&self, index: u64) -> u64 {
        let mut value = self.feistel(index);
        while value >= self.windows {
            value = self.feistel(value);
        }
        value
    }
}

fn splitmix64(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct DomainStream {
    name: String,
    shard: Shard,
    windows: u64,
    epoch: u64,
    cursor: u64,
    order: WindowPermutation,
}

/// Seeded sampler over the train split of a [`TokenizedDataset`]. Starts with uniform weights.
pub struct DomainMixture {
    seed: u64,
    seq_len: usize,
    exhaustion: Exhaustion,
    rng: ChaCha8Rng,
    weights: Vec<f64>,
    /// Running sums of `weights` for the categorical draw.
    cumulative: Vec<f64>,
    streams: Vec<DomainStream>,
}

impl DomainMixture {
    /// A sampler of `seq_len + 1`-token windows. Every domain needs at least one window, whatever its weight,
    /// so that a weight raised later can never hit an empty domain.
    pub fn new(
        dataset: &TokenizedDataset,
        seq_len: usize,
        seed: u64,
        exhaustion: Exhaustion,
    ) -> Result<Self, DataError> {
        if seq_len == 0 {
            return Err(DataError::config("seq_len", "must be at least 1"));
        }
        let mut streams = Vec::new();
        for (id, name) in dataset.domains().iter().enumerate() {
            let source = dataset.train_shard(id);
            let shard = Shard::open(source.path(), source.dtype())?;
            let tokens = shard.len();
            let windows = if tokens > seq_len as u64 {
                (tokens - 1) / seq_len as u64
            } else {
                0
            };
            if windows == 0 {
                return Err(DataError::TooFewTokens {
                    domain: name.clone(),
                    split: "train".into(),
                    tokens,
                    needed: seq_len as u64 + 1,
                    hint: " or drop the domain from the tokenize stage".into(),
                });
            }
            let order = WindowPermutation::new(windows, seed, name, 0);
            streams.push(DomainStream {
                name: name.clone(),
                shard,
                windows,
                epoch: 0,
                cursor: 0,
                order,
            });
        }
        if streams.is_empty() {
            return Err(DataError::Manifest {
                path: dataset.dir().join("manifest.json"),
                message: "the dataset has no domains".into(),
            });
        }
        let uniform = vec![1.0; streams.len()];
        let mut mixture = DomainMixture {
            seed,
            seq_len,
            exhaustion,
            rng: ChaCha8Rng::seed_from_u64(seed),
            weights: Vec::new(),
            cumulative: Vec::new(),
            streams,
        };
        mixture.set_weights(&uniform)?;
        Ok(mixture)
    }

    /// Sets the mixture weights, one per domain in `domains()` order; they need not sum to 1 (they are
    /// normalised). Errors name the offending domain; on error the previous weights stay.
    pub fn set_weights(&mut self, weights: &[f64]) -> Result<(), DataError> {
        if weights.len() != self.streams.len() {
            let names: Vec<&str> = self
                .streams
                .iter()
                .map(|stream| stream.name.as_str())
                .collect();
            return Err(DataError::InvalidWeights {
                message: format!(
                    "{} weights for {} domains; give one weight per domain in this order: {}",
                    weights.len(),
                    names.len(),
                    names.join(", ")
                ),
            });
        }
        for (weight, stream) in weights.iter().zip(&self.streams) {
            if !weight.is_finite() || *weight < 0.0 {
                return Err(DataError::InvalidWeights {
                    message: format!(
                        "domain `{}` has weight {weight}; weights must be finite and not negative",
                        stream.name
                    ),
                });
            }
        }
        let total: f64 = weights.iter().sum();
        if total <= 0.0 || !total.is_finite() {
            return Err(DataError::InvalidWeights {
                message: format!(
                    "weights sum to {total}; at least one domain needs a positive weight"
                ),
            });
        }
        self.weights = weights.iter().map(|weight| weight / total).collect();
        let mut running = 0.0;
        self.cumulative = self
            .weights
            .iter()
            .map(|weight| {
                running += weight;
                running
            })
            .collect();
        Ok(())
    }

    /// Current normalised weights.
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }
    pub fn domains(&self) -> Vec<&str> {
        self.streams
            .iter()
            .map(|stream| stream.name.as_str())
            .collect()
    }

    /// The next `batch_size` rows. On error (an exhausted domain under [`Exhaustion::Error`]) the sampler is
    /// left exactly as before the call.
    pub fn next_batch(&mut self, batch_size: usize) -> Result<Batch, DataError> {
        let before = self.state();
        let width = self.seq_len + 1;
        let mut tokens = Vec::with_capacity(batch_size * width);
        let mut domain_ids = Vec::with_capacity(batch_size);
        for _ in 0..batch_size {
            match self.next_row(&mut tokens) {
                Ok(domain) => domain_ids.push(domain),
                Err(error) => {
                    self.restore(before)?;
                    return Err(error);
                }
            }
        }
        Ok(Batch {
            tokens,
            domain_ids,
            batch_size,
            seq_len: self.seq_len,
        })
    }

    fn draw_domain(&mut self) -> usize {
        let last = self.cumulative.len() - 1;
        let point = self.rng.random::<f64>() * self.cumulative[last];
        self.cumulative
            .iter()
            .position(|&sum| sum > point)
            .unwrap_or(last)
    }

    fn next_row(&mut self, out: &mut Vec<u32>) -> Result<usize, DataError> {
        let domain = self.draw_domain();
        let (seed, seq_len, exhaustion) = (self.seed, self.seq_len, self.exhaustion);
        let stream = &mut self.streams[domain];
        if stream.cursor >= stream.windows {
            match exhaustion {
                Exhaustion::Error => {
                    return Err(DataError::DomainExhausted {
                        domain: stream.name.clone(),
                        tokens_used: (stream.epoch + 1) * stream.windows * seq_len as u64,
                        windows: stream.windows,
                        window_tokens: seq_len as u64 + 1,
                        epoch: stream.epoch,
                    });
                }
                Exhaustion::Wrap => {
                    stream.epoch += 1;
                    stream.cursor = 0;
                    stream.order =
                        WindowPermutation::new(stream.windows, seed, &stream.name, stream.epoch);
                    tracing::warn!(
                        domain = %stream.name,
                        epoch = stream.epoch + 1,
                        "domain `{}` used all {} windows; starting epoch {} in a new shuffled order (its data is now \
                         repeated)",
                        stream.name,
                        stream.windows,
                        stream.epoch + 1
                    );
                }
            }
        }
        let window = stream.order.apply(stream.cursor);
        stream.cursor += 1;
        stream
            .shard
            .read_into(window * seq_len as u64, seq_len + 1, out)?;
        Ok(domain)
    }

    /// The exact resume state.
    pub fn state(&self) -> SamplerState {
        SamplerState {
            seed: self.seed,
            seq_len: self.seq_len,
            // A ChaCha word position is 68 bits; 2^64 words would take centuries of sampling to reach.
            rng_word_pos: u64::try_from(self.rng.get_word_pos()).unwrap_or(u64::MAX),
            weights: self.weights.clone(),
            domains: self
                .streams
                .iter()
                .map(|stream| DomainCursor {
                    name: stream.name.clone(),
                    windows: stream.windows,
                    epoch: stream.epoch,
                    cursor: stream.cursor,
                })
                .collect(),
        }
    }

    /// What this sampler has drawn so far, per domain.
    pub fn consumed(&self) -> ConsumedWindows {
        let state = self.state();
        ConsumedWindows {
            seed: state.seed,
            seq_len: state.seq_len,
            domains: state.domains,
        }
    }

    /// Starts each domain where `consumed` (another stage's sampler over the same dataset) stopped,
    /// so that this sampler's windows are disjoint from the ones that stage trained on until a domain
    /// runs out and wraps. The two samplers must share the seed and `seq_len` (the window orders
    /// depend on them); the errors say so.
    pub fn skip_consumed(&mut self, consumed: &ConsumedWindows) -> Result<(), DataError> {
        if consumed.domains.is_empty() {
            return Ok(());
        }
        if consumed.seed != self.seed || consumed.seq_len != self.seq_len {
            return Err(DataError::StateMismatch {
                message: format!(
                    "the upstream stage drew its windows with seed {} and seq_len {}, this stage samples with seed {} \
                     and seq_len {}; skipping its windows needs the same seed and seq_len (set them alike, or drop \
                     `skip_windows_of`)",
                    consumed.seed, consumed.seq_len, self.seed, self.seq_len
                ),
            });
        }
        for cursor in &consumed.domains {
            let Some(stream) = self
                .streams
                .iter_mut()
                .find(|stream| stream.name == cursor.name)
            else {
                return Err(DataError::StateMismatch {
                    message: format!(
                        "the upstream stage drew from domain `{}`, which this dataset does not have",
                        cursor.name
                    ),
                });
            };
            if cursor.windows != stream.windows || cursor.cursor > cursor.windows {
                return Err(DataError::StateMismatch {
                    message: format!(
                        "domain `{}`: the upstream stage's sampler had {} windows, this one {}; they read different \
                         datasets",
                        cursor.name, cursor.windows, stream.windows
                    ),
                });
            }
            stream.epoch = cursor.epoch;
            stream.cursor = cursor.cursor;
            stream.order =
                WindowPermutation::new(stream.windows, self.seed, &stream.name, stream.epoch);
        }
        Ok(())
    }

    /// Continues from `state` (taken from a sampler over the same dataset and `seq_len`).
    pub fn restore(&mut self, state: SamplerState) -> Result<(), DataError> {
        if state.seq_len != self.seq_len {
            return Err(DataError::StateMismatch {
                message: format!(
                    "the state has seq_len {} but this sampler {}",
                    state.seq_len, self.seq_len
                ),
            });
        }
        let names: Vec<&str> = self
            .streams
            .iter()
            .map(|stream| stream.name.as_str())
            .collect();
        let saved: Vec<&str> = state
            .domains
            .iter()
            .map(|cursor| cursor.name.as_str())
            .collect();
        if names != saved {
            return Err(DataError::StateMismatch {
                message: format!(
                    "the state's domains [{}] are not the dataset's [{}]",
                    saved.join(", "),
                    names.join(", ")
                ),
            });
        }
        for (cursor, stream) in state.domains.iter().zip(&self.streams) {
            if cursor.windows != stream.windows || cursor.cursor > cursor.windows {
                return Err(DataError::StateMismatch {
                    message: format!(
                        "domain `{}`: the state has cursor {} of {} windows but the dataset gives {} windows; the \
                         dataset changed since the state was saved",
                        cursor.name, cursor.cursor, cursor.windows, stream.windows
                    ),
                });
            }
        }
        self.set_weights(&state.weights)?;
        self.seed = state.seed;
        self.rng = ChaCha8Rng::seed_from_u64(state.seed);
        self.rng.set_word_pos(state.rng_word_pos as u128);
        for (cursor, stream) in state.domains.into_iter().zip(&mut self.streams) {
            stream.epoch = cursor.epoch;
            stream.cursor = cursor.cursor;
            stream.order =
                WindowPermutation::new(stream.windows, state.seed, &stream.name, stream.epoch);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_bijection_and_depends_on_epoch() {
        for windows in [1u64, 2, 3, 5, 17, 64, 65, 1000] {
            let permutation = WindowPermutation::new(windows, 7, "web", 0);
            let mut seen: Vec<u64> = (0..windows).map(|index| permutation.apply(index)).collect();
            seen.sort_unstable();
            assert_eq!(
                seen,
                (0..windows).collect::<Vec<_>>(),
                "windows = {windows}"
            );
        }
        let first: Vec<u64> = (0..100)
            .map(|index| WindowPermutation::new(100, 7, "web", 0).apply(index))
            .collect();
        let second: Vec<u64> = (0..100)
            .map(|index| WindowPermutation::new(100, 7, "web", 1).apply(index))
            .collect();
        assert_ne!(first, second);
        assert_ne!(
            first,
            (0..100).collect::<Vec<_>>(),
            "the order must actually be shuffled"
        );
    }
}

#[cfg(test)]
mod sampler_tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::data::TokenDtype;
    use crate::data::dataset::testing::write_dataset;

    /// Domain `d`'s train tokens are `d * 10_000 + position`, so a row tells where it came from.
    fn dataset(train_lengths: &[u32]) -> (tempfile::TempDir, TokenizedDataset) {
        let dir = tempfile::tempdir().unwrap();
        let names = ["web", "code", "books", "arxiv"];
        let domains: Vec<(&str, Vec<u32>, Vec<u32>)> = train_lengths
            .iter()
            .enumerate()
            .map(|(id, &length)| {
                (
                    names[id],
                    (0..length)
                        .map(|position| id as u32 * 10_000 + position)
                        .collect(),
                    vec![0; 9],
                )
            })
            .collect();
        write_dataset(dir.path(), &domains, TokenDtype::U32);
        let dataset = TokenizedDataset::open(dir.path()).unwrap();
        (dir, dataset)
    }

    #[test]
    fn rows_are_aligned_consecutive_windows_without_repeats_within_an_epoch() {
        let (_dir, data) = dataset(&[41]); // (41 - 1) / 4 = 10 windows of 5 tokens
        let mut mixture = DomainMixture::new(&data, 4, 3, Exhaustion::Error).unwrap();
        let batch = mixture.next_batch(10).unwrap();
        assert_eq!(batch.tokens.len(), 10 * 5);
        let mut starts = BTreeSet::new();
        for row in 0..10 {
            let tokens = batch.row(row);
            assert_eq!(tokens[0] % 4, 0, "windows start at multiples of seq_len");
            assert!(tokens.windows(2).all(|pair| pair[1] == pair[0] + 1));
            starts.insert(tokens[0]);
        }
        assert_eq!(starts.len(), 10, "every window exactly once per epoch");
        assert_ne!(
            starts.iter().copied().collect::<Vec<_>>(),
            batch.tokens.iter().step_by(5).copied().collect::<Vec<_>>(),
            "shuffled"
        );
    }

    /// A second stage that skips what a first one drew (same seed, other weights) reads only windows
    /// the first never saw, until a domain runs out; mismatched seeds or seq_len are refused.
    #[test]
    fn skipping_consumed_windows_gives_disjoint_windows() {
        let (_dir, data) = dataset(&[401, 201]); // 100 and 50 windows of 4 tokens
        let mut first = DomainMixture::new(&data, 4, 9, Exhaustion::Error).unwrap();
        first.set_weights(&[0.5, 0.5]).unwrap();
        let starts = |batch: &Batch| -> Vec<u32> {
            (0..batch.batch_size).map(|row| batch.row(row)[0]).collect()
        };
        let mut seen = BTreeSet::new();
        for _ in 0..6 {
            seen.extend(starts(&first.next_batch(8).unwrap()));
        }
        let consumed: ConsumedWindows =
            serde_json::from_str(&serde_json::to_string(&first.consumed()).unwrap()).unwrap();
        assert_eq!(consumed.domains.iter().map(|d| d.cursor).sum::<u64>(), 48);

        let mut second = DomainMixture::new(&data, 4, 9, Exhaustion::Error).unwrap();
        second.set_weights(&[0.7, 0.3]).unwrap();
        second.skip_consumed(&consumed).unwrap();
        let left = 150 - 48;
        let mut drawn = BTreeSet::new();
        // Draw until a domain runs out (Exhaustion::Error): every window is new, none repeats.
        while let Ok(batch) = second.next_batch(1) {
            for start in starts(&batch) {
                assert!(
                    !seen.contains(&start),
                    "window {start} was drawn by the first stage"
                );
                assert!(drawn.insert(start), "window {start} twice");
            }
        }
        assert!(!drawn.is_empty() && drawn.len() <= left, "{}", drawn.len());
        // Without skipping, the same seed starts with the first stage's windows.
        let mut plain = DomainMixture::new(&data, 4, 9, Exhaustion::Error).unwrap();
        let again = starts(&plain.next_batch(8).unwrap());
        assert!(again.iter().any(|start| seen.contains(start)));

        let other_seed = DomainMixture::new(&data, 4, 10, Exhaustion::Error)
            .unwrap()
            .skip_consumed(&consumed)
            .unwrap_err()
            .to_string();
        assert!(
            other_seed.contains("seed 9") && other_seed.contains("seed 10"),
            "{other_seed}"
        );
        let other_len = DomainMixture::new(&data, 8, 9, Exhaustion::Error)
            .unwrap()
            .skip_consumed(&consumed)
            .unwrap_err()
            .to_string();
        assert!(other_len.contains("seq_len"), "{other_len}");
        // A baseline that drew nothing skips nothing.
        let mut untouched = DomainMixture::new(&data, 4, 9, Exhaustion::Error).unwrap();
        untouched
            .skip_consumed(&ConsumedWindows::none(1, 2))
            .unwrap();
        assert_eq!(
            untouched.state(),
            DomainMixture::new(&data, 4, 9, Exhaustion::Error)
                .unwrap()
                .state()
        );
    }

    #[test]
    fn proportions_converge_to_the_weights() {
        let (_dir, data) = dataset(&[401, 401, 401]);
        let mut mixture = DomainMixture::new(&data, 4, 11, Exhaustion::Wrap).unwrap();
        for weights in [[0.5, 0.3, 0.2], [0.1, 0.0, 0.9]] {
            mixture.set_weights(&weights).unwrap();
            let rows = 20_000;
            let mut counts = [0usize; 3];
            for _ in 0..rows / 100 {
                for (count, add) in counts
                    .iter_mut()
                    .zip(mixture.next_batch(100).unwrap().domain_counts(3))
                {
                    *count += add;
                }
            }
            for (count, weight) in counts.iter().zip(weights) {
                let share = *count as f64 / rows as f64;
                // 5 standard deviations of a binomial share: fails by chance about once in 3 million runs.
                let tolerance = 5.0 * (weight * (1.0 - weight) / rows as f64).sqrt();
                assert!(
                    (share - weight).abs() <= tolerance.max(1e-12),
                    "share {share} vs weight {weight}"
                );
            }
        }
    }

    #[test]
    fn restored_sampler_yields_identical_batches() {
        let (_dir, data) = dataset(&[61, 29, 101]);
        let mut original = DomainMixture::new(&data, 4, 5, Exhaustion::Wrap).unwrap();
        original.set_weights(&[0.2, 0.5, 0.3]).unwrap();
        for _ in 0..7 {
            original.next_batch(3).unwrap();
        }
        let saved = serde_json::to_string(&original.state()).unwrap();
        assert!(saved.len() < 1000, "state is small: {saved}");
        let mut expected = Vec::new();
        for step in 0..12 {
            if step == 5 {
                original.set_weights(&[0.7, 0.2, 0.1]).unwrap();
            }
            expected.push(original.next_batch(3).unwrap());
        }
        assert!(
            original.state().domains[1].epoch > 0,
            "the test covers an epoch wrap"
        );

        let mut resumed = DomainMixture::new(&data, 4, 999, Exhaustion::Wrap).unwrap();
        resumed
            .restore(serde_json::from_str(&saved).unwrap())
            .unwrap();
        for (step, batch) in expected.iter().enumerate() {
            if step == 5 {
                resumed.set_weights(&[0.7, 0.2, 0.1]).unwrap();
            }
            assert_eq!(&resumed.next_batch(3).unwrap(), batch, "step {step}");
        }
        assert_eq!(resumed.state(), original.state());

        let mut other_length = DomainMixture::new(&data, 5, 5, Exhaustion::Wrap).unwrap();
        assert!(matches!(
            other_length.restore(serde_json::from_str(&saved).unwrap()),
            Err(DataError::StateMismatch { .. })
        ));
    }

    #[test]
    fn exhaustion_error_names_the_domain_and_keeps_the_state() {
        let (_dir, data) = dataset(&[13, 41]); // web: 3 windows
        let mut mixture = DomainMixture::new(&data, 4, 1, Exhaustion::Error).unwrap();
        mixture.set_weights(&[1.0, 0.0]).unwrap();
        mixture.next_batch(2).unwrap();
        let before = mixture.state();
        let error = mixture.next_batch(2).unwrap_err();
        assert!(
            matches!(&error, DataError::DomainExhausted { domain, .. } if domain == "web"),
            "{error}"
        );
        let message = error.to_string();
        assert!(
            message.contains("domain `web` ran out after")
                && message.contains("exhaustion = \"wrap\""),
            "{message}"
        );
        assert_eq!(mixture.state(), before, "a failed batch changes nothing");
        assert_eq!(
            mixture.next_batch(1).unwrap().domain_ids,
            [0],
            "the last window is still there"
        );
    }

    #[test]
    fn exhaustion_wrap_starts_a_reshuffled_epoch() {
        let (_dir, data) = dataset(&[41]);
        let mut mixture = DomainMixture::new(&data, 4, 1, Exhaustion::Wrap).unwrap();
        let first = mixture.next_batch(10).unwrap();
        let second = mixture.next_batch(10).unwrap();
        assert_eq!(mixture.state().domains[0].epoch, 1);
        let starts = |batch: &Batch| batch.tokens.iter().step_by(5).copied().collect::<Vec<_>>();
        let (mut a, mut b) = (starts(&first), starts(&second));
        assert_ne!(a, b, "a new epoch has a new order");
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b, "and the same windows");
    }

    #[test]
    fn bad_weights_and_tiny_domains_are_errors_naming_the_domain() {
        let (_dir, data) = dataset(&[41, 41]);
        let mut mixture = DomainMixture::new(&data, 4, 1, Exhaustion::Wrap).unwrap();
        let message = |weights: &[f64], mixture: &mut DomainMixture| {
            mixture.set_weights(weights).unwrap_err().to_string()
        };
        assert!(message(&[1.0], &mut mixture).contains(
            "1 weights for 2 domains; give one weight per domain in this order: web, code"
        ));
        assert!(message(&[1.0, -0.5], &mut mixture).contains("domain `code` has weight -0.5"));
        assert!(message(&[f64::NAN, 1.0], &mut mixture).contains("domain `web` has weight NaN"));
        assert!(
            message(&[0.0, 0.0], &mut mixture)
                .contains("at least one domain needs a positive weight")
        );
        assert_eq!(
            mixture.weights(),
            [0.5, 0.5],
            "failed updates keep the old weights"
        );

        let (_dir, tiny) = dataset(&[41, 4]);
        let error = DomainMixture::new(&tiny, 4, 1, Exhaustion::Wrap)
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("domain `code`: its train split has 4 tokens, fewer than one sequence of seq_len + 1 = 5"),
            "{error}"
        );
    }
}
