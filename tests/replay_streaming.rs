//! Replay streams its input: peak memory does not grow with the file. The CI-sized
//! test doubles the input and checks the replay process's peak RSS stays under a fixed
//! bound; the `#[ignore]`d one replays a generated multi-GB file
//! (`cargo test --release --test replay_streaming -- --ignored --nocapture`).
mod util;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use util::server::Server;

/// A CSV of `n` quotes over 16 symbols (about 60 bytes a line).
fn write_quotes(path: &Path, n: u64) {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    writeln!(f, "timestamp_ns,symbol,bid_price,ask_price,bid_size,ask_size").unwrap();
    for i in 0..n {
        let tick = (i * 7919 % 13) as f64 * 0.01;
        writeln!(
            f,
            "{},S{},{:.2},{:.2},{},{}",
            1_000_000 + i * 1000,
            i % 16,
            100.0 + tick,
            100.01 + tick,
            1 + i % 7,
            1 + i % 5
        )
        .unwrap();
    }
    f.flush().unwrap();
}

/// Replay `input` through `server` (pipelined, closed loop); the replay process's peak
/// RSS in KiB (from wait4's rusage) and its JSON summary.
// The child is reaped by libc::wait4 (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn replay_peak_rss(server: &Server, input: &Path, out: &Path) -> (u64, serde_json::Value) {
    let child = Command::new(env!("CARGO_BIN_EXE_tickinfer"))
        .args(["replay", "--format", "csv", "--json", "--window", "256"])
        .arg("--socket")
        .arg(&server.socket)
        .arg("--input")
        .arg(input)
        .arg("--out")
        .arg(out)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
    let mut status = 0;
    // SAFETY: rusage is plain data written by wait4 for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child's pid, with valid out-pointers.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "replay failed: {text}");
    (usage.ru_maxrss as u64, serde_json::from_str(&text).unwrap())
}

#[test]
fn peak_memory_stays_bounded_while_the_input_doubles() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--max-inflight", "512"]);
    let mut peaks = vec![];
    // Both sizes are past the replay's read-ahead (2^18 events), so both reach its bound.
    for n in [400_000u64, 800_000] {
        let input = dir.path().join(format!("quotes_{n}.csv"));
        write_quotes(&input, n);
        let bytes = std::fs::metadata(&input).unwrap().len();
        let (peak_kib, summary) = replay_peak_rss(&server, &input, &dir.path().join(format!("out_{n}")));
        assert_eq!(summary["events"], n, "{summary}");
        assert_eq!((summary["lost"].as_u64(), summary["mismatched_ids"].as_u64()), (Some(0), Some(0)));
        // Every answer was written, in order, to the signals file.
        let signals = std::fs::read_to_string(dir.path().join(format!("out_{n}/signals.csv"))).unwrap();
        assert_eq!(signals.lines().count() as u64, n + 1);
        eprintln!("{n} events ({} MiB of CSV): replay peak RSS {} MiB", bytes >> 20, peak_kib >> 10);
        peaks.push(peak_kib);
        std::fs::remove_file(&input).unwrap();
    }
    // A loader holding the events would need ~220 B more per event (≈ 84 MiB for the second
    // 400 000): the bound is the read-ahead, not the input.
    assert!(
        peaks[1] <= peaks[0] + 24 * 1024,
        "peak RSS grew from {} to {} MiB when the input doubled",
        peaks[0] >> 10,
        peaks[1] >> 10
    );
    assert!(peaks[1] < 400 * 1024, "peak RSS {} MiB (bound 400 MiB)", peaks[1] >> 10);
}

/// A generated input several GB large (more than this test's RSS bound by far) replays
/// in bounded memory. Minutes: run by hand.
#[test]
#[ignore]
fn a_multi_gigabyte_file_replays_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--max-inflight", "512"]);
    let input = dir.path().join("big.csv");
    let n = 100_000_000u64; // ≈ 3.2 GB of CSV
    write_quotes(&input, n);
    let bytes = std::fs::metadata(&input).unwrap().len();
    let t0 = std::time::Instant::now();
    let (peak_kib, summary) = replay_peak_rss(&server, &input, &dir.path().join("out"));
    eprintln!(
        "{n} events ({} MiB of CSV) in {:.1} s: replay peak RSS {} MiB",
        bytes >> 20,
        t0.elapsed().as_secs_f64(),
        peak_kib >> 10
    );
    assert_eq!(summary["events"], n);
    assert!(peak_kib < 400 * 1024, "peak RSS {} MiB", peak_kib >> 10);
}
