//! Finding and loading the ONNX Runtime shared library (`load-dynamic`).
//!
//! ONNX Runtime can be loaded once per process, so the first successful load wins and is remembered;
//! later requests for a different file are an error rather than a silent mismatch.
use std::ffi::CStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::error::{Error, Result};

/// File names tried in a directory, most specific first.
const LIBRARY_NAMES: &[&str] = &[
    "libonnxruntime.so.1.31.1",
    "libonnxruntime.so.1",
    "libonnxruntime.so",
];

/// Where the loaded library was found, in discovery order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LibrarySource {
    /// A path given in the runtime options.
    Explicit,
    /// The `DG_ORT_DYLIB_PATH` environment variable.
    DgEnv,
    /// The `ORT_DYLIB_PATH` environment variable (ort's own convention).
    OrtEnv,
    /// Next to libdiffgentor or the running executable.
    Bundled,
    /// The system dynamic loader's search path.
    System,
}

impl fmt::Display for LibrarySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LibrarySource::Explicit => "explicit path in runtime options",
            LibrarySource::DgEnv => "DG_ORT_DYLIB_PATH",
            LibrarySource::OrtEnv => "ORT_DYLIB_PATH",
            LibrarySource::Bundled => "next to libdiffgentor / the executable",
            LibrarySource::System => "system loader search path",
        })
    }
}

/// The ONNX Runtime library this process uses, with its one environment.
#[derive(Clone)]
pub struct OrtLibrary {
    pub path: PathBuf,
    pub source: LibrarySource,
    pub version: String,
    pub(crate) environment: ort::environment::Environment,
}

impl fmt::Debug for OrtLibrary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OrtLibrary")
            .field("path", &self.path)
            .field("source", &self.source)
            .field("version", &self.version)
            .finish()
    }
}

static LOADED: OnceLock<OrtLibrary> = OnceLock::new();
static LOAD_LOCK: Mutex<()> = Mutex::new(());

/// The library loaded so far in this process, if any.
pub fn loaded() -> Option<&'static OrtLibrary> {
    LOADED.get()
}

/// Loads ONNX Runtime (once per process) following the discovery order, and returns what was loaded.
pub fn load(explicit: Option<&Path>) -> Result<&'static OrtLibrary> {
    let _guard = LOAD_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let (path, source) = discover(explicit)?;
    if let Some(lib) = LOADED.get() {
        if source == LibrarySource::Explicit && !same_file(&lib.path, &path) {
            return Err(Error::OrtLibrary(format!(
                "already loaded from {} in this process; cannot also load {}",
                lib.path.display(),
                path.display()
            )));
        }
        return Ok(lib);
    }
    let version = read_version(&path)?;
    let environment = ort::init_from(&path)
        .map_err(|e| Error::OrtLibrary(e.to_string()))?
        .with_name("diffgentor")
        .build()
        .map_err(|e| Error::OrtLibrary(format!("creating the environment: {e}")))?;
    Ok(LOADED.get_or_init(|| OrtLibrary {
        path,
        source,
        version,
        environment,
    }))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Resolves the library file by the documented order: explicit > DG_ORT_DYLIB_PATH > ORT_DYLIB_PATH >
/// next to libdiffgentor / the executable > the system loader.
fn discover(explicit: Option<&Path>) -> Result<(PathBuf, LibrarySource)> {
    if let Some(path) = explicit {
        return existing(path, LibrarySource::Explicit);
    }
    for (var, source) in [
        ("DG_ORT_DYLIB_PATH", LibrarySource::DgEnv),
        ("ORT_DYLIB_PATH", LibrarySource::OrtEnv),
    ] {
        if let Some(value) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            return existing(Path::new(&value), source);
        }
    }
    for dir in bundled_dirs() {
        if let Some(path) = LIBRARY_NAMES
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.is_file())
        {
            return Ok((path, LibrarySource::Bundled));
        }
    }
    // A bare file name makes dlopen search LD_LIBRARY_PATH, the ld cache and the default paths.
    Ok((PathBuf::from("libonnxruntime.so.1"), LibrarySource::System))
}

fn existing(path: &Path, source: LibrarySource) -> Result<(PathBuf, LibrarySource)> {
    if path.is_file() {
        Ok((path.to_path_buf(), source))
    } else {
        Err(Error::OrtLibrary(format!(
            "{} (from {source}) does not exist or is not a file; run `make ort` or install onnxruntime==1.31.1",
            path.display()
        )))
    }
}

/// Directories holding libdiffgentor itself (when loaded as a shared library) and the executable.
fn bundled_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = own_library_dir() {
        dirs.push(dir);
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
}

fn own_library_dir() -> Option<PathBuf> {
    let mut info = std::mem::MaybeUninit::<libc::Dl_info>::zeroed();
    let addr = own_library_dir as *const libc::c_void;
    // SAFETY: dladdr only reads the address and fills `info`; a zero return means "not found".
    let found = unsafe { libc::dladdr(addr, info.as_mut_ptr()) };
    if found == 0 {
        return None;
    }
    // SAFETY: dladdr succeeded, so `info` is initialised; dli_fname may still be null.
    let info = unsafe { info.assume_init() };
    if info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dli_fname is a NUL-terminated string owned by the loader.
    let name = unsafe { CStr::from_ptr(info.dli_fname) };
    let path = PathBuf::from(name.to_str().ok()?);
    path.parent().map(Path::to_path_buf)
}

/// Reads `OrtGetApiBase()->GetVersionString()` so the error for a wrong file is ours, not a crash later.
fn read_version(path: &Path) -> Result<String> {
    // SAFETY: loading ONNX Runtime runs only its static initialisers, which have no preconditions.
    let lib = unsafe { libloading::Library::new(path) }
        .map_err(|e| {
            Error::OrtLibrary(format!(
                "cannot load {}: {e} (set DG_ORT_DYLIB_PATH to libonnxruntime.so 1.31+, or run `make ort`)",
                path.display()
            ))
        })?;
    type GetApiBase = unsafe extern "C" fn() -> *const ort::sys::OrtApiBase;
    // SAFETY: the symbol has this signature in every ONNX Runtime release.
    let get_base = unsafe { lib.get::<GetApiBase>(b"OrtGetApiBase") }.map_err(|_| {
        Error::OrtLibrary(format!(
            "{} is not ONNX Runtime (no OrtGetApiBase symbol)",
            path.display()
        ))
    })?;
    // SAFETY: OrtGetApiBase returns a pointer to a static table (or null, which we check).
    let base = unsafe { get_base() };
    if base.is_null() {
        return Err(Error::OrtLibrary(format!(
            "{}: OrtGetApiBase returned null",
            path.display()
        )));
    }
    // SAFETY: `base` is a valid static table; GetVersionString returns a static NUL-terminated string.
    let version = unsafe { CStr::from_ptr(((*base).GetVersionString)()) };
    Ok(version.to_string_lossy().into_owned())
}

/// Names of the execution providers this ONNX Runtime build can register (e.g. `CPUExecutionProvider`).
pub fn available_providers() -> Result<Vec<String>> {
    let api = ort::api();
    let mut list: *mut *mut std::ffi::c_char = std::ptr::null_mut();
    let mut len: std::ffi::c_int = 0;
    // SAFETY: out-pointers are valid; the returned list is released below with its own length.
    let status = unsafe { (api.GetAvailableProviders)(&mut list, &mut len) };
    if !status.0.is_null() {
        // SAFETY: a non-null status is owned by us and must be released.
        unsafe { (api.ReleaseStatus)(status.0) };
        return Err(Error::OrtLibrary("GetAvailableProviders failed".into()));
    }
    let mut names = Vec::with_capacity(len.max(0) as usize);
    for i in 0..len.max(0) as usize {
        // SAFETY: ORT returned `len` valid C strings.
        let name = unsafe { CStr::from_ptr(*list.add(i)) };
        names.push(name.to_string_lossy().into_owned());
    }
    // SAFETY: releasing exactly what GetAvailableProviders returned.
    let status = unsafe { (api.ReleaseAvailableProviders)(list, len) };
    if !status.0.is_null() {
        // SAFETY: as above.
        unsafe { (api.ReleaseStatus)(status.0) };
    }
    Ok(names)
}
