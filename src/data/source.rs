//! Reading documents from a domain's source: a file, a folder (recursive) or a glob of JSONL files
//! (one `{"text": ..}` per line, RedPajama's format) or `.txt` files (one document per file), each plain,
//! `.gz` or `.zst`. Streaming: one line (or one `.txt` file) in memory at a time.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::DataError;

/// What to do with bytes that are not UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InvalidUtf8 {
    /// Replace them with U+FFFD and count the lines (files) affected.
    Replace,
    /// Stop with the file and line.
    #[default]
    Error,
}

#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// JSONL field holding the document text.
    pub text_field: String,
    pub invalid_utf8: InvalidUtf8,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            text_field: "text".into(),
            invalid_utf8: InvalidUtf8::Error,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Jsonl,
    Text,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

/// How a file is read, from its name: `.jsonl`/`.json`/`.ndjson` or `.txt`, optionally followed by `.gz`/`.zst`.
fn classify(path: &Path) -> Option<(FileKind, Compression)> {
    let name = path.file_name()?.to_str()?.to_ascii_lowercase();
    let (stem, compression) = if let Some(stem) = name.strip_suffix(".gz") {
        (stem, Compression::Gzip)
    } else if let Some(stem) = name.strip_suffix(".zst") {
        (stem, Compression::Zstd)
    } else {
        (name.as_str(), Compression::None)
    };
    let kind = if stem.ends_with(".jsonl") || stem.ends_with(".json") || stem.ends_with(".ndjson") {
        FileKind::Jsonl
    } else if stem.ends_with(".txt") {
        FileKind::Text
    } else {
        return None;
    };
    Some((kind, compression))
}

const ACCEPTED: &str = ".jsonl, .json, .ndjson or .txt, optionally compressed as .gz or .zst";

/// The files of a domain source, sorted, so the document order never depends on the file system.
pub fn resolve_sources(domain: &str, source: &Path) -> Result<Vec<PathBuf>, DataError> {
    let text = source.to_string_lossy();
    let mut files = Vec::new();
    if text.contains(['*', '?', '[']) && !source.exists() {
        let matches = glob::glob(&text).map_err(|error| DataError::EmptyDomain {
            domain: domain.into(),
            message: format!("`{text}` is not a valid glob pattern: {error}"),
        })?;
        for entry in matches {
            let path =
                entry.map_err(|error| DataError::io(error.path().to_path_buf(), error.into()))?;
            if path.is_file() && classify(&path).is_some() {
                files.push(path);
            }
        }
    } else if source.is_dir() {
        walk(source, &mut files)?;
    } else if source.is_file() {
        if classify(source).is_none() {
            return Err(DataError::EmptyDomain {
                domain: domain.into(),
                message: format!(
                    "{}: unknown file type; name it {ACCEPTED}",
                    source.display()
                ),
            });
        }
        files.push(source.to_path_buf());
    } else {
        return Err(DataError::EmptyDomain {
            domain: domain.into(),
            message: format!("{} does not exist", source.display()),
        });
    }
    files.sort();
    if files.is_empty() {
        return Err(DataError::EmptyDomain {
            domain: domain.into(),
            message: format!("{} holds no {ACCEPTED} files", source.display()),
        });
    }
    Ok(files)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let entries = std::fs::read_dir(dir).map_err(|error| DataError::io(dir, error))?;
    for entry in entries {
        let path = entry.map_err(|error| DataError::io(dir, error))?.path();
        if path.is_dir() {
            walk(&path, files)?;
        } else if classify(&path).is_some() {
            files.push(path);
        }
    }
    Ok(())
}

/// One document and where it came from (for error messages).
#[derive(Debug, Clone)]
pub struct Document {
    pub text: String,
    /// Index into the reader's file list.
    pub file: usize,
    /// 1-based line (JSONL) or 1 (`.txt`).
    pub line: u64,
}

/// Counts compressed bytes as they are read, for progress.
struct CountingReader<R> {
    inner: R,
    counter: Arc<AtomicU64>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.counter.fetch_add(read as u64, Ordering::Relaxed);
        Ok(read)
    }
}

/// Streams the documents of a list of files, in order.
pub struct DocumentReader {
    files: Vec<PathBuf>,
    options: SourceOptions,
    next_file: usize,
    current: Option<(Box<dyn BufRead + Send>, FileKind)>,
    line: u64,
    line_buffer: Vec<u8>,
    bytes_read: Arc<AtomicU64>,
    /// Lines (JSONL) or files (`.txt`) in which invalid UTF-8 was replaced.
    pub replaced: u64,
    failed: bool,
}

impl DocumentReader {
    pub fn new(files: Vec<PathBuf>, options: SourceOptions) -> Self {
        DocumentReader {
            files,
            options,
            next_file: 0,
            current: None,
            line: 0,
            line_buffer: Vec::new(),
            bytes_read: Arc::new(AtomicU64::new(0)),
            replaced: 0,
            failed: false,
        }
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Shared counter of (compressed) bytes read so far.
    pub fn bytes_read(&self) -> Arc<AtomicU64> {
        self.bytes_read.clone()
    }

    fn open(&self, path: &Path) -> Result<(Box<dyn BufRead + Send>, FileKind), DataError> {
        let (kind, compression) = classify(path).ok_or_else(|| DataError::BadJsonLine {
            path: path.to_path_buf(),
            line: 0,
            message: format!("unknown file type; name it {ACCEPTED}"),
        })?;
        let file = File::open(path).map_err(|error| DataError::io(path, error))?;
        let counted = CountingReader {
            inner: file,
            counter: self.bytes_read.clone(),
        };
        let reader: Box<dyn BufRead + Send> = match compression {
            Compression::None => Box::new(BufReader::with_capacity(1 << 20, counted)),
            Compression::Gzip => Box::new(BufReader::with_capacity(
                1 << 20,
                flate2::read::MultiGzDecoder::new(counted),
            )),
            Compression::Zstd => Box::new(BufReader::with_capacity(
                1 << 20,
                zstd::stream::read::Decoder::new(counted)
                    .map_err(|error| DataError::io(path, error))?,
            )),
        };
        Ok((reader, kind))
    }

    /// Bytes → text under the UTF-8 policy; `line` is where the first bad byte sits.
    fn decode(&mut self, bytes: Vec<u8>, first_line: u64) -> Result<String, DataError> {
        match String::from_utf8(bytes) {
            Ok(text) => Ok(text),
            Err(error) => {
                let valid = error.utf8_error().valid_up_to();
                let bytes = error.into_bytes();
                match self.options.invalid_utf8 {
                    InvalidUtf8::Error => {
                        let newlines =
                            bytes[..valid].iter().filter(|&&byte| byte == b'\n').count() as u64;
                        let line_start = bytes[..valid]
                            .iter()
                            .rposition(|&byte| byte == b'\n')
                            .map_or(0, |at| at + 1);
                        Err(DataError::InvalidUtf8 {
                            path: self.files[self.next_file - 1].clone(),
                            line: first_line + newlines,
                            byte_offset: valid - line_start,
                        })
                    }
                    InvalidUtf8::Replace => {
                        self.replaced += 1;
                        Ok(String::from_utf8_lossy(&bytes).into_owned())
                    }
                }
            }
        }
    }

    fn next_document(&mut self) -> Result<Option<Document>, DataError> {
        loop {
            if self.current.is_none() {
                let Some(path) = self.files.get(self.next_file).cloned() else {
                    return Ok(None);
                };
                self.current = Some(self.open(&path)?);
                self.next_file += 1;
                self.line = 0;
            }
            let file = self.next_file - 1;
            let path = self.files[file].clone();
            let Some((reader, kind)) = self.current.as_mut() else {
                continue;
            };
            match kind {
                FileKind::Text => {
                    let mut bytes = Vec::new();
                    reader
                        .read_to_end(&mut bytes)
                        .map_err(|error| DataError::io(&path, error))?;
                    self.current = None;
                    let text = self.decode(bytes, 1)?;
                    return Ok(Some(Document {
                        text,
                        file,
                        line: 1,
                    }));
                }
                FileKind::Jsonl => {
                    self.line_buffer.clear();
                    let read = reader
                        .read_until(b'\n', &mut self.line_buffer)
                        .map_err(|error| DataError::io(&path, error))?;
                    if read == 0 {
                        self.current = None;
                        continue;
                    }
                    self.line += 1;
                    let line = self.line;
                    let bytes = std::mem::take(&mut self.line_buffer);
                    let text = self.decode(bytes, line)?;
                    let trimmed = text.trim();
                    if trimmed.is_empty() {
                        continue;
                    }
                    let text =
                        extract_text(trimmed, &self.options.text_field).map_err(|message| {
                            DataError::BadJsonLine {
                                path: path.clone(),
                                line,
                                message,
                            }
                        })?;
                    return Ok(Some(Document { text, file, line }));
                }
            }
        }
    }
}

/// The string at `field` of a JSON object line. Other fields are skipped without being built (RedPajama lines
/// carry a `meta` object per document).
fn extract_text(line: &str, field: &str) -> Result<String, String> {
    let mut deserializer = serde_json::Deserializer::from_str(line);
    let found = serde::de::DeserializeSeed::deserialize(TextField { field }, &mut deserializer)
        .and_then(|found| deserializer.end().map(|()| found))
        .map_err(|error| format!("not valid JSON: {error}"))?;
    match found {
        FieldLookup::Text(text) => Ok(text),
        FieldLookup::NotObject(kind) => Err(format!(
            "expected a JSON object with a `{field}` field, found {kind}"
        )),
        FieldLookup::WrongType(kind) => Err(format!("field `{field}` is {kind}, not a string")),
        FieldLookup::Missing(keys) => Err(format!(
            "no `{field}` field (keys: {}); set `text_field` to the field that holds the text",
            if keys.is_empty() {
                "none".to_string()
            } else {
                keys.join(", ")
            }
        )),
    }
}

enum FieldLookup {
    Text(String),
    NotObject(&'static str),
    WrongType(&'static str),
    /// The first few keys present, for the error message.
    Missing(Vec<String>),
}

struct TextField<'f> {
    field: &'f str,
}

impl<'de> serde::de::DeserializeSeed<'de> for TextField<'_> {
    type Value = FieldLookup;
    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<FieldLookup, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for TextField<'_> {
    type Value = FieldLookup;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(formatter, "a JSON object with a `{}` field", self.field)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<FieldLookup, A::Error> {
        let mut found = None;
        let mut keys = Vec::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == self.field && found.is_none() {
                found = Some(match map.next_value::<serde_json::Value>()? {
                    serde_json::Value::String(text) => FieldLookup::Text(text),
                    other => FieldLookup::WrongType(json_kind(&other)),
                });
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
                if keys.len() < 10 {
                    keys.push(key.into_owned());
                }
            }
        }
        Ok(found.unwrap_or(FieldLookup::Missing(keys)))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<FieldLookup, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(FieldLookup::NotObject("an array"))
    }
    fn visit_str<E>(self, _: &str) -> Result<FieldLookup, E> {
        Ok(FieldLookup::NotObject("a string"))
    }
    fn visit_bool<E>(self, _: bool) -> Result<FieldLookup, E> {
        Ok(FieldLookup::NotObject("a boolean"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<FieldLookup, E> {
        Ok(FieldLookup::NotObject("a number"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<FieldLookup, E> {
        Ok(FieldLookup::NotObject("a number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<FieldLookup, E> {
        Ok(FieldLookup::NotObject("a number"))
    }
    fn visit_unit<E>(self) -> Result<FieldLookup, E> {
        Ok(FieldLookup::NotObject("null"))
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

impl Iterator for DocumentReader {
    type Item = Result<Document, DataError>;
    /// Yields documents until the end or the first error (after which it yields nothing).
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.next_document() {
            Ok(document) => document.map(Ok),
            Err(error) => {
                self.failed = true;
                Some(Err(error))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn read_all(files: Vec<PathBuf>, options: SourceOptions) -> Result<Vec<String>, DataError> {
        DocumentReader::new(files, options)
            .map(|document| document.map(|document| document.text))
            .collect()
    }

    #[test]
    fn reads_jsonl_txt_gz_and_zst_in_sorted_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("b.jsonl"),
            "{\"text\": \"two\"}\n\n{\"text\": \"three\", \"id\": 3}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("a.txt"), "one\nstill one").unwrap();
        let mut gz = flate2::write::GzEncoder::new(
            File::create(dir.path().join("c.jsonl.gz")).unwrap(),
            Default::default(),
        );
        gz.write_all(b"{\"text\": \"four\"}\n").unwrap();
        gz.finish().unwrap();
        std::fs::write(
            dir.path().join("d.txt.zst"),
            zstd::encode_all(&b"five"[..], 3).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.path().join("ignored.csv"), "x").unwrap();
        let files = resolve_sources("web", dir.path()).unwrap();
        assert_eq!(files.len(), 4);
        assert_eq!(
            read_all(files, SourceOptions::default()).unwrap(),
            ["one\nstill one", "two", "three", "four", "five"]
        );
        let globbed = resolve_sources("web", &dir.path().join("*.jsonl*")).unwrap();
        assert_eq!(globbed.len(), 2);
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        std::fs::write(&path, "{\"text\": \"ok\"}\n{\"text\": \n").unwrap();
        let error = read_all(vec![path.clone()], SourceOptions::default()).unwrap_err();
        assert!(
            matches!(&error, DataError::BadJsonLine { line: 2, .. }),
            "{error}"
        );
        assert!(
            error.to_string().contains("x.jsonl:2: not valid JSON"),
            "{error}"
        );

        std::fs::write(&path, "{\"body\": \"no text\"}\n").unwrap();
        let error = read_all(vec![path.clone()], SourceOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("x.jsonl:1: no `text` field (keys: body)"),
            "{error}"
        );
        let options = SourceOptions {
            text_field: "body".into(),
            ..Default::default()
        };
        assert_eq!(read_all(vec![path.clone()], options).unwrap(), ["no text"]);

        std::fs::write(
            &path,
            "{\"meta\": {\"a\": [1, {\"b\": null}]}, \"te\\u0078t\": \"esc\\u00e9\\n\"}\n[1, 2]\n",
        )
        .unwrap();
        let mut reader = DocumentReader::new(vec![path.clone()], SourceOptions::default());
        assert_eq!(
            reader.next().unwrap().unwrap().text,
            "esc\u{e9}\n",
            "escaped keys and values, nested fields skipped"
        );
        let error = reader.next().unwrap().unwrap_err().to_string();
        assert!(
            error.contains("x.jsonl:2: expected a JSON object with a `text` field, found an array"),
            "{error}"
        );
        std::fs::write(&path, "{\"text\": 5}\n").unwrap();
        let error = read_all(vec![path.clone()], SourceOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("x.jsonl:1: field `text` is a number, not a string"),
            "{error}"
        );
        std::fs::write(&path, "{\"text\": \"a\"} trailing\n").unwrap();
        let error = read_all(vec![path.clone()], SourceOptions::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("x.jsonl:1: not valid JSON"), "{error}");
    }

    #[test]
    fn invalid_utf8_errors_with_line_or_is_replaced_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        std::fs::write(
            &path,
            b"{\"text\": \"fine\"}\n{\"text\": \"bad \xff byte\"}\n",
        )
        .unwrap();
        let error = read_all(vec![path.clone()], SourceOptions::default()).unwrap_err();
        assert!(
            matches!(
                &error,
                DataError::InvalidUtf8 {
                    line: 2,
                    byte_offset: 14,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error.to_string().contains("x.jsonl:2"), "{error}");

        let txt = dir.path().join("y.txt");
        std::fs::write(&txt, b"line one\nline \xfe two").unwrap();
        let error = read_all(vec![txt.clone()], SourceOptions::default()).unwrap_err();
        assert!(
            matches!(
                &error,
                DataError::InvalidUtf8 {
                    line: 2,
                    byte_offset: 5,
                    ..
                }
            ),
            "{error:?}"
        );

        let options = SourceOptions {
            invalid_utf8: InvalidUtf8::Replace,
            ..Default::default()
        };
        let mut reader = DocumentReader::new(vec![path, txt], options);
        let texts: Vec<String> = reader
            .by_ref()
            .map(|document| document.unwrap().text)
            .collect();
        assert_eq!(
            texts,
            ["fine", "bad \u{FFFD} byte", "line one\nline \u{FFFD} two"]
        );
        assert_eq!(reader.replaced, 2);
    }

    #[test]
    fn missing_or_empty_sources_name_the_domain() {
        let dir = tempfile::tempdir().unwrap();
        let error = resolve_sources("books", &dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("domain `books`") && error.contains("does not exist"),
            "{error}"
        );
        let error = resolve_sources("books", dir.path())
            .unwrap_err()
            .to_string();
        assert!(error.contains("holds no"), "{error}");
    }
}
