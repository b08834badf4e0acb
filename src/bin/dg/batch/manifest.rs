//! The manifest: one JSON line per finished or failed row, appended with one write and an fsync,
//! so a kill at any moment leaves at most a torn last line, which readers skip. A rerun reads it
//! to skip rows already done; `dg manifest merge` joins the parts of sharded runs. A row may have
//! lines in several files (a rerun with another shard count, a merged manifest and newer parts):
//! the latest written wins, by each line's `written_ns`.
use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

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
    /// When the line was written, in nanoseconds since the Unix epoch, strictly increasing within
    /// a process: which of a row's lines is the latest, whatever file holds it (0 in lines from
    /// before it existed, which then lose to any newer line).
    #[serde(default)]
    pub written_ns: u64,
}

/// An open manifest file, appended to one durable line at a time.
pub struct Manifest {
    file: File,
    path: PathBuf,
    /// The last `written_ns` stamped, so two lines of one process never tie.
    last_written: u64,
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
            last_written: 0,
        })
    }

    /// Stamps `entry` with the time, appends it as one line with a single write, then makes it
    /// durable.
    pub fn append(&mut self, entry: &mut Entry) -> diffgentor::Result<()> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        self.last_written = now.max(self.last_written.saturating_add(1));
        entry.written_ns = self.last_written;
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

/// The latest line about each row over every manifest file in `dir`, as raw JSON and as entries.
/// Lines of equal `written_ns` (old lines without one) are taken in file and line order.
fn latest(dir: &Path) -> diffgentor::Result<BTreeMap<usize, (Value, Entry)>> {
    let mut rows: BTreeMap<usize, (Value, Entry)> = BTreeMap::new();
    for path in manifest_files(dir) {
        for (value, entry) in read_lines(&path)? {
            let newer = rows
                .get(&entry.index)
                .is_none_or(|(_, seen)| entry.written_ns >= seen.written_ns);
            if newer {
                rows.insert(entry.index, (value, entry));
            }
        }
    }
    Ok(rows)
}

/// The rows already done in `dir`: their latest manifest line says `ok` and every image it lists
/// is on disk (images are renamed into place whole, so present means complete).
pub fn completed(dir: &Path) -> diffgentor::Result<HashSet<usize>> {
    Ok(latest(dir)?
        .into_values()
        .filter_map(|(_, entry)| {
            let present =
                !entry.outputs.is_empty() && entry.outputs.iter().all(|o| dir.join(o).is_file());
            (entry.status == "ok" && present).then_some(entry.index)
        })
        .collect())
}

/// Joins `manifest.jsonl` and every shard part in `dir` into `manifest.jsonl`, one line per row
/// (the latest written about it), in input order. Returns the rows and how many of them failed.
pub fn merge(dir: &Path) -> diffgentor::Result<(usize, usize)> {
    if manifest_files(dir).is_empty() {
        return Err(Error::InvalidArg(format!(
            "{}: no manifest.jsonl or manifest.part-*.jsonl to merge",
            dir.display()
        )));
    }
    let rows = latest(dir)?;
    let mut text = String::new();
    for (value, _) in rows.values() {
        text.push_str(&value.to_string());
        text.push('\n');
    }
    diffgentor::image::write_atomically(&dir.join("manifest.jsonl"), text.as_bytes())?;
    let failed = rows.values().filter(|(_, e)| e.status != "ok").count();
    Ok((rows.len(), failed))
}
