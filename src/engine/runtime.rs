//! Provisioning of the ONNX Runtime shared library (`load-dynamic`).
//!
//! Search order, first hit wins:
//! 1. an explicit path (`--ort-lib`), which must exist;
//! 2. `$TICKINFER_ORT_LIB`, then `$ORT_DYLIB_PATH`, which must exist when set;
//! 3. the cache: `$TICKINFER_CACHE_DIR` or `$XDG_CACHE_HOME/tickinfer` or
//!    `~/.cache/tickinfer`, under `onnxruntime-1.31.1-{cpu,gpu}/`;
//! 4. provisioning into that cache: `python3 -m pip download` of the PyPI wheel
//!    (`onnxruntime==1.31.1`, or `onnxruntime-gpu==1.31.1` for the GPU build),
//!    and extraction of `onnxruntime/capi/libonnxruntime*.so*` from it. Needs PyPI once;
//!    offline afterwards. `TICKINFER_OFFLINE=1` forbids the download.
//!
//! Concurrent provisioners (parallel tests) serialise on a `flock` and publish
//! the library with an atomic rename, so a half-written file is never loaded.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The ONNX Runtime release tickinfer is built and tested against.
pub const ORT_VERSION: &str = "1.31.1";
/// File name of the runtime library in the wheel.
pub const ORT_LIB_NAME: &str = "libonnxruntime.so.1.31.1";

/// Which wheel provides the library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// `onnxruntime` (CPU execution provider only).
    Cpu,
    /// `onnxruntime-gpu` (CUDA and TensorRT execution providers).
    Gpu,
}

impl Flavor {
    fn package(self) -> &'static str {
        match self {
            Flavor::Cpu => "onnxruntime",
            Flavor::Gpu => "onnxruntime-gpu",
        }
    }
    fn dir_name(self) -> String {
        match self {
            Flavor::Cpu => format!("onnxruntime-{ORT_VERSION}-cpu"),
            Flavor::Gpu => format!("onnxruntime-{ORT_VERSION}-gpu"),
        }
    }
}

/// Why no runtime library could be found or provisioned. The message names the fix.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("ONNX Runtime library {path} (from {source_name}) does not exist. Fix: point it at {ORT_LIB_NAME} \
             (e.g. from `pip download {package}=={ORT_VERSION}`, under onnxruntime/capi/), or unset it to let \
             tickinfer provision it")]
    Missing { path: PathBuf, source_name: String, package: &'static str },
    #[error("ONNX Runtime {ORT_VERSION} is not in the cache ({cache}) and TICKINFER_OFFLINE is set. Fix: run once \
             with network access to PyPI, or set TICKINFER_ORT_LIB=/path/to/{ORT_LIB_NAME}")]
    Offline { cache: PathBuf },
    #[error(
        "could not provision ONNX Runtime {ORT_VERSION}: {reason}. Fix: install Python 3 with pip and allow \
             access to PyPI (`python3 -m pip download --no-deps {package}=={ORT_VERSION}`), or set \
             TICKINFER_ORT_LIB=/path/to/{ORT_LIB_NAME}"
    )]
    Download { reason: String, package: &'static str },
    #[error("cannot use cache directory {path}: {source}")]
    Cache { path: PathBuf, source: std::io::Error },
}

/// The cache directory (not created).
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TICKINFER_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("tickinfer");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("tickinfer")
}

/// The library that would be loaded, without provisioning: the env vars, then the cache.
pub fn find_existing(flavor: Flavor) -> Option<PathBuf> {
    for var in ["TICKINFER_ORT_LIB", "ORT_DYLIB_PATH"] {
        if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(p)).filter(|p| p.is_file());
        }
    }
    Some(cache_dir().join(flavor.dir_name()).join(ORT_LIB_NAME)).filter(|p| p.is_file())
}

/// Find the runtime library, provisioning it into the cache if needed.
pub fn locate(explicit: Option<&Path>, flavor: Flavor) -> Result<PathBuf, ProvisionError> {
    let must_exist = |path: PathBuf, source_name: &str| {
        if path.is_file() {
            Ok(path)
        } else {
            Err(ProvisionError::Missing { path, source_name: source_name.into(), package: flavor.package() })
        }
    };
    if let Some(p) = explicit {
        return must_exist(p.to_path_buf(), "--ort-lib");
    }
    for var in ["TICKINFER_ORT_LIB", "ORT_DYLIB_PATH"] {
        if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
            return must_exist(PathBuf::from(p), &format!("${var}"));
        }
    }
    let dir = cache_dir().join(flavor.dir_name());
    let lib = dir.join(ORT_LIB_NAME);
    if lib.is_file() {
        return Ok(lib);
    }
    if std::env::var_os("TICKINFER_OFFLINE").is_some_and(|v| !v.is_empty() && v != "0") {
        return Err(ProvisionError::Offline { cache: dir });
    }
    provision(&dir, flavor)?;
    Ok(lib)
}

fn provision(dir: &Path, flavor: Flavor) -> Result<(), ProvisionError> {
    let cache_err = |source| ProvisionError::Cache { path: dir.to_path_buf(), source };
    std::fs::create_dir_all(dir).map_err(cache_err)?;
    let lock = std::fs::File::create(dir.join(".lock")).map_err(cache_err)?;
    let _guard = FileLock::acquire(&lock).map_err(cache_err)?;
    if dir.join(ORT_LIB_NAME).is_file() {
        return Ok(()); // another process finished while we waited
    }
    let download = tempfile_dir(dir).map_err(cache_err)?;
    let result = download_and_extract(&download, dir, flavor);
    let _ = std::fs::remove_dir_all(&download);
    result
}

fn tempfile_dir(parent: &Path) -> std::io::Result<PathBuf> {
    let d = parent.join(format!(".download-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn download_and_extract(download: &Path, dir: &Path, flavor: Flavor) -> Result<(), ProvisionError> {
    let package = flavor.package();
    let python = std::env::var("TICKINFER_PYTHON").unwrap_or_else(|_| "python3".into());
    let spec = format!("{package}=={ORT_VERSION}");
    log::warn!(
        "ONNX Runtime {ORT_VERSION} not cached: fetching the `{spec}` wheel with {python} -m pip into {}",
        dir.display()
    );
    let arch = std::env::consts::ARCH;
    // First with this interpreter's tags; then pinned tags, which work whatever
    // Python is installed (the library inside the wheel is the same).
    let attempts: [Vec<String>; 2] = [
        vec![],
        ["--python-version", "3.12", "--implementation", "cp"]
            .into_iter()
            .map(String::from)
            .chain(
                ["2_17", "2_27", "2_28"]
                    .iter()
                    .flat_map(|g| ["--platform".into(), format!("manylinux_{g}_{arch}")]),
            )
            .collect(),
    ];
    let mut last_error = String::new();
    let mut wheel = None;
    for extra in attempts {
        let out = Command::new(&python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--disable-pip-version-check",
                "-q",
            ])
            .args(&extra)
            .arg("-d")
            .arg(download)
            .arg(&spec)
            .output();
        match out {
            Err(e) => {
                last_error = format!("cannot run `{python}`: {e}");
                break;
            }
            Ok(o) if o.status.success() => {
                wheel = std::fs::read_dir(download).ok().and_then(|rd| {
                    rd.flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|x| x == "whl"))
                });
                if wheel.is_some() {
                    break;
                }
                last_error = "pip reported success but no wheel was downloaded".into();
            }
            Ok(o) => {
                let stderr = String::from_utf8_lossy(&o.stderr);
                last_error = format!("`{python} -m pip download {spec}` failed: {}", stderr.trim());
            }
        }
    }
    let wheel = wheel.ok_or(ProvisionError::Download { reason: last_error, package })?;
    let n = extract_libs(&wheel, dir).map_err(|e| ProvisionError::Download {
        reason: format!("cannot extract {}: {e}", wheel.display()),
        package,
    })?;
    log::warn!(
        "ONNX Runtime {ORT_VERSION}: extracted {n} libraries from {} into {}",
        wheel.display(),
        dir.display()
    );
    Ok(())
}

/// Extract `onnxruntime/capi/libonnxruntime*.so*` from the wheel into `dir`, the main library last
/// (its presence marks the cache complete). Each file is written then renamed.
fn extract_libs(wheel: &Path, dir: &Path) -> std::io::Result<usize> {
    let file = std::fs::File::open(wheel)?;
    let mut zip = zip::ZipArchive::new(file).map_err(std::io::Error::other)?;
    let mut names: Vec<String> = zip
        .file_names()
        .filter(|n| n.starts_with("onnxruntime/capi/libonnxruntime") && n.contains(".so"))
        .map(String::from)
        .collect();
    if !names.iter().any(|n| n.ends_with(ORT_LIB_NAME)) {
        return Err(std::io::Error::other(format!("{ORT_LIB_NAME} is not in the wheel")));
    }
    names.sort_by_key(|n| n.ends_with(ORT_LIB_NAME));
    for name in &names {
        let base = Path::new(name).file_name().expect("zip entry has a file name");
        let mut entry = zip.by_name(name).map_err(std::io::Error::other)?;
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes)?;
        let tmp = dir.join(format!(".{}.tmp", base.to_string_lossy()));
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, dir.join(base))?;
    }
    Ok(names.len())
}

/// An exclusive `flock` held until drop.
struct FileLock<'a>(&'a std::fs::File);

impl<'a> FileLock<'a> {
    fn acquire(file: &'a std::fs::File) -> std::io::Result<FileLock<'a>> {
        use std::os::fd::AsRawFd;
        loop {
            // SAFETY: the fd is valid for the life of `file`, which outlives the lock.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(FileLock(file));
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

impl Drop for FileLock<'_> {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: the fd is still open (we borrow the File); unlocking cannot violate memory safety.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_missing_path_names_the_fix() {
        let err = locate(Some(Path::new("/nonexistent/libonnxruntime.so")), Flavor::Cpu).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/libonnxruntime.so") && msg.contains("--ort-lib"), "{msg}");
        assert!(msg.contains("onnxruntime==1.31.1"), "{msg}");
    }
}
