//! Where each key of a recipe was written, so that errors found after parsing (unknown keys,
//! missing stages, bad values) can still point at `file:line:col`.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

/// A place in a recipe file. `line`/`column` are 1-based; absent when the key was not written
/// in any file (a default, a `--set` override).
#[derive(Debug, Clone, PartialEq)]
pub struct Location {
    pub file: PathBuf,
    pub line: Option<(usize, usize)>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some((line, column)) => write!(f, "{}:{line}:{column}", self.file.display()),
            None => write!(f, "{}", self.file.display()),
        }
    }
}

/// One parsed file of an `extends` chain: its text's line starts and the offset of every key.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    text: String,
    line_starts: Vec<usize>,
    keys: HashMap<Vec<String>, usize>,
}

impl SourceFile {
    /// Index `text` (already known to parse) by dotted key path.
    pub fn new(path: &Path, text: &str) -> Self {
        let mut keys = HashMap::new();
        if let Ok(document) = DeTable::parse(text) {
            index_table(document.get_ref(), &mut Vec::new(), &mut keys);
        }
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(offset, _)| offset + 1));
        SourceFile {
            path: path.to_path_buf(),
            text: text.to_string(),
            line_starts,
            keys,
        }
    }

    /// 1-based (line, column) of a byte offset; the column counts characters, as editors do.
    pub fn line_column(&self, offset: usize) -> (usize, usize) {
        let line_index = match self.line_starts.binary_search(&offset) {
            Ok(index) => index,
            Err(index) => index.saturating_sub(1),
        };
        let start = self.line_starts.get(line_index).copied().unwrap_or(0);
        let end = offset.min(self.text.len());
        let column = self
            .text
            .get(start..end)
            .map(|prefix| prefix.chars().count())
            .unwrap_or(0)
            + 1;
        (line_index + 1, column)
    }

    pub fn location_of_offset(&self, offset: usize) -> Location {
        Location {
            file: self.path.clone(),
            line: Some(self.line_column(offset)),
        }
    }

    fn offset_of(&self, path: &[String]) -> Option<usize> {
        self.keys.get(path).copied()
    }
}

fn index_table(
    table: &DeTable<'_>,
    path: &mut Vec<String>,
    keys: &mut HashMap<Vec<String>, usize>,
) {
    for (key, value) in table.iter() {
        path.push(key.get_ref().to_string());
        keys.entry(path.clone()).or_insert(key.span().start);
        index_value(value.get_ref(), path, keys);
        path.pop();
    }
}

fn index_value(
    value: &DeValue<'_>,
    path: &mut Vec<String>,
    keys: &mut HashMap<Vec<String>, usize>,
) {
    match value {
        DeValue::Table(table) => index_table(table, path, keys),
        DeValue::Array(array) => {
            for (index, item) in array.iter().enumerate() {
                path.push(index.to_string());
                keys.entry(path.clone()).or_insert(item.span().start);
                index_value(item.get_ref(), path, keys);
                path.pop();
            }
        }
        _ => {}
    }
}

/// The files of one recipe's `extends` chain, the recipe itself first (its keys win).
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    pub files: Vec<SourceFile>,
}

impl SourceMap {
    /// The top recipe file.
    pub fn main_file(&self) -> PathBuf {
        self.files
            .first()
            .map(|file| file.path.clone())
            .unwrap_or_default()
    }

    /// Where `path` was written: the first file (in override order) that has it, falling back to the
    /// closest written parent key, then to the recipe file itself.
    pub fn locate(&self, path: &[String]) -> Location {
        for length in (1..=path.len()).rev() {
            let prefix = &path[..length];
            for file in &self.files {
                if let Some(offset) = file.offset_of(prefix) {
                    return file.location_of_offset(offset);
                }
            }
        }
        Location {
            file: self.main_file(),
            line: None,
        }
    }

    pub fn locate_dotted(&self, prefix: &[&str], dotted: &str) -> Location {
        let mut path: Vec<String> = prefix.iter().map(|segment| segment.to_string()).collect();
        path.extend(split_dotted(dotted));
        self.locate(&path)
    }
}

/// Split a dotted key as the runner writes them (`target.hidden`, `inputs.model`, `models.0`).
pub fn split_dotted(dotted: &str) -> Vec<String> {
    if dotted.is_empty() {
        Vec::new()
    } else {
        dotted.split('.').map(str::to_string).collect()
    }
}

/// Join key segments into a dotted key, quoting segments that are not bare TOML keys.
pub fn join_dotted(path: &[String]) -> String {
    path.iter()
        .map(|segment| {
            let bare = !segment.is_empty()
                && segment
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if bare {
                segment.clone()
            } else {
                format!("{segment:?}")
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_nested_keys_and_falls_back_to_parents() {
        let text = "name = \"x\"\n\n[stages.prune]\nkind = \"prune\"\ntarget.hidden = 4\n";
        let map = SourceMap {
            files: vec![SourceFile::new(Path::new("r.toml"), text)],
        };
        let at =
            |path: &[&str]| map.locate(&path.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(at(&["name"]).line, Some((1, 1)));
        assert_eq!(at(&["stages", "prune", "kind"]).line, Some((4, 1)));
        assert_eq!(
            at(&["stages", "prune", "target", "hidden"]).line,
            Some((5, 8))
        );
        assert_eq!(at(&["stages", "prune", "missing"]).line, Some((3, 9)));
        assert_eq!(at(&["nothing"]).line, None);
    }
}
