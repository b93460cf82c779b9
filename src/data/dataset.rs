//! [`TokenizedDataset`]: an opened `tokenize` stage output folder.
//!
//! ```text
//! <dir>/manifest.json   <dir>/tokenizer.json   <dir>/train/<domain>.bin   <dir>/eval/<domain>.bin
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::manifest::Manifest;
use super::{DataError, Shard, did_you_mean};

/// The shards of one tokenized corpus, memory-mapped, plus its manifest.
pub struct TokenizedDataset {
    dir: PathBuf,
    manifest: Manifest,
    domains: Vec<String>,
    train: Vec<Shard>,
    eval: Vec<Shard>,
}

impl TokenizedDataset {
    /// Opens `dir` and checks that every shard matches the manifest's token counts.
    pub fn open(dir: &Path) -> Result<Self, DataError> {
        let manifest = Manifest::load(&dir.join("manifest.json"))?;
        let mut train = Vec::new();
        let mut eval = Vec::new();
        for domain in &manifest.domains {
            for (split, expected, shards) in [
                ("train", domain.train_tokens, &mut train),
                ("eval", domain.eval_tokens, &mut eval),
            ] {
                let path = dir.join(split).join(format!("{}.bin", domain.name));
                let shard = Shard::open(&path, manifest.dtype)?;
                if shard.len() != expected {
                    return Err(DataError::Manifest {
                        path: dir.join("manifest.json"),
                        message: format!(
                            "{} has {} tokens but the manifest says {expected}; the folder was modified, re-run the \
                             tokenize stage",
                            path.display(),
                            shard.len()
                        ),
                    });
                }
                shards.push(shard);
            }
        }
        let domains = manifest
            .domains
            .iter()
            .map(|domain| domain.name.clone())
            .collect();
        Ok(TokenizedDataset {
            dir: dir.to_path_buf(),
            manifest,
            domains,
            train,
            eval,
        })
    }

    /// Domain names; their positions are the domain ids used in batches and weights.
    pub fn domains(&self) -> &[String] {
        &self.domains
    }
    pub fn vocab_size(&self) -> usize {
        self.manifest.vocab_size as usize
    }
    pub fn tokenizer_path(&self) -> PathBuf {
        self.dir.join("tokenizer.json")
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn bos_id(&self) -> u32 {
        self.manifest.bos_id
    }
    pub fn eos_id(&self) -> u32 {
        self.manifest.eos_id
    }
    /// The train shard of domain `id` (panics on an id not below `domains().len()`: ids come from this dataset).
    pub fn train_shard(&self, id: usize) -> &Shard {
        &self.train[id]
    }
    pub fn eval_shard(&self, id: usize) -> &Shard {
        &self.eval[id]
    }

    /// The id of domain `name`, or an error listing the known domains (never a silent domain 0).
    pub fn domain_id(&self, name: &str) -> Result<usize, DataError> {
        self.domains
            .iter()
            .position(|known| known == name)
            .ok_or_else(|| DataError::UnknownDomain {
                name: name.to_string(),
                known: self
                    .domains
                    .iter()
                    .map(|domain| format!("`{domain}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                suggestion: did_you_mean(name, self.domains.iter().map(String::as_str)),
            })
    }

    /// Weights written by domain name (a recipe's `proportions = { cc = 0.67, .. }`) in `domains()` order.
    /// A name the dataset lacks is an error; a domain left out gets weight 0 only when `missing_is_zero`,
    /// otherwise it is an error too.
    pub fn weights_from_names(
        &self,
        named: &BTreeMap<String, f64>,
        missing_is_zero: bool,
    ) -> Result<Vec<f64>, DataError> {
        let mut weights = vec![0.0; self.domains.len()];
        for (name, &weight) in named {
            weights[self.domain_id(name)?] = weight;
        }
        if !missing_is_zero {
            let missing: Vec<&str> = self
                .domains
                .iter()
                .filter(|domain| !named.contains_key(*domain))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                return Err(DataError::InvalidWeights {
                    message: format!(
                        "no weight given for domain(s) {}; give every domain a weight",
                        missing.join(", ")
                    ),
                });
            }
        }
        Ok(weights)
    }
}

/// Writes a dataset folder by hand (no tokenizer needed), for tests of readers and samplers.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::Path;

    use crate::data::manifest::{DomainManifest, FORMAT, FORMAT_VERSION, Manifest};
    use crate::data::{ShardWriter, TokenDtype};

    /// The manifest fields a hand-written dataset needs beyond its shards.
    pub struct FakeManifest {
        pub dtype: TokenDtype,
        pub vocab_size: u64,
        pub bos_id: u32,
        pub eos_id: u32,
        pub seq_len: u64,
    }

    /// `domains`: (name, train tokens, eval tokens); the largest vocabulary `dtype` can hold.
    pub fn write_dataset(dir: &Path, domains: &[(&str, Vec<u32>, Vec<u32>)], dtype: TokenDtype) {
        let vocab_size = if dtype == TokenDtype::U16 {
            65536
        } else {
            1 << 20
        };
        let spec = FakeManifest {
            dtype,
            vocab_size,
            bos_id: 0,
            eos_id: 1,
            seq_len: 4,
        };
        write_dataset_with(dir, domains, &spec);
    }

    /// Writes `train/<name>.bin`, `eval/<name>.bin`, a placeholder `tokenizer.json` (callers that need a real
    /// one copy it over) and `manifest.json`.
    pub fn write_dataset_with(
        dir: &Path,
        domains: &[(&str, Vec<u32>, Vec<u32>)],
        spec: &FakeManifest,
    ) {
        let mut entries = Vec::new();
        for (name, train, eval) in domains {
            for (split, tokens) in [("train", train), ("eval", eval)] {
                let mut writer =
                    ShardWriter::create(&dir.join(split).join(format!("{name}.bin")), spec.dtype)
                        .unwrap();
                writer.write(tokens).unwrap();
                writer.finish().unwrap();
            }
            entries.push(DomainManifest {
                name: name.to_string(),
                sources: vec![],
                train_documents: 1,
                eval_documents: 1,
                train_tokens: train.len() as u64,
                eval_tokens: eval.len() as u64,
                empty_documents: 0,
                invalid_utf8_replaced: 0,
                train_truncated: false,
                eval_from_train_tail_tokens: 0,
            });
        }
        std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
        Manifest {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            dtype: spec.dtype,
            vocab_size: spec.vocab_size,
            tokenizer_blake3: String::new(),
            bos_token: "<s>".into(),
            bos_id: spec.bos_id,
            eos_token: "</s>".into(),
            eos_id: spec.eos_id,
            seq_len: spec.seq_len,
            seed: 0,
            domains: entries,
        }
        .save(&dir.join("manifest.json"))
        .unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::testing::write_dataset;
    use super::*;
    use crate::data::TokenDtype;

    #[test]
    fn opens_and_checks_counts_and_names() {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(
            dir.path(),
            &[
                ("web", (0..100).collect(), (0..10).collect()),
                ("code", vec![5; 50], vec![6; 9]),
            ],
            TokenDtype::U32,
        );
        let dataset = TokenizedDataset::open(dir.path()).unwrap();
        assert_eq!(dataset.domains(), ["web", "code"]);
        assert_eq!(dataset.domain_id("code").unwrap(), 1);
        assert_eq!(dataset.train_shard(0).read(98, 2).unwrap(), [98, 99]);
        let error = dataset.domain_id("cod").unwrap_err().to_string();
        assert!(
            error.contains("unknown domain `cod`") && error.contains("did you mean `code`"),
            "{error}"
        );

        let named = BTreeMap::from([("web".to_string(), 2.0), ("github".to_string(), 1.0)]);
        assert!(matches!(
            dataset.weights_from_names(&named, true),
            Err(DataError::UnknownDomain { .. })
        ));
        let named = BTreeMap::from([("web".to_string(), 2.0)]);
        assert_eq!(
            dataset.weights_from_names(&named, true).unwrap(),
            [2.0, 0.0]
        );
        assert!(
            dataset
                .weights_from_names(&named, false)
                .unwrap_err()
                .to_string()
                .contains("code")
        );

        // A shard that no longer matches the manifest is caught at open.
        std::fs::write(dir.path().join("train").join("code.bin"), [0u8; 8]).unwrap();
        let error = TokenizedDataset::open(dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("manifest says 50"), "{error}");
    }
}
