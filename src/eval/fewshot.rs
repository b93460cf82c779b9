//! lm-evaluation-harness' few-shot samplers (`lm_eval/api/samplers.py`), draw for draw.
//!
//! lm-eval gives each task one `random.Random(fewshot_random_seed = 1234)` and calls the sampler once
//! per evaluated document, in document order, so the shots of document *i* depend on every draw
//! before it. [`Sampler`] keeps that state. When lm-eval passes the evaluated document to the sampler
//! (its rule: the few-shot split *is* the test split), the default sampler draws `n + 1` documents,
//! drops every copy of the evaluated one and keeps the first `n`; if duplicates leave fewer than `n`
//! it draws `n` again from the pool without them. `first_n` (MMLU) takes the first `n` of the pool.

use serde_json::Value;

use super::py_random::PyRandom;

/// lm-eval's default seed for few-shot sampling (`fewshot_random_seed`).
pub const LM_EVAL_FEWSHOT_SEED: u64 = 1234;

/// Which lm-eval sampler a task uses (`fewshot_config.sampler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplerKind {
    /// `ContextSampler`: `rnd.sample(pool, n)`.
    Default,
    /// `FirstNSampler`: the first `n` documents of the pool, in order.
    FirstN,
}

/// A sampler over a pool of few-shot documents.
pub struct Sampler<'a> {
    pool: &'a [Value],
    kind: SamplerKind,
    random: PyRandom,
}

impl<'a> Sampler<'a> {
    pub fn new(pool: &'a [Value], kind: SamplerKind, seed: u64) -> Self {
        Sampler {
            pool,
            kind,
            random: PyRandom::new(seed),
        }
    }

    /// Indices into the pool of the `n` shots for the next document. `eval_doc` is the document
    /// being evaluated when lm-eval would pass it (so equal pool entries are left out), else `None`.
    pub fn sample(&mut self, n: usize, eval_doc: Option<&Value>) -> Result<Vec<usize>, String> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let pool_size = self.pool.len();
        let differs = |index: &usize| eval_doc.is_none_or(|doc| &self.pool[*index] != doc);
        match self.kind {
            SamplerKind::FirstN => {
                let kept: Vec<usize> = (0..pool_size).filter(differs).collect();
                if n > kept.len() {
                    return Err(format!(
                        "{n} shots asked for but the few-shot pool has only {} documents",
                        kept.len()
                    ));
                }
                Ok(kept[..n].to_vec())
            }
            SamplerKind::Default => {
                let Some(_) = eval_doc else {
                    if n > pool_size {
                        return Err(format!(
                            "{n} shots asked for but the few-shot pool has only {pool_size} documents"
                        ));
                    }
                    return Ok(self.random.sample_indices(pool_size, n));
                };
                if n + 1 > pool_size {
                    return Err(format!(
                        "{n} shots asked for: lm-eval draws n + 1 = {} from the few-shot pool to leave out the \
                         evaluated document, but the pool has only {pool_size}",
                        n + 1
                    ));
                }
                let drawn = self.random.sample_indices(pool_size, n + 1);
                let mut kept: Vec<usize> = drawn.into_iter().filter(differs).collect();
                kept.truncate(n);
                if kept.len() < n {
                    let rest: Vec<usize> = (0..pool_size).filter(differs).collect();
                    if n > rest.len() {
                        return Err(format!(
                            "{n} shots asked for but only {} pool documents differ from the evaluated one",
                            rest.len()
                        ));
                    }
                    kept = self
                        .random
                        .sample_indices(rest.len(), n)
                        .into_iter()
                        .map(|i| rest[i])
                        .collect();
                }
                Ok(kept)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pool(n: usize) -> Vec<Value> {
        (0..n).map(|i| json!({"id": i})).collect()
    }

    // CPython 3.11: r = random.Random(1234); r.sample(range(10), 3), r.sample(range(10), 3)
    // gives [7, 1, 0] then [1, 0, 9]; and with an eval doc (n + 1 = 4 draws):
    // r = random.Random(1234); r.sample(range(10), 4) == [7, 1, 0, 9]; r.sample(range(10), 4) == [9, 0, 1, 8]
    #[test]
    fn default_sampler_reproduces_lm_eval_with_seed_1234() {
        let docs = pool(10);
        let mut sampler = Sampler::new(&docs, SamplerKind::Default, LM_EVAL_FEWSHOT_SEED);
        assert_eq!(sampler.sample(3, None).unwrap(), [7, 1, 0]);
        assert_eq!(sampler.sample(3, None).unwrap(), [1, 0, 9]);

        // Evaluated doc 1 is drawn and dropped: the fourth draw (9) takes its place.
        let mut sampler = Sampler::new(&docs, SamplerKind::Default, LM_EVAL_FEWSHOT_SEED);
        assert_eq!(sampler.sample(3, Some(&docs[1])).unwrap(), [7, 0, 9]);
        // Evaluated doc 0 is the second of [9, 0, 1, 8]; evaluated doc 5 is not drawn at all.
        let mut again = sampler.random.clone();
        assert_eq!(sampler.sample(3, Some(&docs[0])).unwrap(), [9, 1, 8]);
        std::mem::swap(&mut sampler.random, &mut again);
        assert_eq!(sampler.sample(3, Some(&docs[5])).unwrap(), [9, 0, 1]);
        assert_eq!(
            sampler.sample(0, Some(&docs[5])).unwrap(),
            Vec::<usize>::new()
        );
    }

    #[test]
    fn duplicates_of_the_evaluated_doc_are_all_left_out() {
        // Every pool entry equals the evaluated doc except two: the second draw has to fall back.
        let mut docs = vec![json!({"id": 0}); 6];
        docs[2] = json!({"id": 2});
        docs[4] = json!({"id": 4});
        let mut sampler = Sampler::new(&docs, SamplerKind::Default, LM_EVAL_FEWSHOT_SEED);
        let mut shots = sampler.sample(2, Some(&json!({"id": 0}))).unwrap();
        shots.sort();
        assert_eq!(shots, [2, 4]);
        assert!(sampler.sample(3, Some(&json!({"id": 0}))).is_err());
    }

    #[test]
    fn first_n_takes_the_pool_in_order_and_errors_name_the_counts() {
        let docs = pool(5);
        let mut sampler = Sampler::new(&docs, SamplerKind::FirstN, LM_EVAL_FEWSHOT_SEED);
        assert_eq!(sampler.sample(3, None).unwrap(), [0, 1, 2]);
        assert_eq!(sampler.sample(3, Some(&docs[1])).unwrap(), [0, 2, 3]);
        let message = sampler.sample(6, None).unwrap_err();
        assert!(message.contains("only 5"), "{message}");
        let mut sampler = Sampler::new(&docs, SamplerKind::Default, LM_EVAL_FEWSHOT_SEED);
        let message = sampler.sample(5, Some(&docs[0])).unwrap_err();
        assert!(message.contains("n + 1 = 6"), "{message}");
    }
}
