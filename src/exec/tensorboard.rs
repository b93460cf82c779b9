//! Live curves: every metrics record a stage reports with a `step` (training and pruning steps,
//! evaluations, loading updates) becomes TensorBoard scalars in `logs/<key>/tensorboard/`, beside
//! the stage's log, so `tensorboard --logdir cache/logs` follows the loss, the per-domain losses, the
//! domain weights and the expected sparsity of every run while it runs.
//!
//! Why beside the log and not in the stage's output: an event file records wall times, so it would
//! make a stage's committed bytes differ between two identical runs; and the output folder of a
//! killed attempt is discarded, while the curves of every attempt are worth keeping (a resumed run
//! writes a new file; TensorBoard joins them by step).
//!
//! The format is TensorBoard's: a file of TFRecords (`u64` length, masked CRC-32C of the length,
//! the bytes, masked CRC-32C of the bytes), each an `Event` protocol buffer (`tensorflow/core/util/
//! event.proto`); the first carries `file_version = "brain.Event:2"`, the others a `Summary` of
//! `simple_value` scalars. The messages are encoded by `prost` from the three message definitions
//! below (only the fields sheared writes).

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;

/// `tensorflow.Event` (the fields sheared writes).
#[derive(Clone, PartialEq, Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    /// `oneof what`: `file_version = 3` ...
    #[prost(string, optional, tag = "3")]
    file_version: Option<String>,
    /// ... or `summary = 5`.
    #[prost(message, optional, tag = "5")]
    summary: Option<Summary>,
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value` with `oneof value { float simple_value = 2; ... }`.
#[derive(Clone, PartialEq, Message)]
struct SummaryValue {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(float, optional, tag = "2")]
    simple_value: Option<f32>,
}

/// One TensorBoard event file being written.
pub struct EventWriter {
    file: BufWriter<File>,
    path: PathBuf,
}

impl EventWriter {
    /// A new event file in `dir` (created), named as TensorBoard expects
    /// (`events.out.tfevents.<seconds>.<host>.<pid>.<n>`), with its version record.
    pub fn create(dir: &Path) -> io::Result<EventWriter> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        fs::create_dir_all(dir)?;
        let host = hostname::get()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "host".into());
        let path = dir.join(format!(
            "events.out.tfevents.{}.{host}.{}.{}",
            wall_time() as u64,
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let mut writer = EventWriter {
            file: BufWriter::new(File::create(&path)?),
            path,
        };
        writer.write_event(&Event {
            wall_time: wall_time(),
            step: 0,
            file_version: Some("brain.Event:2".into()),
            summary: None,
        })?;
        writer.file.flush()?;
        Ok(writer)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One event at `step` with the scalars `(tag, value)`, flushed (the file is read live).
    pub fn scalars(&mut self, step: i64, values: &[(String, f32)]) -> io::Result<()> {
        self.write_event(&Event {
            wall_time: wall_time(),
            step,
            file_version: None,
            summary: Some(Summary {
                value: values
                    .iter()
                    .map(|(tag, value)| SummaryValue {
                        tag: tag.clone(),
                        simple_value: Some(*value),
                    })
                    .collect(),
            }),
        })?;
        self.file.flush()
    }

    fn write_event(&mut self, event: &Event) -> io::Result<()> {
        let data = event.encode_to_vec();
        let length = (data.len() as u64).to_le_bytes();
        self.file.write_all(&length)?;
        self.file.write_all(&masked_crc(&length).to_le_bytes())?;
        self.file.write_all(&data)?;
        self.file.write_all(&masked_crc(&data).to_le_bytes())
    }
}

/// TFRecord's checksum: CRC-32C, rotated and offset ("masked") so that a CRC of data that itself
/// contains CRCs stays well distributed.
fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs_f64())
        .unwrap_or(0.0)
}

/// A stage's TensorBoard folder; the event file is created with the first record that has a step,
/// so stages that report none leave no folder behind.
pub struct TensorBoardSink {
    dir: PathBuf,
    writer: std::sync::Mutex<Option<EventWriter>>,
    /// Set after the first failure, which is logged once; the stage itself goes on.
    failed: std::sync::atomic::AtomicBool,
}

impl TensorBoardSink {
    pub fn new(dir: PathBuf) -> Self {
        TensorBoardSink {
            dir,
            writer: std::sync::Mutex::new(None),
            failed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Writes `record`'s scalars (see [`scalars_of`]); curves are a convenience, so a failure
    /// (full disk, permissions) is a warning, never the stage's error.
    pub fn record(&self, record: &serde_json::Value) {
        if self.failed.load(Ordering::Relaxed) {
            return;
        }
        let Some((step, values)) = scalars_of(record) else {
            return;
        };
        let Ok(mut writer) = self.writer.lock() else {
            return;
        };
        let result = match writer.as_mut() {
            Some(writer) => writer.scalars(step, &values),
            None => EventWriter::create(&self.dir).and_then(|mut created| {
                created.scalars(step, &values)?;
                *writer = Some(created);
                Ok(())
            }),
        };
        if let Err(error) = result {
            self.failed.store(true, Ordering::Relaxed);
            tracing::warn!(
                "not writing TensorBoard curves to {}: {error}",
                self.dir.display()
            );
        }
    }
}

/// The scalars of one metrics record: its `step` and every number in it but `step` itself, nested
/// objects flattened with `/` (`domain_weights/web`), all under the record's `kind` when it has one
/// (`train/loss`, `eval/eval_loss/web`). `None` for a record without a step (a stage's final
/// summary).
pub fn scalars_of(record: &serde_json::Value) -> Option<(i64, Vec<(String, f32)>)> {
    fn walk(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, f32)>) {
        match value {
            serde_json::Value::Number(number) => {
                if let Some(value) = number.as_f64().filter(|value| value.is_finite()) {
                    out.push((prefix.to_string(), value as f32));
                }
            }
            serde_json::Value::Object(object) => {
                for (key, value) in object {
                    let tag = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}/{key}")
                    };
                    walk(&tag, value, out);
                }
            }
            _ => {}
        }
    }
    let object = record.as_object()?;
    let step = object.get("step")?.as_i64()?;
    let prefix = object
        .get("kind")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    let mut values = Vec::new();
    for (key, value) in object {
        if key == "step" || key == "kind" {
            continue;
        }
        let tag = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}/{key}")
        };
        walk(&tag, value, &mut values);
    }
    Some((step, values))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One event read back: step, file version, scalars.
    type ReadEvent = (i64, Option<String>, Vec<(String, f32)>);

    /// Reads back every event of a file, checking both checksums of every record.
    pub(crate) fn read_events(path: &Path) -> Vec<ReadEvent> {
        let bytes = fs::read(path).unwrap();
        let mut events = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let length_bytes = &bytes[at..at + 8];
            let length = u64::from_le_bytes(length_bytes.try_into().unwrap()) as usize;
            let length_crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
            assert_eq!(length_crc, masked_crc(length_bytes), "length checksum");
            let data = &bytes[at + 12..at + 12 + length];
            let data_crc = u32::from_le_bytes(
                bytes[at + 12 + length..at + 16 + length]
                    .try_into()
                    .unwrap(),
            );
            assert_eq!(data_crc, masked_crc(data), "data checksum");
            let event = Event::decode(data).unwrap();
            events.push((
                event.step,
                event.file_version,
                event
                    .summary
                    .map(|summary| {
                        summary
                            .value
                            .into_iter()
                            .map(|value| (value.tag, value.simple_value.unwrap_or(f32::NAN)))
                            .collect()
                    })
                    .unwrap_or_default(),
            ));
            at += 16 + length;
        }
        events
    }

    #[test]
    fn records_become_checksummed_events_tensorboard_reads() {
        // CRC-32C of "123456789" is 0xE3069283 (the standard check value).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        let record = serde_json::json!({
            "kind": "train", "step": 7, "loss": 5.25, "lr": 0.001,
            "domain_weights": { "web": 0.75, "code": 0.25 },
            "note": "text is skipped", "bad": null
        });
        let (step, values) = scalars_of(&record).unwrap();
        assert_eq!(step, 7);
        let mut tags: Vec<&str> = values.iter().map(|(tag, _)| tag.as_str()).collect();
        tags.sort();
        assert_eq!(
            tags,
            [
                "train/domain_weights/code",
                "train/domain_weights/web",
                "train/loss",
                "train/lr"
            ]
        );
        assert!(scalars_of(&serde_json::json!({ "tokens": 5 })).is_none());

        let dir = tempfile::tempdir().unwrap();
        let mut writer = EventWriter::create(&dir.path().join("tb")).unwrap();
        writer.scalars(step, &values).unwrap();
        writer.scalars(8, &[("train/loss".into(), 5.0)]).unwrap();
        let name = writer
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        let events = read_events(writer.path());
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].1.as_deref(), Some("brain.Event:2"));
        assert_eq!(events[1].0, 7);
        assert!(events[1].2.contains(&("train/loss".to_string(), 5.25)));
        assert_eq!(events[2], (8, None, vec![("train/loss".to_string(), 5.0)]));
    }
}
