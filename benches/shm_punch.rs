//! A hostile shared-memory client against the others' latency: what one client that
//! punches holes in its own region (`madvise(MADV_REMOVE)`, i.e. `fallocate(PUNCH_HOLE)`)
//! costs another client's round trip and the server's I/O thread.
//!
//! Three processes besides this one: `tickinfer serve` (inline, spinning, its I/O thread
//! pinned), and per phase a third process pinned to the hostile core. This process is
//! the victim: closed-loop shm round trips on its own pinned core. Phases, each
//! `--secs` long: `quiet` (no third process), `control` (a process spinning on the
//! hostile core: the CPU load without the punching), `punching` (a process with its own
//! shm session punching the first page of each region it maps, in a loop). Each row:
//! the victim's round trip p50/p99/p99.9/max, the server I/O thread's minor faults over
//! the phase (`/proc/PID/task/PID/stat`), the hostile process's punches that succeeded
//! and failed per second.
//!
//! `cargo bench --bench shm_punch -- [--secs 5] [--server-core 0] [--victim-core 1]
//! [--hostile-core 1]`; `TICKINFER_BIN` names another server binary. Under
//! `cargo test --benches` it runs each phase for 0.2 s and checks that the victim is
//! answered (no numbers are asserted: speed is measured, never tested).
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tickinfer::shm::ShmClient;
use tickinfer::wire::MlRequest;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn pin(core: usize) {
    core_affinity::set_for_current(core_affinity::CoreId { id: core });
}

fn request(id: u64) -> MlRequest {
    MlRequest {
        symbol_id: 1,
        bid_price: 2_230_000,
        ask_price: 2_230_100,
        bid_size: 300,
        ask_size: 100,
        request_id: id,
        ..MlRequest::new()
    }
}

/// `minflt` of one thread (field 10 of its stat line, after the command's parenthesis).
fn minor_faults(pid: u32, tid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    after.split_whitespace().nth(7).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// The hostile roles, run as this executable again: `--role spin` or `--role punch`.
fn role(args: &[String]) {
    let core: usize = arg(args, "--core").and_then(|c| c.parse().ok()).unwrap_or(0);
    let secs: f64 = arg(args, "--secs").and_then(|c| c.parse().ok()).unwrap_or(1.0);
    pin(core);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    match arg(args, "--role").as_deref() {
        Some("spin") => {
            while Instant::now() < deadline {
                for _ in 0..1024 {
                    std::hint::spin_loop();
                }
            }
            println!("ok 0 failed 0");
        }
        Some("punch") => {
            let socket = arg(args, "--socket").expect("--socket");
            let (client, _) =
                ShmClient::connect(socket.as_ref(), Duration::from_secs(10)).expect("shm session");
            let pages: Vec<*mut u8> = client.raw_regions().into_iter().map(|(base, _)| base).collect();
            let (mut ok, mut failed) = (0u64, 0u64);
            'punching: loop {
                for _ in 0..256 {
                    for &page in &pages {
                        // SAFETY: the first page of a live mapping of ours; MADV_REMOVE frees its
                        // backing (what the hostile client does); nothing in this process reads it.
                        let rc = unsafe { libc::madvise(page.cast(), 4096, libc::MADV_REMOVE) };
                        if rc == 0 {
                            ok += 1;
                        } else {
                            failed += 1;
                        }
                    }
                }
                if Instant::now() >= deadline {
                    break 'punching;
                }
            }
            println!("ok {ok} failed {failed}");
            drop(client);
        }
        other => panic!("unknown role {other:?}"),
    }
}

struct Row {
    phase: &'static str,
    hist: Histogram<u64>,
    faults: u64,
    punches_ok: f64,
    punches_failed: f64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--role") {
        role(&args);
        return;
    }
    let measuring = args.iter().any(|a| a == "--bench");
    let cores = core_affinity::get_core_ids().unwrap_or_default().len().max(1);
    let core = |name: &str, default: usize| -> usize {
        arg(&args, name).and_then(|c| c.parse().ok()).unwrap_or(default.min(cores - 1))
    };
    let (server_core, victim_core) = (core("--server-core", 0), core("--victim-core", 1));
    let hostile_core = core("--hostile-core", if cores > 2 { 2 } else { 1 });
    let secs: f64 =
        arg(&args, "--secs").and_then(|s| s.parse().ok()).unwrap_or(if measuring { 5.0 } else { 0.2 });
    let bin = std::env::var("TICKINFER_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tickinfer").to_string());
    let model = tickinfer::source_root().join("models/lobster_direction.toml");
    let model = if model.exists() { model } else { "models/lobster_direction.toml".into() };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("punch.sock");
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let mut server: Child = Command::new(&bin)
        .args(["serve", "--mode", "inline", "--poll", "spin", "--stats-interval-s", "0", "--model"])
        .arg(&model)
        .arg("--socket")
        .arg(&socket)
        .args(["--io-core", &server_core.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the server");
    let server_pid = server.id();
    let (mut victim, _) = ShmClient::connect(&socket, Duration::from_secs(60)).expect("victim's shm session");
    pin(victim_core);
    let t = Duration::from_secs(5);
    let mut id = 0u64;
    let mut round_trip = |victim: &mut ShmClient| -> u64 {
        id += 1;
        let t0 = tickinfer::clock::now_ns();
        victim.send(&request(id), t).expect("victim send");
        let r = victim.recv_spin(t).expect("victim answered");
        let dt = tickinfer::clock::now_ns() - t0;
        assert_eq!(({ r.request_id }, { r.status }), (id, 0));
        dt
    };
    for _ in 0..20_000 {
        round_trip(&mut victim); // warm
    }
    let mut rows = Vec::new();
    for phase in ["quiet", "control", "punching"] {
        let hostile = match phase {
            "quiet" => None,
            role => Some(
                Command::new(std::env::current_exe().unwrap())
                    .args(["--role", if role == "control" { "spin" } else { "punch" }])
                    .args(["--core", &hostile_core.to_string(), "--secs", &secs.to_string()])
                    .arg("--socket")
                    .arg(&socket)
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("start the hostile process"),
            ),
        };
        std::thread::sleep(Duration::from_millis(50)); // let it connect and start
        let faults0 = minor_faults(server_pid, server_pid);
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        let t0 = Instant::now();
        while t0.elapsed().as_secs_f64() < secs - 0.1 {
            hist.saturating_record(round_trip(&mut victim));
        }
        let faults = minor_faults(server_pid, server_pid) - faults0;
        let (mut ok, mut failed) = (0.0, 0.0);
        if let Some(h) = hostile {
            let out = h.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let nums: Vec<f64> = text.split_whitespace().filter_map(|w| w.parse().ok()).collect();
            assert!(out.status.success() && nums.len() == 2, "hostile process: {text}");
            (ok, failed) = (nums[0] / secs, nums[1] / secs);
        }
        rows.push(Row { phase, hist, faults, punches_ok: ok, punches_failed: failed });
    }
    drop(victim);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(server_pid as i32, libc::SIGTERM) };
    let status = server.wait().unwrap();
    assert!(status.success(), "server exit {status}");
    println!(
        "shm round trips of a victim client (cores: server {server_core}, victim {victim_core}, hostile \
         {hostile_core}; {secs} s per phase; server {bin})"
    );
    println!("| phase | round trips | p50 ns | p99 ns | p99.9 ns | max ns | server minor faults | punches/s ok | punches/s refused |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let q = |p: f64| r.hist.value_at_quantile(p);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} |",
            r.phase,
            r.hist.len(),
            q(0.5),
            q(0.99),
            q(0.999),
            r.hist.max(),
            r.faults,
            r.punches_ok,
            r.punches_failed
        );
        assert!(!r.hist.is_empty(), "{}: the victim was never answered", r.phase);
    }
}
