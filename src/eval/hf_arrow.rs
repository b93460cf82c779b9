//! Rows of a Hugging Face `datasets` split saved with `save_to_disk`: `<split>/data-*.arrow` files in
//! the Arrow IPC *stream* format, read into one JSON object per row.
//!
//! Why JSON: lm-eval's templates index documents by field name (`doc["question"]`,
//! `doc["choices"]["text"]`), and the few-shot sampler compares whole documents for equality. A
//! `serde_json::Value` per row gives both without a per-dataset Rust type, for every column type the
//! evaluation sets use (strings, integers, booleans, floats, lists and structs of them).

use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType;
use serde_json::{Map, Value, json};

use super::EvalError;

/// The Arrow files of one split folder, in name order (`data-00000-of-00002.arrow`, ...).
pub fn split_files(split_dir: &Path) -> Result<Vec<PathBuf>, EvalError> {
    let entries = std::fs::read_dir(split_dir).map_err(|source| EvalError::Io {
        path: split_dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "arrow"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(EvalError::File {
            path: split_dir.to_path_buf(),
            message: "has no .arrow files (expected a `datasets` split folder with data-*.arrow)"
                .into(),
        });
    }
    Ok(files)
}

/// Every row of a split folder, in order.
pub fn read_split(split_dir: &Path) -> Result<Vec<Value>, EvalError> {
    let mut rows = Vec::new();
    for file in split_files(split_dir)? {
        rows.extend(read_rows(&file)?);
    }
    Ok(rows)
}

/// Every row of one Arrow IPC stream file as a JSON object keyed by column name.
pub fn read_rows(path: &Path) -> Result<Vec<Value>, EvalError> {
    let error = |message: String| EvalError::File {
        path: path.to_path_buf(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let reader = arrow_ipc::reader::StreamReader::try_new(std::io::BufReader::new(file), None)
        .map_err(|e| error(format!("not an Arrow IPC stream: {e}")))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| error(format!("reading a record batch: {e}")))?;
        let schema = batch.schema();
        let mut columns = Vec::with_capacity(batch.num_columns());
        for (field, column) in schema.fields().iter().zip(batch.columns()) {
            columns.push((field.name().clone(), column_values(column).map_err(&error)?));
        }
        for row in 0..batch.num_rows() {
            let mut object = Map::new();
            for (name, values) in &columns {
                object.insert(name.clone(), values[row].clone());
            }
            rows.push(Value::Object(object));
        }
    }
    Ok(rows)
}

/// One JSON value per element of `array` (nulls become `null`).
fn column_values(array: &ArrayRef) -> Result<Vec<Value>, String> {
    let len = array.len();
    let mut out = Vec::with_capacity(len);
    macro_rules! primitive {
        ($type:ty) => {{
            let values = array.as_primitive::<$type>();
            for i in 0..len {
                out.push(if values.is_null(i) {
                    Value::Null
                } else {
                    json!(values.value(i))
                });
            }
        }};
    }
    match array.data_type() {
        DataType::Null => out.resize(len, Value::Null),
        DataType::Boolean => {
            let values = array.as_boolean();
            for i in 0..len {
                out.push(if values.is_null(i) {
                    Value::Null
                } else {
                    Value::Bool(values.value(i))
                });
            }
        }
        DataType::Int8 => primitive!(Int8Type),
        DataType::Int16 => primitive!(Int16Type),
        DataType::Int32 => primitive!(Int32Type),
        DataType::Int64 => primitive!(Int64Type),
        DataType::UInt8 => primitive!(UInt8Type),
        DataType::UInt16 => primitive!(UInt16Type),
        DataType::UInt32 => primitive!(UInt32Type),
        DataType::UInt64 => primitive!(UInt64Type),
        DataType::Float32 => primitive!(Float32Type),
        DataType::Float64 => primitive!(Float64Type),
        DataType::Utf8 => {
            let values = array.as_string::<i32>();
            for i in 0..len {
                out.push(if values.is_null(i) {
                    Value::Null
                } else {
                    Value::String(values.value(i).to_string())
                });
            }
        }
        DataType::LargeUtf8 => {
            let values = array.as_string::<i64>();
            for i in 0..len {
                out.push(if values.is_null(i) {
                    Value::Null
                } else {
                    Value::String(values.value(i).to_string())
                });
            }
        }
        DataType::List(_) => {
            let lists = array.as_list::<i32>();
            for i in 0..len {
                out.push(if lists.is_null(i) {
                    Value::Null
                } else {
                    Value::Array(column_values(&lists.value(i))?)
                });
            }
        }
        DataType::LargeList(_) => {
            let lists = array.as_list::<i64>();
            for i in 0..len {
                out.push(if lists.is_null(i) {
                    Value::Null
                } else {
                    Value::Array(column_values(&lists.value(i))?)
                });
            }
        }
        DataType::Struct(fields) => {
            let structs = array.as_struct();
            let children: Vec<Vec<Value>> = structs
                .columns()
                .iter()
                .map(column_values)
                .collect::<Result<_, _>>()?;
            for i in 0..len {
                if structs.is_null(i) {
                    out.push(Value::Null);
                    continue;
                }
                let mut object = Map::new();
                for (field, values) in fields.iter().zip(&children) {
                    object.insert(field.name().clone(), values[i].clone());
                }
                out.push(Value::Object(object));
            }
        }
        other => return Err(format!("column type {other} is not supported")),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::builder::{ListBuilder, StringBuilder};
    use arrow_array::{BooleanArray, Int64Array, RecordBatch, StringArray, StructArray};
    use arrow_schema::{Field, Schema};
    use std::sync::Arc;

    /// Write a two-row batch with the column kinds of ARC / BoolQ to a stream file and read it back.
    #[test]
    fn stream_rows_become_json_objects() {
        let mut texts = ListBuilder::new(StringBuilder::new());
        texts.values().append_value("red");
        texts.values().append_value("blue");
        texts.append(true);
        texts.values().append_value("green");
        texts.append(true);
        let texts = Arc::new(texts.finish()) as ArrayRef;
        let text_field = Field::new("text", texts.data_type().clone(), true);
        let choices = StructArray::from(vec![(Arc::new(text_field), texts)]);
        let schema = Arc::new(Schema::new(vec![
            Field::new("question", DataType::Utf8, true),
            Field::new("answer", DataType::Boolean, true),
            Field::new("label", DataType::Int64, true),
            Field::new("choices", choices.data_type().clone(), true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![Some("sky?"), None])),
                Arc::new(BooleanArray::from(vec![true, false])),
                Arc::new(Int64Array::from(vec![1, 0])),
                Arc::new(choices),
            ],
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let split = dir.path().join("validation");
        std::fs::create_dir(&split).unwrap();
        let path = split.join("data-00000-of-00001.arrow");
        let mut writer = arrow_ipc::writer::StreamWriter::try_new(
            std::fs::File::create(&path).unwrap(),
            &schema,
        )
        .unwrap();
        writer.write(&batch).unwrap();
        writer.finish().unwrap();

        let rows = read_split(&split).unwrap();
        assert_eq!(
            rows,
            vec![
                json!({"question": "sky?", "answer": true, "label": 1, "choices": {"text": ["red", "blue"]}}),
                json!({"question": null, "answer": false, "label": 0, "choices": {"text": ["green"]}}),
            ]
        );
        let message = read_split(dir.path()).unwrap_err().to_string();
        assert!(message.contains("no .arrow files"), "{message}");
        std::fs::write(split.join("data-00001-of-00001.arrow"), b"not arrow").unwrap();
        let message = read_split(&split).unwrap_err().to_string();
        assert!(message.contains("data-00001-of-00001.arrow"), "{message}");
    }
}
