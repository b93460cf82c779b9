//! Fixed evaluation windows: the first N windows of each domain's `eval/` shard, so per-domain losses are
//! comparable across steps and runs (the reference's `eval_merge` split plays this role).

use super::{DataError, TokenizedDataset};

/// The evaluation sequences of one domain.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalWindows {
    pub domain: String,
    pub domain_id: usize,
    /// Row-major `[num_sequences, seq_len + 1]`.
    pub tokens: Vec<u32>,
    pub num_sequences: usize,
    pub seq_len: usize,
}

impl EvalWindows {
    pub fn row(&self, index: usize) -> &[u32] {
        let width = self.seq_len + 1;
        &self.tokens[index * width..(index + 1) * width]
    }
}

/// Up to `sequences_per_domain` windows of `seq_len + 1` tokens per domain, starting at multiples of `seq_len`
/// from the start of `eval/<domain>.bin` (every token after the first is a target once). A domain whose eval
/// split holds fewer windows gives all it has (with a warning); one with none is an error.
pub fn eval_windows(
    dataset: &TokenizedDataset,
    seq_len: usize,
    sequences_per_domain: usize,
) -> Result<Vec<EvalWindows>, DataError> {
    if seq_len == 0 || sequences_per_domain == 0 {
        return Err(DataError::config(
            if seq_len == 0 {
                "seq_len"
            } else {
                "sequences_per_domain"
            },
            "must be at least 1",
        ));
    }
    let mut all = Vec::with_capacity(dataset.domains().len());
    for (domain_id, domain) in dataset.domains().iter().enumerate() {
        let shard = dataset.eval_shard(domain_id);
        let available = if shard.len() > seq_len as u64 {
            ((shard.len() - 1) / seq_len as u64) as usize
        } else {
            0
        };
        if available == 0 {
            return Err(DataError::TooFewTokens {
                domain: domain.clone(),
                split: "eval".into(),
                tokens: shard.len(),
                needed: seq_len as u64 + 1,
                hint: ", or raise `eval_fraction` / `eval_documents` in the tokenize stage".into(),
            });
        }
        let num_sequences = available.min(sequences_per_domain);
        if num_sequences < sequences_per_domain {
            tracing::warn!(
                domain = %domain,
                "eval split of `{domain}` holds {available} windows of {} tokens, fewer than the {sequences_per_domain} \
                 asked for; using {available}",
                seq_len + 1
            );
        }
        let mut tokens = Vec::with_capacity(num_sequences * (seq_len + 1));
        for index in 0..num_sequences {
            shard.read_into((index * seq_len) as u64, seq_len + 1, &mut tokens)?;
        }
        all.push(EvalWindows {
            domain: domain.clone(),
            domain_id,
            tokens,
            num_sequences,
            seq_len,
        });
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::TokenDtype;
    use crate::data::dataset::testing::write_dataset;

    #[test]
    fn eval_windows_are_the_first_windows_and_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(
            dir.path(),
            &[
                ("web", vec![1; 20], (0..13).collect()),
                ("code", vec![1; 20], (100..106).collect()),
            ],
            TokenDtype::U16,
        );
        let dataset = TokenizedDataset::open(dir.path()).unwrap();
        let windows = eval_windows(&dataset, 4, 2).unwrap();
        assert_eq!(windows[0].num_sequences, 2);
        assert_eq!(windows[0].row(0), [0, 1, 2, 3, 4]);
        assert_eq!(windows[0].row(1), [4, 5, 6, 7, 8]);
        // `code` has 6 eval tokens: one window only, given with a warning.
        assert_eq!(windows[1].num_sequences, 1);
        assert_eq!(windows[1].row(0), [100, 101, 102, 103, 104]);
        assert_eq!(windows, eval_windows(&dataset, 4, 2).unwrap());
        let error = eval_windows(&dataset, 8, 2).unwrap_err().to_string();
        assert!(
            error.contains("domain `code`") && error.contains("eval split has 6 tokens"),
            "{error}"
        );
    }
}
