//! ONNX Runtime provisioning as a user meets it, through the real binary with its
//! own cache directory: a tampered cached library is refused with both hashes and
//! the fix; a cache others can write is refused; no HOME means no cache (never
//! /tmp); an explicit library is loaded as given and logged with its hash; and
//! (with TICKINFER_TEST_PROVISION=1, as CI sets it) a fresh cache is provisioned
//! from PyPI with the wheel's and the libraries' hashes checked.
mod util;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tickinfer::engine::runtime::{self, Flavor, ORT_LIB_NAME};

/// The library the other tests use (provisioned by loading an engine once).
fn cached_cpu_dir() -> PathBuf {
    tickinfer::engine::Engine::load(
        &util::repo_root().join("models/lobster_direction.toml"),
        &util::test_engine_options(),
    )
    .expect("engine loads");
    runtime::find_existing(Flavor::Cpu).expect("cached").parent().unwrap().to_path_buf()
}

/// `tickinfer serve` with `env`, until it is ready or exits; returns (ready, log).
fn serve(env: &[(&str, &str)], remove: &[&str], extra: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tickinfer"));
    cmd.arg("serve")
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .arg("--model")
        .arg(util::repo_root().join("models/lobster_direction.toml"))
        .args(["--poll", "block"])
        .args(extra)
        .env("RUST_LOG", "info")
        .env_remove("TICKINFER_ORT_LIB")
        .env_remove("ORT_DYLIB_PATH");
    for k in remove {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let log = dir.path().join("log");
    cmd.stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.path().join("err")).unwrap());
    let mut child = cmd.spawn().unwrap();
    let t0 = std::time::Instant::now();
    let read = || {
        std::fs::read_to_string(&log).unwrap_or_default()
            + &std::fs::read_to_string(dir.path().join("err")).unwrap_or_default()
    };
    loop {
        if read().contains("ready: model") {
            // SAFETY: kill(2) on our child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
            return (true, read());
        }
        if child.try_wait().unwrap().is_some() {
            return (false, read());
        }
        assert!(t0.elapsed().as_secs() < 240, "serve neither started nor failed:\n{}", read());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn copy_cache(from: &Path, to: &Path) -> PathBuf {
    let dir = to.join("onnxruntime-1.31.1-cpu");
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "so") || e.file_name().to_string_lossy().contains(".so.")
        {
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
    }
    for d in [to, &dir] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    dir
}

#[test]
fn a_verified_cache_serves_and_a_tampered_one_is_refused() {
    let real = cached_cpu_dir();
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_cache(&real, tmp.path());
    let cache = tmp.path().to_str().unwrap();
    let offline = [("TICKINFER_CACHE_DIR", cache), ("TICKINFER_OFFLINE", "1")];
    let (ok, log) = serve(&offline, &[], &[]);
    assert!(ok, "a verified copy of the cache serves:\n{log}");
    // One byte changed in the library: refused, naming the path, both hashes and the fix.
    let lib = dir.join(ORT_LIB_NAME);
    let mut bytes = std::fs::read(&lib).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    std::fs::write(&lib, &bytes).unwrap();
    let (ok, log) = serve(&offline, &[], &[]);
    assert!(!ok, "a tampered library was loaded:\n{log}");
    let pin = runtime::pin_for(Flavor::Cpu, std::env::consts::ARCH).unwrap();
    let actual = runtime::sha256_file(&lib).unwrap();
    assert!(
        log.contains(lib.to_str().unwrap()) && log.contains(pin.libs[0].1) && log.contains(&actual),
        "{log}"
    );
    assert!(log.contains("delete") && log.contains("TICKINFER_ORT_LIB"), "{log}");
    // The operator's explicit choice is loaded as given, with its hash in the log.
    let (ok, log) = serve(&[("TICKINFER_ORT_LIB", real.join(ORT_LIB_NAME).to_str().unwrap())], &[], &[]);
    assert!(
        ok && log.contains("loaded as given")
            && log.contains(&runtime::sha256_file(&real.join(ORT_LIB_NAME)).unwrap()),
        "{log}"
    );
}

#[test]
fn a_cache_others_can_write_is_refused_and_no_home_is_no_cache() {
    let real = cached_cpu_dir();
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_cache(&real, tmp.path());
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (ok, log) =
        serve(&[("TICKINFER_CACHE_DIR", tmp.path().to_str().unwrap()), ("TICKINFER_OFFLINE", "1")], &[], &[]);
    assert!(
        !ok && log.contains("writable by group or others") && log.contains(dir.to_str().unwrap()),
        "{log}"
    );
    let (ok, log) = serve(&[], &["HOME", "XDG_CACHE_HOME", "TICKINFER_CACHE_DIR"], &[]);
    assert!(!ok && log.contains("TICKINFER_CACHE_DIR") && log.contains("never falls back"), "{log}");
}

#[test]
fn a_fresh_cache_is_provisioned_from_the_pinned_wheel() {
    if std::env::var_os("TICKINFER_TEST_PROVISION").is_none() {
        util::skip(
            "a_fresh_cache_is_provisioned_from_the_pinned_wheel",
            "downloads from PyPI; set TICKINFER_TEST_PROVISION=1 (CI does)",
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let (ok, log) = serve(&[("TICKINFER_CACHE_DIR", cache.to_str().unwrap())], &["TICKINFER_OFFLINE"], &[]);
    assert!(ok && log.contains("SHA-256 checked"), "{log}");
    let dir = cache.join("onnxruntime-1.31.1-cpu");
    let pin = runtime::pin_for(Flavor::Cpu, std::env::consts::ARCH).unwrap();
    for (name, hash) in pin.libs {
        assert_eq!(runtime::sha256_file(&dir.join(name)).unwrap(), *hash, "{name}");
    }
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode(&cache), mode(&dir)), (0o700, 0o700), "created owner-only");
    assert!(!std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with(".download")));
}
