//! The optimized-graph cache: ONNX Runtime's optimized model, saved on the first load of a graph and
//! loaded (with graph optimisation off) on later ones.
//!
//! Layout: `<cache dir>/<component>-<16 hex digits>/{model.onnx, model.onnx_data, manifest.txt}`. The
//! hex digits hash the *key material* (source files with sizes and mtimes, ONNX Runtime version,
//! optimisation level, execution provider and, for the `layout`/`all` levels, the host CPU), which
//! `manifest.txt` also holds in full along with the size of every file of the entry. An entry is only
//! ever published whole: ONNX Runtime writes into a temporary directory beside it, the files are
//! synced, and the directory is renamed into place.
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// File names inside an entry.
pub(crate) const MODEL_FILE: &str = "model.onnx";
/// Initializers go to a separate file so models over protobuf's 2 GiB limit (an SD 1.5 UNet in fp32)
/// can be saved at all; it is named relative to the model, so the entry can be renamed.
pub(crate) const DATA_FILE: &str = "model.onnx_data";
const MANIFEST_FILE: &str = "manifest.txt";
/// Bumped whenever the layout or the key material changes.
const FORMAT: &str = "diffgentor optimized graph cache v1";
const TMP_PREFIX: &str = ".tmp-";

/// Makes temporary names unique within the process (the process id makes them unique between).
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// `<cache dir>/.tmp-<entry>-<pid>-<n>`.
fn tmp_name(cache_dir: &Path, entry: &str) -> PathBuf {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    cache_dir.join(format!("{TMP_PREFIX}{entry}-{}-{n}", std::process::id()))
}

/// What the cache did when a graph was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheStatus {
    /// No cache configured, or the optimisation level is `disable` (nothing to save).
    Off,
    /// Loaded from a cache entry with graph optimisation disabled.
    Hit,
    /// No entry yet: optimised from the source graph and saved.
    Written,
    /// The entry could not be used (corrupt, truncated, unreadable): optimised from the source graph
    /// and saved again.
    Replaced { reason: String },
    /// Optimised from the source graph, but the entry could not be saved; the graph works regardless.
    WriteFailed { reason: String },
}

impl CacheStatus {
    /// A short word for tables and JSON: off, hit, written, replaced, write-failed.
    pub fn label(&self) -> &'static str {
        match self {
            CacheStatus::Off => "off",
            CacheStatus::Hit => "hit",
            CacheStatus::Written => "written",
            CacheStatus::Replaced { .. } => "replaced",
            CacheStatus::WriteFailed { .. } => "write-failed",
        }
    }
}

/// One graph's place in the cache.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    cache_dir: PathBuf,
    name: String,
    material: String,
}

impl Entry {
    /// The entry for `source` under these settings. `settings` lists what besides the source files
    /// changes the optimized graph (ONNX Runtime version, level, provider, host); it must not contain
    /// anything that does not (thread counts), or equal graphs would be cached twice.
    pub fn new(
        cache_dir: &Path,
        component: &str,
        source: &Path,
        settings: &[(&str, String)],
    ) -> Result<Entry> {
        let mut material = format!("{FORMAT}\n");
        let source = source
            .canonicalize()
            .map_err(|e| Error::io("resolving", source, e))?;
        let _ = writeln!(material, "source={}", source.display());
        // Every file beside the graph: external data (model.onnx_data, weights.pb, ...) can change
        // without model.onnx changing.
        let dir = source.parent().unwrap_or(Path::new("."));
        let mut files = Vec::new();
        for item in fs::read_dir(dir).map_err(|e| Error::io("listing", dir, e))? {
            let item = item.map_err(|e| Error::io("listing", dir, e))?;
            let meta = item
                .metadata()
                .map_err(|e| Error::io("reading metadata of", item.path(), e))?;
            if meta.is_file() {
                let mtime = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                files.push(format!(
                    "file={} size={} mtime_ns={mtime}",
                    item.file_name().to_string_lossy(),
                    meta.len()
                ));
            }
        }
        files.sort();
        for line in files {
            let _ = writeln!(material, "{line}");
        }
        for (key, value) in settings {
            let _ = writeln!(material, "{key}={value}");
        }
        Ok(Entry {
            cache_dir: cache_dir.to_path_buf(),
            name: format!("{component}-{:016x}", fnv1a(material.as_bytes())),
            material,
        })
    }

    pub fn dir(&self) -> PathBuf {
        self.cache_dir.join(&self.name)
    }

    pub fn model(&self) -> PathBuf {
        self.dir().join(MODEL_FILE)
    }

    /// `Ok(true)` when a complete entry for exactly this key material is present, `Ok(false)` when
    /// there is none, `Err(reason)` when something is there but unusable.
    pub fn check(&self) -> std::result::Result<bool, String> {
        let dir = self.dir();
        let manifest = match fs::read_to_string(dir.join(MANIFEST_FILE)) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !dir.exists() => return Ok(false),
            Err(e) => return Err(format!("{}: {e}", dir.join(MANIFEST_FILE).display())),
        };
        let Some((material, sizes)) = manifest.split_once("\n--\n") else {
            return Err("the manifest has no file list".into());
        };
        if material != self.material.trim_end() {
            return Err("the manifest is for other source files or settings".into());
        }
        let mut listed_model = false;
        for line in sizes.lines() {
            let (file, size) = line
                .rsplit_once(' ')
                .and_then(|(f, s)| Some((f, s.parse::<u64>().ok()?)))
                .ok_or_else(|| format!("bad manifest line `{line}`"))?;
            let actual = fs::metadata(dir.join(file))
                .map_err(|e| format!("{file}: {e}"))?
                .len();
            if actual != size {
                return Err(format!(
                    "{file} has {actual} bytes, the manifest says {size}"
                ));
            }
            listed_model |= file == MODEL_FILE;
        }
        if listed_model {
            Ok(true)
        } else {
            Err(format!("the manifest does not list {MODEL_FILE}"))
        }
    }

    /// Removes the entry: renamed aside first, so no reader ever sees it half deleted.
    pub fn remove(&self) -> Result<()> {
        let dir = self.dir();
        let aside = tmp_name(&self.cache_dir, &self.name);
        match fs::rename(&dir, &aside) {
            Ok(()) => fs::remove_dir_all(&aside).map_err(|e| Error::io("removing", &aside, e)),
            // Someone else removed or replaced it already.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("moving aside", &dir, e)),
        }
    }

    /// A fresh temporary directory to let ONNX Runtime write the optimized model into.
    pub fn begin_write(&self) -> Result<PendingEntry> {
        fs::create_dir_all(&self.cache_dir)
            .map_err(|e| Error::io("creating", &self.cache_dir, e))?;
        remove_abandoned(&self.cache_dir);
        let tmp = tmp_name(&self.cache_dir, &self.name);
        // A leftover of an earlier process that had this process id (and died) may be in the way.
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir(&tmp).map_err(|e| Error::io("creating", &tmp, e))?;
        Ok(PendingEntry {
            tmp,
            entry: self.clone(),
            published: false,
        })
    }
}

/// A cache entry being written; removed on drop unless published.
pub(crate) struct PendingEntry {
    tmp: PathBuf,
    entry: Entry,
    published: bool,
}

impl PendingEntry {
    pub fn model(&self) -> PathBuf {
        self.tmp.join(MODEL_FILE)
    }

    /// Syncs what ONNX Runtime wrote, adds the manifest and renames the directory into place. If
    /// another process published the same entry first, its copy is kept and this one dropped.
    pub fn publish(mut self) -> Result<()> {
        let mut sizes = String::new();
        for item in fs::read_dir(&self.tmp).map_err(|e| Error::io("listing", &self.tmp, e))? {
            let path = item.map_err(|e| Error::io("listing", &self.tmp, e))?.path();
            let file = File::open(&path).map_err(|e| Error::io("opening", &path, e))?;
            file.sync_all()
                .map_err(|e| Error::io("syncing", &path, e))?;
            let len = file
                .metadata()
                .map_err(|e| Error::io("reading metadata of", &path, e))?
                .len();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let _ = writeln!(sizes, "{name} {len}");
        }
        let manifest = format!("{}\n--\n{sizes}", self.entry.material.trim_end());
        let manifest_path = self.tmp.join(MANIFEST_FILE);
        write_synced(&manifest_path, manifest.as_bytes())?;
        sync_dir(&self.tmp)?;
        let dir = self.entry.dir();
        match fs::rename(&self.tmp, &dir) {
            Ok(()) => {
                self.published = true;
                sync_dir(&self.entry.cache_dir)
            }
            // A non-empty directory is in the way: another writer won the race.
            Err(_) if dir.join(MANIFEST_FILE).is_file() => Ok(()),
            Err(e) => Err(Error::io("publishing", &dir, e)),
        }
    }
}

impl Drop for PendingEntry {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let mut file = File::create(path).map_err(|e| Error::io("creating", path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io("writing", path, e))
}

/// Makes a rename or a new file durable (a directory is synced through a read-only handle on Unix).
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("syncing", dir, e))
}

/// Deletes temporary directories left by writers that died (their process id is gone), so a crash
/// during a multi-gigabyte write does not leave the bytes behind forever. Best effort.
fn remove_abandoned(cache_dir: &Path) {
    let Ok(items) = fs::read_dir(cache_dir) else {
        return;
    };
    for item in items.flatten() {
        let name = item.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(TMP_PREFIX) else {
            continue;
        };
        // `<entry>-<pid>-<n>`: the pid is the second field from the end.
        let pid = rest.rsplit('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if pid != std::process::id()
                && !Path::new(&format!("/proc/{pid}")).exists()
                && Path::new("/proc/self").exists()
            {
                let _ = fs::remove_dir_all(item.path());
            }
        }
    }
}

/// 64-bit FNV-1a: stable across Rust releases, unlike `DefaultHasher`; collisions are harmless
/// because the manifest holds the full key material and is compared on every load.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What identifies this machine's CPU for graphs optimised at the `layout`/`all` levels: ONNX
/// Runtime's NCHWc transformer picks its block size from the SIMD width it finds (8 for AVX2, 16
/// for AVX-512), and warns that such a model "should only be used in the same environment the model
/// was optimized in". The CPU model name and feature flags from /proc/cpuinfo, hashed.
pub(crate) fn host_fingerprint() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let first = |key: &str| {
        cpuinfo
            .lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let model = first("model name");
    // x86 calls them flags, ARM features.
    let flags = first("flags") + &first("Features");
    format!(
        "{} {model} flags:{:016x}",
        std::env::consts::ARCH,
        fnv1a(flags.as_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn the_key_changes_with_the_source_files_and_the_settings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let graph = dir.path().join("model.onnx");
        fs::write(&graph, b"graph").expect("write");
        let cache = dir.path().join("cache");
        let settings =
            |level: &str| vec![("ort", "1.31.1".to_string()), ("level", level.to_string())];
        let a = Entry::new(&cache, "unet", &graph, &settings("all")).expect("entry");
        let same = Entry::new(&cache, "unet", &graph, &settings("all")).expect("entry");
        assert_eq!(a.name, same.name);
        let other_level = Entry::new(&cache, "unet", &graph, &settings("extended")).expect("entry");
        assert_ne!(a.name, other_level.name);
        // External data beside the graph is part of the key.
        fs::write(dir.path().join("model.onnx_data"), b"weights").expect("write");
        let with_data = Entry::new(&cache, "unet", &graph, &settings("all")).expect("entry");
        assert_ne!(a.name, with_data.name);
        assert!(a.name.starts_with("unet-"));
    }

    #[test]
    fn entries_are_published_whole_and_checked_against_the_manifest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let graph = dir.path().join("model.onnx");
        fs::write(&graph, b"graph").expect("write");
        let entry = Entry::new(&dir.path().join("cache"), "vae", &graph, &[]).expect("entry");
        assert_eq!(entry.check(), Ok(false));

        let pending = entry.begin_write().expect("begin");
        fs::write(pending.model(), b"optimized").expect("write");
        assert_eq!(
            entry.check(),
            Ok(false),
            "nothing visible before publishing"
        );
        pending.publish().expect("publish");
        assert_eq!(entry.check(), Ok(true));

        fs::write(entry.model(), b"optimized but longer").expect("damage");
        let reason = entry.check().expect_err("size mismatch");
        assert!(reason.contains("model.onnx"), "{reason}");

        entry.remove().expect("remove");
        assert_eq!(entry.check(), Ok(false));
        // Nothing but the (now empty) cache directory is left: no temporary directories.
        assert_eq!(
            fs::read_dir(dir.path().join("cache"))
                .expect("list")
                .count(),
            0
        );
    }

    #[test]
    fn an_unpublished_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let graph = dir.path().join("model.onnx");
        fs::write(&graph, b"graph").expect("write");
        let entry = Entry::new(&dir.path().join("cache"), "unet", &graph, &[]).expect("entry");
        let pending = entry.begin_write().expect("begin");
        fs::write(pending.model(), b"half").expect("write");
        drop(pending);
        assert_eq!(
            fs::read_dir(dir.path().join("cache"))
                .expect("list")
                .count(),
            0
        );
        assert_eq!(entry.check(), Ok(false));
    }

    #[test]
    fn the_host_fingerprint_names_the_architecture() {
        assert!(host_fingerprint().starts_with(std::env::consts::ARCH));
    }
}
