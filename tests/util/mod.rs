//! Helpers shared by the integration tests: a protocol-speaking test server and
//! a C/C++ compiler driver.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tickinfer::clock::now_ns;
use tickinfer::wire::{
    self, Decoder, Frame, Limits, MlHelloAck, MlRequest, MlResponse, ServerInfo, Status, RESPONSE_END,
};

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

/// The toy scoring rule of the test server: direction from the book imbalance,
/// confidence from its size, target price = mid. Tests predict responses with it.
pub fn toy_score(req: &MlRequest) -> (i8, u8, i64) {
    let imb = req.book_imbalance;
    let direction = if imb > 100_000 {
        1
    } else if imb < -100_000 {
        -1
    } else {
        0
    };
    let confidence = (imb.unsigned_abs() / 10_000).min(100) as u8;
    let mid = (req.bid_price + req.ask_price) / 2;
    (direction, confidence, mid)
}

/// A thread-per-connection server that speaks the tickinfer protocol with the
/// toy rule. Stands in for the real server in the client-library tests.
pub struct TestServer {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
    stop: Arc<AtomicBool>,
    pub answered: Arc<AtomicU64>,
    accept: Option<JoinHandle<()>>,
}

impl TestServer {
    pub fn start(limits: Limits) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let (stop2, answered2) = (stop.clone(), answered.clone());
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Acquire) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (limits, answered) = (limits.clone(), answered2.clone());
                std::thread::spawn(move || serve_conn(conn, &limits, &answered));
            }
        });
        TestServer { path, _dir: dir, stop, answered, accept: Some(accept) }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = UnixStream::connect(&self.path); // wake the accept loop
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn serve_conn(mut conn: UnixStream, limits: &Limits, answered: &AtomicU64) {
    conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let info = ServerInfo {
        price_scale: 10_000,
        model_features: limits.model_features.unwrap_or(0),
        max_inflight: 1024,
        model_version: 1,
        model_name: "test-server-toy".into(),
    };
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0;
    let mut out: Vec<u8> = Vec::new();
    loop {
        let n = match conn.read(&mut buf[len..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let recv_ns = now_ns();
        len += n;
        let mut pos = 0;
        out.clear();
        let mut close = false;
        loop {
            match decoder.next(&buf[pos..len]) {
                Ok(None) => break,
                Ok(Some((Frame::Hello(_), used))) => {
                    out.extend_from_slice(bytemuck::bytes_of(&MlHelloAck::new(Status::Ok, &info)));
                    pos += used;
                }
                Ok(Some((Frame::Request(req), used))) => {
                    let status = wire::validate(req, limits);
                    let mut resp = MlResponse::error(req.request_id, req.symbol_id, status, recv_ns);
                    if status == Status::Ok {
                        let (d, c, t) = toy_score(req);
                        resp.direction = d;
                        resp.confidence = c;
                        resp.target_price = t;
                        resp.model_version = 1;
                        resp.batch_size = 1;
                    }
                    resp.server_send_ns = now_ns();
                    debug_assert_eq!({ resp.frame_end }, RESPONSE_END);
                    out.extend_from_slice(bytemuck::bytes_of(&resp));
                    answered.fetch_add(1, Ordering::Relaxed);
                    pos += used;
                }
                Err(e) => {
                    let status = e.status();
                    if decoder.is_open() {
                        out.extend_from_slice(bytemuck::bytes_of(&MlResponse::error(0, 0, status, recv_ns)));
                    } else {
                        out.extend_from_slice(bytemuck::bytes_of(&MlHelloAck::new(status, &info)));
                    }
                    close = true;
                    break;
                }
            }
        }
        buf.copy_within(pos..len, 0);
        len -= pos;
        if conn.write_all(&out).is_err() || close {
            return;
        }
    }
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
