//! Finding and loading the ONNX Runtime shared library, once per process.
//!
//! rewardrt uses `ort` with `load-dynamic`: the library is a file chosen at run time, so one binary serves the
//! CPU build (`onnxruntime` wheel), the CUDA/TensorRT build (`onnxruntime-gpu`) and DirectML
//! (`onnxruntime-directml`). Resolution order, first hit wins:
//!
//! 1. an explicit path ([`crate::ScorerOptions::with_ort_library`], `--ort-library`);
//! 2. the `ORT_DYLIB_PATH` environment variable;
//! 3. a library next to the executable;
//! 4. the copy `build.rs` fetched from the pinned PyPI wheel;
//! 5. the system loader (`libonnxruntime.so` on the library path).
//!
//! ONNX Runtime allows one environment per process and `ort` one loaded library, so the first successful load
//! is shared by every scorer; asking for a different library later is an error rather than a silent mix.

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, OnceLock},
};

use crate::{Error, Result};

/// Where the loaded library came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LibrarySource {
    /// Given explicitly by the caller.
    Explicit,
    /// From `ORT_DYLIB_PATH`.
    EnvVar,
    /// Found next to the executable.
    NextToExecutable,
    /// The copy fetched by the build script.
    BuildFetched,
    /// Left to the system loader.
    System,
}

impl std::fmt::Display for LibrarySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LibrarySource::Explicit => "explicit option",
            LibrarySource::EnvVar => "ORT_DYLIB_PATH",
            LibrarySource::NextToExecutable => "next to the executable",
            LibrarySource::BuildFetched => "fetched by the build (PyPI onnxruntime wheel)",
            LibrarySource::System => "system loader",
        })
    }
}

/// The process-wide ONNX Runtime: the library that was loaded and its environment.
#[derive(Debug)]
pub struct Runtime {
    pub(crate) env: ort::environment::Environment,
    /// The library path as resolved (a bare file name when left to the system loader).
    pub library: PathBuf,
    pub source: LibrarySource,
    /// Version string reported by the library.
    pub version: String,
}

/// The library resolution order, as shown to users (`--ort-library` is the CLI's explicit option).
pub const RESOLUTION_ORDER: &[&str] = &[
    "--ort-library / REWARDRT_ORT_LIBRARY",
    "ORT_DYLIB_PATH",
    "next to the executable",
    "fetched by the build",
    "system loader",
];

/// The ONNX Runtime version the build fetches; the minimum `ort` accepts is 1.31.
pub const BUNDLED_ORT_VERSION: &str = env!("REWARDRT_ORT_WHEEL_VERSION");

fn system_library_name() -> String {
    format!(
        "{}onnxruntime{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

/// Candidate libraries in resolution order (explicit first). Only existing files are listed, except the
/// final system-loader fallback.
pub fn candidates(explicit: Option<&Path>) -> Vec<(PathBuf, LibrarySource)> {
    let mut out = Vec::new();
    if let Some(path) = explicit {
        out.push((path.to_path_buf(), LibrarySource::Explicit));
        return out;
    }
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        out.push((PathBuf::from(path), LibrarySource::EnvVar));
        return out;
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        let versioned = format!("libonnxruntime.so.{BUNDLED_ORT_VERSION}");
        for name in [system_library_name(), versioned] {
            let path = dir.join(name);
            if path.is_file() {
                out.push((path, LibrarySource::NextToExecutable));
            }
        }
    }
    let fetched = env!("REWARDRT_BUILD_ORT_DYLIB");
    if !fetched.is_empty() && Path::new(fetched).is_file() {
        out.push((PathBuf::from(fetched), LibrarySource::BuildFetched));
    }
    out.push((PathBuf::from(system_library_name()), LibrarySource::System));
    out
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static INIT_LOCK: Mutex<()> = Mutex::new(());

/// Loads ONNX Runtime (once per process) and returns the shared runtime.
///
/// `explicit` overrides the resolution order; it must match the library already loaded, if any.
///
/// # Errors
/// [`Error::OrtLibrary`] when no candidate loads, with each attempt and how to obtain a library; or when a
/// different library than the one already loaded is requested.
pub fn runtime(explicit: Option<&Path>) -> Result<&'static Runtime> {
    if let Some(rt) = RUNTIME.get() {
        return check_same(rt, explicit);
    }
    let _guard = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(rt) = RUNTIME.get() {
        return check_same(rt, explicit);
    }
    let mut attempts = Vec::new();
    for (path, source) in candidates(explicit) {
        if source != LibrarySource::System && !path.is_file() {
            attempts.push(format!("  {} ({source}): no such file", path.display()));
            continue;
        }
        match ort::init_from(&path) {
            Ok(builder) => {
                let env = builder
                    .with_name("rewardrt")
                    .build()
                    .map_err(Error::ort("creating the onnx runtime environment"))?;
                let version = library_version(&path).unwrap_or_else(|| ort_version_from_info(ort::info()));
                let rt = Runtime {
                    env,
                    library: path,
                    source,
                    version,
                };
                return Ok(RUNTIME.get_or_init(|| rt));
            }
            Err(e) => attempts.push(format!("  {} ({source}): {e}", path.display())),
        }
    }
    Err(Error::OrtLibrary {
        message: format!(
            "cannot load the ONNX Runtime library (rewardrt needs onnxruntime >= 1.31)\ntried:\n{}\n\
             to fix: `python3 -m pip install onnxruntime=={BUNDLED_ORT_VERSION}` (CPU), `onnxruntime-gpu` \
             (CUDA/TensorRT) or `onnxruntime-directml` (Windows), then point ORT_DYLIB_PATH at the library in its \
             onnxruntime/capi/ folder, or pass --ort-library; or rebuild with python3 and pip available so the \
             build fetches it",
            attempts.join("\n")
        ),
    })
}

fn check_same(rt: &'static Runtime, explicit: Option<&Path>) -> Result<&'static Runtime> {
    match explicit {
        Some(path) if path != rt.library => Err(Error::OrtLibrary {
            message: format!(
                "ONNX Runtime is already loaded from {} in this process; cannot switch to {}",
                rt.library.display(),
                path.display()
            ),
        }),
        _ => Ok(rt),
    }
}

/// The library's own version string (`OrtGetApiBase()->GetVersionString()`).
fn library_version(path: &Path) -> Option<String> {
    #[repr(C)]
    struct ApiBase {
        get_api: unsafe extern "C" fn(u32) -> *const std::ffi::c_void,
        get_version_string: unsafe extern "C" fn() -> *const std::ffi::c_char,
    }
    // SAFETY: `path` was just loaded successfully by `ort` (this only bumps the loader's reference count), and
    // `OrtGetApiBase` has this signature and returns a static struct whose second member returns a static
    // NUL-terminated string, per onnxruntime_c_api.h.
    unsafe {
        let lib = libloading::Library::new(path).ok()?;
        let get_base: libloading::Symbol<'_, unsafe extern "C" fn() -> *const ApiBase> =
            lib.get(b"OrtGetApiBase").ok()?;
        let base = get_base();
        if base.is_null() {
            return None;
        }
        let version = ((*base).get_version_string)();
        (!version.is_null()).then(|| std::ffi::CStr::from_ptr(version).to_string_lossy().into_owned())
    }
}

/// Extracts the release from ORT's build-info string (`... git-branch=rel-1.31.1, ...`).
fn ort_version_from_info(info: &str) -> String {
    info.split(|c: char| c == ',' || c.is_whitespace())
        .find_map(|part| part.strip_prefix("git-branch=rel-"))
        .map(str::to_owned)
        .unwrap_or_else(|| info.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_from_build_info() {
        let info = "ORT Build Info: git-branch=rel-1.31.1, git-commit-id=abc, build type=Release";
        assert_eq!(ort_version_from_info(info), "1.31.1");
    }

    #[test]
    fn explicit_path_wins_and_is_alone() {
        let c = candidates(Some(Path::new("/x/libonnxruntime.so")));
        assert_eq!(
            c,
            vec![(PathBuf::from("/x/libonnxruntime.so"), LibrarySource::Explicit)]
        );
    }

    #[test]
    fn system_loader_is_last_resort() {
        let c = candidates(None);
        assert_eq!(c.last().map(|(_, s)| *s), Some(LibrarySource::System));
    }
}
