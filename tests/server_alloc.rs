//! Zero heap allocations on the serving threads in steady state: the whole server loop,
//! not the engine alone — reading, decoding, admitting, scoring (native with every answer
//! sampled for the live verifier, or ONNX Runtime), routing and writing — over a Unix
//! socket, over TCP and over shared memory, in inline and pipeline mode, with a shadow
//! candidate attached (each request copied into its ring on the counted path).
//!
//! The server runs in this process (`replay::LocalServer`); a global allocator counts the
//! allocations made by its hot threads, found by name (`tickinfer-server`: the inline or
//! I/O thread; `tickinfer-worker`: the pipeline's inference thread). Connections are
//! opened and warmed before counting (a connection's buffers are allocated when it is
//! accepted). Scope as `engine_alloc`: Rust heap allocations; ONNX Runtime's arena is not
//! seen.
mod util;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tickinfer::replay::LocalServer;
use tickinfer::server::{Mode, PollMode, ServeOptions};
use tickinfer::shm::ShmClient;
use util::server::{request, Client};

/// Thread ids whose allocations are counted (0: free slot).
static HOT: [AtomicI64; 8] = [const { AtomicI64::new(0) }; 8];
static COUNTING: AtomicBool = AtomicBool::new(false);
static COUNT: AtomicU64 = AtomicU64::new(0);

struct Counting;

fn count_if_hot() {
    // Relaxed: a test counter; the client thread flips COUNTING around its traffic.
    if COUNTING.load(Ordering::Relaxed) {
        // SAFETY: gettid has no preconditions and allocates nothing.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) };
        if HOT.iter().any(|h| h.load(Ordering::Relaxed) == tid) {
            COUNT.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// SAFETY: forwards every call to the system allocator unchanged; the counters are atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_if_hot();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_if_hot();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Ids of this process's threads named `name` (as `/proc` shows it, 15 bytes at most).
fn threads_named(name: &str) -> Vec<i64> {
    let short: String = name.chars().take(15).collect();
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            (comm.trim() == short).then(|| e.file_name().to_string_lossy().parse().ok())?
        })
        .collect()
}

/// Allocations by the hot threads while `f` runs.
fn hot_allocations_during(f: impl FnOnce()) -> u64 {
    COUNT.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    f();
    COUNTING.store(false, Ordering::Relaxed);
    COUNT.load(Ordering::Relaxed)
}

fn start(mode: Mode, backend: &str, scratch: &std::path::Path) -> (LocalServer, std::net::SocketAddr) {
    let model = util::repo_root().join("models/lobster_direction.toml");
    // A free loopback port for --listen-tcp (bound, released, bound again by the server).
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    // The same model as a shadow, under another name.
    let onnx = util::repo_root().join("models/lobster_direction.onnx");
    let shadow = scratch.join("shadow.toml");
    let text = std::fs::read_to_string(&model)
        .unwrap()
        .replacen("name = \"lobster_direction\"", "name = \"shadow\"", 1)
        .replace("onnx = \"lobster_direction.onnx\"", &format!("onnx = \"{}\"", onnx.display()));
    std::fs::write(&shadow, text).unwrap();
    let opts = ServeOptions {
        listen_tcp: Some(tcp),
        model: Some(model),
        socket: Some("unused.sock".into()),
        mode: Some(mode),
        poll: Some(PollMode::Adaptive),
        backend: Some(if backend == "native" {
            tickinfer::manifest::Backend::Native
        } else {
            tickinfer::manifest::Backend::Ort
        }),
        // Every native answer sampled: the verifier's tap is on the counted path.
        verify_every: Some(1),
        shadows: Some(vec![shadow]),
        ..Default::default()
    };
    let server = LocalServer::start(opts.resolve().unwrap()).unwrap();
    let t0 = std::time::Instant::now();
    while server.shadows().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(60), "the shadow was never attached");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Threads started from these inherit their names (ONNX Runtime's own, which allocate
    // through malloc, not Rust's allocator): counted too, harmlessly.
    let mut hot = threads_named("tickinfer-server");
    let workers = threads_named("tickinfer-worker");
    assert!(
        !hot.is_empty() && (mode == Mode::Inline || !workers.is_empty()),
        "hot threads {hot:?} {workers:?}"
    );
    hot.extend(workers);
    assert!(hot.len() <= HOT.len(), "hot threads {hot:?}");
    for (slot, tid) in HOT.iter().zip(hot.iter().chain(std::iter::repeat(&0))) {
        slot.store(*tid, Ordering::Relaxed);
    }
    (server, tcp)
}

/// `n` requests pipelined 32 at a time on one socket (Unix or TCP) connection, answers checked.
fn socket_traffic<S: std::io::Read + std::io::Write>(c: &mut Client<S>, first: u64, n: u64) {
    for window in (first..first + n).collect::<Vec<_>>().chunks(32) {
        let reqs: Vec<_> = window.iter().map(|&i| request(i)).collect();
        c.send(&reqs).unwrap();
        for r in &reqs {
            let resp = c.recv().unwrap();
            assert_eq!(({ resp.request_id }, resp.status), (r.request_id, 0));
        }
    }
}

/// `n` requests through shared memory, 16 in flight, answers checked.
fn shm_traffic(c: &mut ShmClient, first: u64, n: u64) {
    let t = Duration::from_secs(20);
    for window in (first..first + n).collect::<Vec<_>>().chunks(16) {
        for &i in window {
            c.send(&request(i), t).unwrap();
        }
        for &i in window {
            let resp = c.recv_spin(t).unwrap();
            assert_eq!(({ resp.request_id }, resp.status), (i, 0));
        }
    }
}

#[test]
fn the_serving_threads_allocate_nothing_per_request() {
    let _ = env_logger::builder().is_test(true).try_init();
    for mode in [Mode::Inline, Mode::Pipeline] {
        for backend in ["native", "ort"] {
            let scratch = tempfile::tempdir().unwrap();
            let (server, tcp_addr) = start(mode, backend, scratch.path());
            assert!(server.model.backend.starts_with(backend), "{}", server.model.backend);
            let what = format!("{mode:?} mode, {backend}");

            let mut socket = Client::connect(&server.socket).unwrap();
            socket_traffic(&mut socket, 0, 2_000);
            // The counter sees the hot threads: a new connection allocates its buffers there.
            let n = hot_allocations_during(|| drop(Client::connect(&server.socket).unwrap()));
            assert!(n > 0, "{what}: accepting a connection allocated nothing on the hot threads?");
            let n = hot_allocations_during(|| socket_traffic(&mut socket, 2_000, 20_000));
            assert_eq!(n, 0, "{what}, socket: the hot threads allocated {n} times in 20 000 requests");

            let mut tcp = Client::connect_tcp(tcp_addr).unwrap();
            socket_traffic(&mut tcp, 50_000, 2_000);
            let n = hot_allocations_during(|| socket_traffic(&mut tcp, 60_000, 20_000));
            assert_eq!(n, 0, "{what}, TCP: the hot threads allocated {n} times in 20 000 requests");

            let (mut shm, _) = ShmClient::connect(&server.socket, Duration::from_secs(20)).unwrap();
            shm_traffic(&mut shm, 30_000, 2_000);
            let n = hot_allocations_during(|| shm_traffic(&mut shm, 40_000, 20_000));
            assert_eq!(n, 0, "{what}, shared memory: the hot threads allocated {n} times in 20 000 requests");

            // Every request reached the shadow's ring (scored, or dropped when it was behind).
            let t0 = std::time::Instant::now();
            loop {
                let s = server.shadows().pop().unwrap();
                if s.scored + s.dropped == 66_000 {
                    break;
                }
                assert!(t0.elapsed() < Duration::from_secs(60), "{what}: the shadow saw {s:?}");
                std::thread::sleep(Duration::from_millis(50));
            }
            let stats = server.stop().unwrap();
            if backend == "native" {
                assert!(stats.responses >= 66_000, "{what}: {}", stats.responses);
            }
        }
    }
}
