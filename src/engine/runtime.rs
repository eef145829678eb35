//! Provisioning of the ONNX Runtime shared library (`load-dynamic`).
//!
//! The library is code this process loads and runs, so nothing is loaded from
//! the cache unless it is, byte for byte, what tickinfer pinned.
//!
//! Search order, first hit wins:
//! 1. an explicit path (`--ort-lib`), which must exist: the operator's choice,
//!    loaded as given and logged with its SHA-256;
//! 2. `$TICKINFER_ORT_LIB`, then `$ORT_DYLIB_PATH`, likewise;
//! 3. the cache: `$TICKINFER_CACHE_DIR` or `$XDG_CACHE_HOME/tickinfer` or
//!    `$HOME/.cache/tickinfer` (no fallback into a shared directory such as
//!    `/tmp` when none is set), under `onnxruntime-1.31.1-{cpu,gpu}/`. The cache
//!    directories must be owned by this process's user and not writable by group
//!    or others; every pinned library in it is checked against its SHA-256
//!    ([`PINS`]) before each load;
//! 4. provisioning into that cache: `python3 -m pip download --no-deps
//!    --only-binary :all: --require-hashes` of the pinned wheel (`onnxruntime` or
//!    `onnxruntime-gpu` 1.31.1, cp312, manylinux_2_28, for this machine's
//!    architecture, whatever Python runs pip), its SHA-256 checked again, then the
//!    pinned libraries extracted, each checked before it is renamed into place.
//!    Needs PyPI once; offline afterwards. `TICKINFER_OFFLINE=1` forbids the
//!    download.
//!
//! Concurrent provisioners (parallel tests) serialise on a `flock`; the lock
//! and temporary files are opened without following symlinks (temporary ones
//! exclusively), and the main library is published last with an atomic rename,
//! so a half-written file is never loaded. A hot reload never provisions: the
//! runtime is loaded once per process.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

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

/// One pinned wheel: the file pip must download and the libraries taken from it.
#[derive(Debug)]
pub struct Pin {
    pub flavor: Flavor,
    /// `std::env::consts::ARCH`.
    pub arch: &'static str,
    /// The wheel's file name (its tags say which platform pip is asked for).
    pub wheel: &'static str,
    pub wheel_sha256: &'static str,
    /// `onnxruntime/capi/<name>` in the wheel → its SHA-256. The main library is listed first.
    pub libs: &'static [(&'static str, &'static str)],
}

/// Every wheel tickinfer fetches, with the SHA-256 of the wheel and of each library it
/// extracts (read off the PyPI wheels of onnxruntime 1.31.1; `onnxruntime-gpu` has no
/// aarch64 wheel).
pub const PINS: &[Pin] = &[
    Pin {
        flavor: Flavor::Cpu,
        arch: "x86_64",
        wheel: "onnxruntime-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl",
        wheel_sha256: "1f3dea47f2f0e5117c2404cea7d21fd253ae7836a3bf167a501cdfbb2600d536",
        libs: &[
            ("libonnxruntime.so.1.31.1", "fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3"),
            (
                "libonnxruntime_providers_shared.so",
                "086ec1d5388f64153d9c63470d126693db9a182c8ce236d3a1119068471b8a0d",
            ),
        ],
    },
    Pin {
        flavor: Flavor::Cpu,
        arch: "aarch64",
        wheel: "onnxruntime-1.31.1-cp312-cp312-manylinux_2_28_aarch64.whl",
        wheel_sha256: "0b9a492176886992e0e875f06bc0367e333f5fff11711a2d642e18b02f3009cc",
        libs: &[
            ("libonnxruntime.so.1.31.1", "8aa3b76b28c778a2b1dd660d34161adb1d508c9ccd04ff9dc80e26eca5df8467"),
            (
                "libonnxruntime_providers_shared.so",
                "3b6be288fbfb7dff8770d08a23defdde18e8f7e0f5a2b344a0e5e238c999ea88",
            ),
        ],
    },
    Pin {
        flavor: Flavor::Gpu,
        arch: "x86_64",
        wheel: "onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl",
        wheel_sha256: "05d548956197b9d01f59b625de740e0d6be3593f874e241a12dc0362650ecdf7",
        libs: &[
            ("libonnxruntime.so.1.31.1", "5104254339ecadae808da771bd0b63b240f0dbd466514234905e54372435c303"),
            (
                "libonnxruntime_providers_shared.so",
                "086ec1d5388f64153d9c63470d126693db9a182c8ce236d3a1119068471b8a0d",
            ),
            (
                "libonnxruntime_providers_cuda.so",
                "8387867e857499e045caff5d13ac6a5de29571c801562fa2dde0e45f1f31de52",
            ),
            (
                "libonnxruntime_providers_tensorrt.so",
                "1882ee49fdb0e6fc2d272b00cfaf9a3310bf8580a34385c0eec4d82014ea172e",
            ),
        ],
    },
];

/// The pin for this machine, if tickinfer has one.
pub fn pin_for(flavor: Flavor, arch: &str) -> Option<&'static Pin> {
    PINS.iter().find(|p| p.flavor == flavor && p.arch == arch)
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
    #[error(
        "no cache directory: none of TICKINFER_CACHE_DIR, XDG_CACHE_HOME or HOME is set. Fix: set \
             TICKINFER_CACHE_DIR to a directory owned by this user (tickinfer never falls back to a shared \
             directory such as /tmp), or set TICKINFER_ORT_LIB=/path/to/{ORT_LIB_NAME}"
    )]
    NoCacheDir,
    #[error("refusing cache directory {path}: {why}. Fix: `chown $(id -u) {path} && chmod go-w {path}`, or point \
             TICKINFER_CACHE_DIR at a directory only this user can write")]
    UnsafeCache { path: PathBuf, why: String },
    #[error("refusing to load {path}: its SHA-256 is {actual}, expected {expected} (ONNX Runtime {ORT_VERSION} as \
             pinned by tickinfer). Fix: delete {dir} and run again to provision it afresh, or set \
             TICKINFER_ORT_LIB to a library you trust")]
    HashMismatch { path: PathBuf, dir: PathBuf, expected: &'static str, actual: String },
    #[error(
        "tickinfer pins no {package} {ORT_VERSION} wheel for {arch}. Fix: set TICKINFER_ORT_LIB=/path/to/\
             {ORT_LIB_NAME} (loaded as given)"
    )]
    Unpinned { package: &'static str, arch: String },
}

/// The cache directory (not created): `$TICKINFER_CACHE_DIR`, `$XDG_CACHE_HOME/tickinfer`,
/// `$HOME/.cache/tickinfer`; an error when none is set.
pub fn cache_dir() -> Result<PathBuf, ProvisionError> {
    cache_dir_from(|k| std::env::var_os(k))
}

fn cache_dir_from(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Result<PathBuf, ProvisionError> {
    let set = |k: &str| var(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(d) = set("TICKINFER_CACHE_DIR") {
        return Ok(d);
    }
    if let Some(d) = set("XDG_CACHE_HOME") {
        return Ok(d.join("tickinfer"));
    }
    set("HOME").map(|h| h.join(".cache").join("tickinfer")).ok_or(ProvisionError::NoCacheDir)
}

/// The library that would be loaded, without provisioning or verifying: the env vars, then the cache.
pub fn find_existing(flavor: Flavor) -> Option<PathBuf> {
    for var in ["TICKINFER_ORT_LIB", "ORT_DYLIB_PATH"] {
        if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(p)).filter(|p| p.is_file());
        }
    }
    Some(cache_dir().ok()?.join(flavor.dir_name()).join(ORT_LIB_NAME)).filter(|p| p.is_file())
}

/// SHA-256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf)? {
            0 => break,
            n => h.update(&buf[..n]),
        }
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Find the runtime library, provisioning it into the cache if needed; a cached
/// library is loaded only if it matches its pinned SHA-256.
pub fn locate(explicit: Option<&Path>, flavor: Flavor) -> Result<PathBuf, ProvisionError> {
    let operators = |path: PathBuf, source_name: &str| {
        if !path.is_file() {
            return Err(ProvisionError::Missing {
                path,
                source_name: source_name.into(),
                package: flavor.package(),
            });
        }
        match sha256_file(&path) {
            Ok(h) => log::info!(
                "ONNX Runtime from {source_name}: {} (sha256 {h}), loaded as given",
                path.display()
            ),
            Err(e) => log::warn!("ONNX Runtime from {source_name}: {} (cannot hash it: {e})", path.display()),
        }
        Ok(path)
    };
    if let Some(p) = explicit {
        return operators(p.to_path_buf(), "--ort-lib");
    }
    for var in ["TICKINFER_ORT_LIB", "ORT_DYLIB_PATH"] {
        if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
            return operators(PathBuf::from(p), &format!("${var}"));
        }
    }
    let arch = std::env::consts::ARCH;
    let pin = pin_for(flavor, arch)
        .ok_or_else(|| ProvisionError::Unpinned { package: flavor.package(), arch: arch.into() })?;
    let root = cache_dir()?;
    let dir = root.join(flavor.dir_name());
    let lib = dir.join(ORT_LIB_NAME);
    if lib.is_file() {
        check_cache_dirs(&root, &dir)?;
        verify_cached(&dir, pin)?;
        return Ok(lib);
    }
    if std::env::var_os("TICKINFER_OFFLINE").is_some_and(|v| !v.is_empty() && v != "0") {
        return Err(ProvisionError::Offline { cache: dir });
    }
    provision(&root, &dir, pin)?;
    verify_cached(&dir, pin)?;
    Ok(lib)
}

/// Create (0700) or check a cache directory: owned by this user, not group/world
/// writable, and not a symlink.
fn check_owned_dir(path: &Path) -> Result<(), ProvisionError> {
    let cache_err = |source| ProvisionError::Cache { path: path.to_path_buf(), source };
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(cache_err)?;
        }
        Err(e) => return Err(cache_err(e)),
        Ok(_) => {}
    }
    let meta = std::fs::symlink_metadata(path).map_err(cache_err)?;
    let unsafe_dir = |why: String| ProvisionError::UnsafeCache { path: path.to_path_buf(), why };
    if !meta.is_dir() {
        return Err(unsafe_dir("not a directory (a symlink or a file)".into()));
    }
    let me = crate::sys::geteuid();
    if meta.uid() != me {
        return Err(unsafe_dir(format!("owned by uid {}, not this process's uid {me}", meta.uid())));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_dir(format!("writable by group or others (mode {:o})", meta.mode() & 0o777)));
    }
    Ok(())
}

fn check_cache_dirs(root: &Path, dir: &Path) -> Result<(), ProvisionError> {
    check_owned_dir(root)?;
    check_owned_dir(dir)
}

/// Every pinned library in `dir` must match its SHA-256.
fn verify_cached(dir: &Path, pin: &Pin) -> Result<(), ProvisionError> {
    for (name, expected) in pin.libs {
        let path = dir.join(name);
        let actual =
            sha256_file(&path).map_err(|source| ProvisionError::Cache { path: path.clone(), source })?;
        if actual != *expected {
            return Err(ProvisionError::HashMismatch { path, dir: dir.to_path_buf(), expected, actual });
        }
    }
    Ok(())
}

fn provision(root: &Path, dir: &Path, pin: &'static Pin) -> Result<(), ProvisionError> {
    check_cache_dirs(root, dir)?;
    let cache_err = |source| ProvisionError::Cache { path: dir.to_path_buf(), source };
    // The lock file persists between runs: never through a symlink, never readable by others.
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir.join(".lock"))
        .map_err(cache_err)?;
    let _guard = FileLock::acquire(&lock).map_err(cache_err)?;
    if dir.join(ORT_LIB_NAME).is_file() {
        return Ok(()); // another process finished while we waited (verified by the caller)
    }
    let download = dir.join(format!(".download-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&download); // ours from a crashed run: the directory is ours alone
    std::fs::DirBuilder::new().mode(0o700).create(&download).map_err(cache_err)?;
    let result = download_and_extract(&download, dir, pin);
    let _ = std::fs::remove_dir_all(&download);
    result
}

/// The `--platform` tags of a pinned wheel's file name (`manylinux_2_28_x86_64`), so pip
/// picks exactly that file whatever Python runs it.
fn wheel_platform(wheel: &str) -> &str {
    wheel.trim_end_matches(".whl").rsplit('-').next().unwrap_or_default()
}

fn download_and_extract(download: &Path, dir: &Path, pin: &'static Pin) -> Result<(), ProvisionError> {
    let package = pin.flavor.package();
    let python = std::env::var("TICKINFER_PYTHON").unwrap_or_else(|_| "python3".into());
    let spec = format!("{package}=={ORT_VERSION}");
    let fail = |reason: String| ProvisionError::Download { reason, package };
    log::warn!(
        "ONNX Runtime {ORT_VERSION} not cached: fetching the pinned `{}` with {python} -m pip into {}",
        pin.wheel,
        dir.display()
    );
    // pip checks the hash (--require-hashes takes it from a requirements file).
    let requirements = download.join("requirements.txt");
    write_new(&requirements, format!("{spec} --hash=sha256:{}\n", pin.wheel_sha256).as_bytes())
        .map_err(|e| fail(format!("cannot write {}: {e}", requirements.display())))?;
    let out = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes"])
        .args(["--disable-pip-version-check", "-q", "--python-version", "3.12", "--implementation", "cp"])
        .args(["--platform", wheel_platform(pin.wheel), "-d"])
        .arg(download)
        .arg("-r")
        .arg(&requirements)
        .output()
        .map_err(|e| fail(format!("cannot run `{python}`: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(fail(format!("`{python} -m pip download {spec}` failed: {}", stderr.trim())));
    }
    let wheel = download.join(pin.wheel);
    // And again here: what is extracted is exactly the pinned wheel.
    let actual =
        sha256_file(&wheel).map_err(|e| fail(format!("pip did not leave {}: {e}", wheel.display())))?;
    if actual != pin.wheel_sha256 {
        return Err(fail(format!(
            "{} has SHA-256 {actual}, expected {} (refusing to extract it)",
            wheel.display(),
            pin.wheel_sha256
        )));
    }
    extract_libs(&wheel, dir, pin).map_err(|e| fail(format!("cannot extract {}: {e}", wheel.display())))?;
    log::warn!(
        "ONNX Runtime {ORT_VERSION}: extracted {} libraries from {} (SHA-256 checked) into {}",
        pin.libs.len(),
        pin.wheel,
        dir.display()
    );
    Ok(())
}

/// Create `path` exclusively (never through a symlink, never over a file) and write `bytes`.
fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Extract the pinned libraries from `onnxruntime/capi/` of the wheel into `dir`, each
/// checked against its SHA-256 before it is renamed into place; the main library last
/// (its presence marks the cache complete).
fn extract_libs(wheel: &Path, dir: &Path, pin: &Pin) -> std::io::Result<()> {
    let file = std::fs::File::open(wheel)?;
    let mut zip = zip::ZipArchive::new(file).map_err(std::io::Error::other)?;
    let mut libs: Vec<&(&str, &str)> = pin.libs.iter().collect();
    libs.sort_by_key(|(name, _)| *name == ORT_LIB_NAME);
    for (name, expected) in libs {
        let mut entry = zip
            .by_name(&format!("onnxruntime/capi/{name}"))
            .map_err(|e| std::io::Error::other(format!("{name}: {e}")))?;
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes)?;
        let actual = format!("{:x}", Sha256::digest(&bytes));
        if actual != *expected {
            return Err(std::io::Error::other(format!("{name} has SHA-256 {actual}, expected {expected}")));
        }
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp); // a leftover of ours; remove_file never follows a symlink
        write_new(&tmp, &bytes)?;
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        std::fs::rename(&tmp, dir.join(name))?;
    }
    Ok(())
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
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn explicit_missing_path_names_the_fix() {
        let err = locate(Some(Path::new("/nonexistent/libonnxruntime.so")), Flavor::Cpu).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/libonnxruntime.so") && msg.contains("--ort-lib"), "{msg}");
        assert!(msg.contains("onnxruntime==1.31.1"), "{msg}");
    }

    #[test]
    fn no_cache_dir_without_home_and_never_tmp() {
        let none = |_: &str| None;
        let e = cache_dir_from(none).unwrap_err().to_string();
        assert!(e.contains("TICKINFER_CACHE_DIR") && e.contains("/tmp"), "{e}");
        let home = |k: &str| (k == "HOME").then(|| "/home/q".into());
        assert_eq!(cache_dir_from(home).unwrap(), PathBuf::from("/home/q/.cache/tickinfer"));
        let both = |k: &str| match k {
            "HOME" => Some("/home/q".into()),
            "TICKINFER_CACHE_DIR" => Some("/srv/ort".into()),
            _ => None,
        };
        assert_eq!(cache_dir_from(both).unwrap(), PathBuf::from("/srv/ort"));
    }

    #[test]
    fn every_flavor_and_arch_we_ship_is_pinned_with_its_main_library() {
        for (flavor, arch) in [(Flavor::Cpu, "x86_64"), (Flavor::Cpu, "aarch64"), (Flavor::Gpu, "x86_64")] {
            let pin = pin_for(flavor, arch).unwrap();
            assert!(pin.wheel.contains(ORT_VERSION) && pin.wheel.ends_with(&format!("{arch}.whl")));
            assert_eq!(pin.libs[0].0, ORT_LIB_NAME);
            for (_, h) in pin.libs.iter().chain([&("wheel", pin.wheel_sha256)]) {
                assert!(h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()), "{h}");
            }
            assert_eq!(wheel_platform(pin.wheel), format!("manylinux_2_28_{arch}"));
        }
        let e = ProvisionError::Unpinned { package: "onnxruntime-gpu", arch: "riscv64".into() }.to_string();
        assert!(e.contains("TICKINFER_ORT_LIB"), "{e}");
    }

    /// A fake pin over files we write: verification names the path, both hashes and the fix.
    #[test]
    fn a_cached_library_that_does_not_match_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("libfake.so"), b"the real bytes").unwrap();
        let good = format!("{:x}", Sha256::digest(b"the real bytes"));
        let good: &'static str = Box::leak(good.into_boxed_str());
        let libs: &'static [(&str, &str)] = Box::leak(vec![("libfake.so", good)].into_boxed_slice());
        let pin = Pin { flavor: Flavor::Cpu, arch: "x86_64", wheel: "w.whl", wheel_sha256: good, libs };
        verify_cached(dir.path(), &pin).unwrap();
        std::fs::write(dir.path().join("libfake.so"), b"the real bytez").unwrap();
        let e = verify_cached(dir.path(), &pin).unwrap_err().to_string();
        let actual = format!("{:x}", Sha256::digest(b"the real bytez"));
        assert!(e.contains("libfake.so") && e.contains(good) && e.contains(&actual), "{e}");
        assert!(e.contains("delete") && e.contains("TICKINFER_ORT_LIB"), "{e}");
    }

    #[test]
    fn a_cache_dir_others_can_write_or_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        check_owned_dir(&cache).unwrap();
        assert_eq!(std::fs::metadata(&cache).unwrap().mode() & 0o777, 0o700, "created owner-only");
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o775)).unwrap();
        let e = check_owned_dir(&cache).unwrap_err().to_string();
        assert!(e.contains(cache.to_str().unwrap()) && e.contains("writable by group or others"), "{e}");
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o755)).unwrap();
        check_owned_dir(&cache).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&cache, &link).unwrap();
        let e = check_owned_dir(&link).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
        // Owned by someone else (only checkable as root: chown needs it).
        if crate::sys::geteuid() == 0 {
            let other = dir.path().join("other");
            std::fs::create_dir(&other).unwrap();
            std::os::unix::fs::chown(&other, Some(65534), None).unwrap();
            let e = check_owned_dir(&other).unwrap_err().to_string();
            assert!(e.contains("owned by uid 65534"), "{e}");
        }
    }

    #[test]
    fn temporary_files_are_exclusive_and_never_follow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("victim");
        std::fs::write(&target, b"keep").unwrap();
        let link = dir.path().join("tmp");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(write_new(&link, b"evil").is_err());
        assert!(write_new(&target, b"evil").is_err(), "never over an existing file");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }
}
