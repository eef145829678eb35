//! Helpers shared by the integration tests: the real server and a Rust client
//! (`server`), running the binary as another uid (`other_uid`), Parquet files read back
//! (`parquet`), parity fixtures, and a
//! C/C++ compiler driver.
#![allow(dead_code)]

pub mod other_uid;
pub mod parquet;
pub mod server;

use std::path::{Path, PathBuf};
use std::process::Command;

use tickinfer::wire::{self, MlRequest};

/// Repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Compile C (`lang = "c"`, `-std=c11`) or C++ (`"c++"`, `-std=c++20`) sources
/// against `proto/` with warnings as errors. Panics with the compiler's output.
pub fn compile(lang: &str, sources: &[&Path], out: &Path) {
    let (cc, std) = match lang {
        "c" => (std::env::var("CC").unwrap_or_else(|_| "cc".into()), "-std=c11"),
        _ => (std::env::var("CXX").unwrap_or_else(|_| "c++".into()), "-std=c++20"),
    };
    let output = Command::new(&cc)
        .args([std, "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic", "-I"])
        .arg(repo_root().join("proto"))
        .args(sources)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cc}: {e} (install gcc/g++)"));
    assert!(
        output.status.success(),
        "{cc} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Run a program to completion; its stdout. Panics with stdout and stderr if it failed.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A parity fixture written by `scripts/make_fixtures.py`.
pub struct ParityCase {
    pub request: MlRequest,
    pub input: Vec<f32>,
    pub output: Vec<f32>,
    pub direction: i8,
    pub confidence: u8,
    pub target_price: i64,
}

/// Load `tests/fixtures/parity/<name>.json`.
pub fn parity_cases(name: &str) -> Vec<ParityCase> {
    let path = repo_root().join(format!("tests/fixtures/parity/{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let floats = |v: &serde_json::Value| -> Vec<f32> {
        v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
    };
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let r = &c["request"];
            let int = |k: &str| r[k].as_i64().unwrap();
            let extras = floats(&r["features"]);
            let mut req = MlRequest {
                symbol_id: int("symbol_id") as u16,
                request_id: int("request_id") as u64,
                bid_price: int("bid_price"),
                ask_price: int("ask_price"),
                bid_size: int("bid_size"),
                ask_size: int("ask_size"),
                book_imbalance: int("book_imbalance"),
                n_features: extras.len() as u16,
                ..MlRequest::new()
            };
            let mut f = [0f32; wire::MAX_FEATURES];
            f[..extras.len()].copy_from_slice(&extras);
            req.features = f;
            ParityCase {
                request: req,
                input: floats(&c["input"]),
                output: floats(&c["output"]),
                direction: c["direction"].as_i64().unwrap() as i8,
                confidence: c["confidence"].as_i64().unwrap() as u8,
                target_price: c["target_price"].as_i64().unwrap(),
            }
        })
        .collect()
}

/// Engine options for tests: few warm-up runs, small max batch.
pub fn test_engine_options() -> tickinfer::engine::EngineOptions {
    tickinfer::engine::EngineOptions { warmup_runs: 2, max_batch: 16, ..Default::default() }
}

/// xorshift64*: a tiny deterministic generator for tests (no `rand` dependency).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform-ish in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

/// Say that a test skipped and why, on stderr directly (not `eprintln!`, which libtest
/// captures), so the skip is always visible.
pub fn skip(test: &str, why: &str) {
    let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("skipped: {test}: {why}\n").as_bytes());
}

/// Event `i` of a market stream for `symbol` (prices wander over 13 ticks, sizes cycle,
/// time moves 0.25 ms per event): stateful tests feed it to the engine and the server.
pub fn stream_request(i: u64, symbol: u16) -> MlRequest {
    let step = ((i * 7919) % 13) as i64 * 100;
    MlRequest {
        timestamp_ns: 1_000_000_000 + 250_000 * i,
        symbol_id: symbol,
        bid_price: 2_230_000 + step,
        ask_price: 2_230_100 + step + (i % 3) as i64 * 100,
        bid_size: 100 + (i % 7) as i64 * 50,
        ask_size: 100 + (i % 5) as i64 * 60,
        request_id: i,
        ..MlRequest::new()
    }
}

/// Whether this process runs as root (tests that act as another uid need it; they say
/// `skipped` otherwise).
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// In a forked child running as `uid` (and gid `uid`), open `connections` connections to the
/// Unix socket at `path`, send each `first_bytes` (if any), keep them open `hold`, then read
/// what each was sent; the child's exit status is how many were sent something containing
/// `expect` (at most 100). Waits for the child. `None` when this process is not root.
/// The child makes only raw system calls (the fork of a threaded process allows no more).
pub fn connections_as(
    uid: u32,
    path: &Path,
    connections: usize,
    first_bytes: &[u8],
    hold: std::time::Duration,
    expect: &[u8],
) -> Option<i32> {
    if !is_root() {
        return None;
    }
    assert!(connections <= 100);
    // SAFETY: sockaddr_un is plain data; zeroed is a valid empty address.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    assert!(bytes.len() < addr.sun_path.len());
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let pause = libc::timespec { tv_sec: hold.as_secs() as libc::time_t, tv_nsec: hold.subsec_nanos() as _ };
    // SAFETY: fork in a test process; the child below only makes async-signal-safe system calls
    // on memory prepared before the fork, and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: the child: plain system calls on stack memory, then _exit.
        unsafe {
            if libc::setgid(uid) != 0 || libc::setuid(uid) != 0 {
                libc::_exit(101);
            }
            let mut fds = [-1i32; 100];
            for fd in fds.iter_mut().take(connections) {
                *fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
                if libc::connect(*fd, (&addr as *const libc::sockaddr_un).cast(), len) != 0 {
                    libc::_exit(102);
                }
                if !first_bytes.is_empty() {
                    libc::write(*fd, first_bytes.as_ptr().cast(), first_bytes.len());
                }
            }
            libc::nanosleep(&pause, std::ptr::null_mut());
            let mut matched = 0;
            let mut buf = [0u8; 512];
            for &fd in fds.iter().take(connections) {
                let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT);
                if n > 0 && buf[..n as usize].windows(expect.len().max(1)).any(|w| w == expect) {
                    matched += 1;
                }
            }
            libc::_exit(matched);
        }
    }
    let mut status = 0;
    // SAFETY: waitpid on our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    Some(if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 })
}
