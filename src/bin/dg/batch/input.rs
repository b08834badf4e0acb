//! Reading the input table: CSV, TSV, JSON Lines or Parquet (chosen by the file's extension), into
//! rows of JSON values keyed by column name. The whole table is read before any work starts, so an
//! unreadable file or an unknown format fails at once, and a row's index is its position in the
//! whole file, whichever shard runs it.
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use diffgentor::Error;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use serde_json::{Map, Number, Value};

/// One input row: its cells by column name. A missing cell and a null one read the same.
pub type Row = Map<String, Value>;

/// The rows of an input file and the columns its header (or schema) names.
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Row>,
}

/// Reads `path` by its extension: `.csv`, `.tsv`, `.jsonl` (or `.ndjson`) or `.parquet`.
pub fn read(path: &Path) -> diffgentor::Result<Table> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let table = match ext.as_str() {
        "csv" => read_delimited(path, b','),
        "tsv" => read_delimited(path, b'\t'),
        "jsonl" | "ndjson" => read_jsonl(path),
        "parquet" => read_parquet(path),
        _ => {
            return Err(Error::InvalidArg(format!(
                "--input {}: unknown table format `.{ext}` (expected .csv, .tsv, .jsonl or \
                 .parquet)",
                path.display()
            )))
        }
    };
    table.map_err(|message| Error::InvalidArg(format!("--input {}: {message}", path.display())))
}

fn open(path: &Path) -> Result<File, String> {
    File::open(path).map_err(|e| format!("cannot open: {e}"))
}

/// CSV and TSV: a header line, then one record per line; every cell is text (an empty cell is
/// the empty string, which optional columns read as unset).
fn read_delimited(path: &Path, delimiter: u8) -> Result<Table, String> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .from_reader(open(path)?);
    let columns: Vec<String> = reader
        .headers()
        .map_err(|e| e.to_string())?
        .iter()
        .map(str::to_string)
        .collect();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| e.to_string())?;
        let row = columns
            .iter()
            .zip(record.iter())
            .map(|(name, cell)| (name.clone(), Value::String(cell.to_string())))
            .collect();
        rows.push(row);
    }
    Ok(Table { columns, rows })
}

/// JSON Lines: one object per line (blank lines skipped); the columns are every key seen.
fn read_jsonl(path: &Path) -> Result<Table, String> {
    let mut columns: Vec<String> = Vec::new();
    let mut rows = Vec::new();
    for (n, line) in BufReader::new(open(path)?).lines().enumerate() {
        let line = line.map_err(|e| format!("line {}: {e}", n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let row: Row = match serde_json::from_str(&line) {
            Ok(Value::Object(row)) => row,
            Ok(_) => return Err(format!("line {}: not a JSON object", n + 1)),
            Err(e) => return Err(format!("line {}: {e}", n + 1)),
        };
        for key in row.keys() {
            if !columns.contains(key) {
                columns.push(key.clone());
            }
        }
        rows.push(row);
    }
    Ok(Table { columns, rows })
}

fn read_parquet(path: &Path) -> Result<Table, String> {
    let reader = SerializedFileReader::new(open(path)?).map_err(|e| e.to_string())?;
    let columns = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .root_schema()
        .get_fields()
        .iter()
        .map(|field| field.name().to_string())
        .collect();
    let mut rows = Vec::new();
    for row in reader.get_row_iter(None).map_err(|e| e.to_string())? {
        let row = row.map_err(|e| e.to_string())?;
        rows.push(
            row.get_column_iter()
                .map(|(name, field)| (name.clone(), to_json(field)))
                .collect(),
        );
    }
    Ok(Table { columns, rows })
}

/// A Parquet cell as JSON: numbers, text, booleans and lists as themselves; anything else (dates,
/// decimals, maps) as its text.
fn to_json(field: &Field) -> Value {
    let number = |n: Option<Number>| n.map_or(Value::Null, Value::Number);
    match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(v) => Value::from(*v),
        Field::Short(v) => Value::from(*v),
        Field::Int(v) => Value::from(*v),
        Field::Long(v) => Value::from(*v),
        Field::UByte(v) => Value::from(*v),
        Field::UShort(v) => Value::from(*v),
        Field::UInt(v) => Value::from(*v),
        Field::ULong(v) => Value::from(*v),
        Field::Float(v) => number(Number::from_f64(f64::from(*v))),
        Field::Double(v) => number(Number::from_f64(*v)),
        Field::Str(s) => Value::String(s.clone()),
        Field::Bytes(b) => Value::String(String::from_utf8_lossy(b.data()).into_owned()),
        Field::ListInternal(list) => Value::Array(list.elements().iter().map(to_json).collect()),
        other => Value::String(other.to_string()),
    }
}
