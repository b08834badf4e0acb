//! The manifest: one JSON line per finished or failed row, appended with one write and an fsync,
//! so a kill at any moment leaves at most a torn last line, which readers skip. A rerun reads it
//! to skip rows already done; `dg manifest merge` joins the parts of sharded runs.
use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use diffgentor::Error;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One manifest line.
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct Entry {
    /// The row's position in the whole input.
    pub index: usize,
    /// `ok` or `error`.
    pub status: String,
    /// The images written, relative to the output dir.
    #[serde(default)]
    pub outputs: Vec<String>,
    /// The seed actually used (drawn when the row and the command gave none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backend: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model: String,
    /// The request as it ran: prompt, sizes, steps, scheduler, sources.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub parameters: Value,
    /// Milliseconds spent generating and writing the row's images.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub timings: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An open manifest file, appended to one durable line at a time.
pub struct Manifest {
    file: File,
    path: PathBuf,
}

impl Manifest {
    pub fn open(path: &Path) -> diffgentor::Result<Manifest> {
        let io = |e| Error::io("cannot open manifest", path, e);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .map_err(io)?;
        // A line torn by a kill is ended, so the next line starts clean.
        if file.seek(SeekFrom::End(0)).map_err(io)? > 0 {
            let mut last = [0u8];
            file.seek(SeekFrom::End(-1)).map_err(io)?;
            file.read_exact(&mut last).map_err(io)?;
            if last[0] != b'\n' {
                file.write_all(b"\n").map_err(io)?;
            }
        }
        Ok(Manifest {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Appends `entry` as one line with a single write, then makes it durable.
    pub fn append(&mut self, entry: &Entry) -> diffgentor::Result<()> {
        let mut line = serde_json::to_vec(entry)
            .map_err(|e| Error::InvalidArg(format!("manifest line: {e}")))?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| Error::io("cannot append to", &self.path, e))
    }
}

/// Every manifest file in `dir`: the merged `manifest.jsonl` and the shards' parts.
fn manifest_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("manifest") && n.ends_with(".jsonl"))
        })
        .collect();
    files.sort();
    files
}

/// The lines of a manifest that parse (a torn last line does not), as raw JSON and as entries.
fn read_lines(path: &Path) -> diffgentor::Result<Vec<(Value, Entry)>> {
    let file = File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
    let mut lines = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| Error::io("cannot read", path, e))?;
        let Ok(value) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if let Ok(entry) = serde_json::from_value::<Entry>(value.clone()) {
            lines.push((value, entry));
        }
    }
    Ok(lines)
}

/// The rows already done in `dir`: the last line about them in some manifest says `ok` and every
/// image it lists is on disk (images are renamed into place whole, so present means complete).
pub fn completed(dir: &Path) -> diffgentor::Result<HashSet<usize>> {
    let mut done = HashSet::new();
    for path in manifest_files(dir) {
        let mut last: BTreeMap<usize, Entry> = BTreeMap::new();
        for (_, entry) in read_lines(&path)? {
            last.insert(entry.index, entry);
        }
        done.extend(last.into_values().filter_map(|entry| {
            let present =
                !entry.outputs.is_empty() && entry.outputs.iter().all(|o| dir.join(o).is_file());
            (entry.status == "ok" && present).then_some(entry.index)
        }));
    }
    Ok(done)
}

/// Joins `manifest.jsonl` and every shard part in `dir` into `manifest.jsonl`, one line per row
/// (the last written about it), in input order. Returns the rows and how many of them failed.
pub fn merge(dir: &Path) -> diffgentor::Result<(usize, usize)> {
    let files = manifest_files(dir);
    if files.is_empty() {
        return Err(Error::InvalidArg(format!(
            "{}: no manifest.jsonl or manifest.part-*.jsonl to merge",
            dir.display()
        )));
    }
    let mut rows: BTreeMap<usize, (Value, bool)> = BTreeMap::new();
    // manifest.jsonl sorts before the parts, so what the parts say about a row wins.
    for path in files {
        for (value, entry) in read_lines(&path)? {
            rows.insert(entry.index, (value, entry.status == "ok"));
        }
    }
    let mut text = String::new();
    for (value, _) in rows.values() {
        text.push_str(&value.to_string());
        text.push('\n');
    }
    diffgentor::image::write_atomically(&dir.join("manifest.jsonl"), text.as_bytes())?;
    let failed = rows.values().filter(|(_, ok)| !ok).count();
    Ok((rows.len(), failed))
}
