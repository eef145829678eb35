//! Host tuning the operator asks for: `--lock-memory` locks the warm server's pages (and
//! what that changes in page faults, counted from /proc before and after), `--rt-priority`
//! runs the pinned thread SCHED_FIFO, and each refuses to start with the limit and the
//! unit line that fixes it when the host does not allow it.
mod util;

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use tickinfer::wire::{MlRequest, Status};
use util::server::{request, Client, Server};
use util::skip;

/// Minor page faults of every thread of `pid` so far (`/proc/PID/stat` field 10).
fn minor_faults(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split_whitespace().nth(7).unwrap().parse().unwrap()
}

fn status_kib(pid: i32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// Round trips of 16-request windows on one connection, every answer checked.
fn round_trips(c: &mut Client, windows: u64) {
    for w in 0..windows {
        let reqs: Vec<MlRequest> = (0..16).map(|i| request(w * 16 + i + 1)).collect();
        c.send(&reqs).unwrap();
        for r in &reqs {
            let a = c.recv().unwrap();
            assert_eq!(({ a.request_id }, { a.status }), ({ r.request_id }, Status::Ok.code()));
        }
    }
}

/// Whether this process could lock all memory (root or CAP_IPC_LOCK, or an unlimited limit).
fn can_lock() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap_or(0);
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into `lim`, which outlives the call.
    unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    caps & (1 << 14) != 0 || lim.rlim_cur == libc::RLIM_INFINITY
}

/// Faults after warm-up: steady round trips on one connection, then a soak with reconnects
/// (new connection buffers), for a server without and with `--lock-memory`.
#[test]
fn lock_memory_locks_the_warm_server_and_page_faults_are_counted() {
    if !can_lock() {
        return skip(
            "lock_memory_locks_the_warm_server_and_page_faults_are_counted",
            "neither CAP_IPC_LOCK nor an unlimited RLIMIT_MEMLOCK here",
        );
    }
    for lock in [false, true] {
        let args: &[&str] = if lock { &["--lock-memory"] } else { &[] };
        let server = Server::start(args);
        let pid = server.pid();
        let mut c = Client::connect(&server.socket).unwrap();
        round_trips(&mut c, 200); // warm: buffers touched, answers flowing
        let before = minor_faults(pid);
        round_trips(&mut c, 1250); // 20 000 requests
        let steady = minor_faults(pid) - before;
        let before = minor_faults(pid);
        for _ in 0..50 {
            let mut c = Client::connect(&server.socket).unwrap();
            round_trips(&mut c, 25);
        }
        let reconnects = minor_faults(pid) - before;
        let locked = status_kib(pid, "VmLck:");
        eprintln!(
            "lock_memory={lock}: {steady} minor faults over 20 000 steady requests, {reconnects} over 50 \
             reconnects x 400 requests; VmLck {locked} KiB, VmRSS {} KiB",
            status_kib(pid, "VmRSS:")
        );
        if lock {
            assert!(server.log().contains("memory locked:"), "{}", server.log());
            assert!(locked >= 10 * 1024, "VmLck {locked} KiB: the warm server's pages are not locked");
            // Every page the steady path touches is resident and locked since warm-up.
            assert_eq!(steady, 0, "page faults on the steady path of a locked server");
        } else {
            assert_eq!(locked, 0);
        }
    }
}

/// Run the server with limits set in the child (`RLIMIT_MEMLOCK`, `RLIMIT_RTPRIO`) and,
/// when root, without CAP_IPC_LOCK/CAP_SYS_NICE (through `setpriv`), so the limits bind.
fn refused(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("refused.sock");
    // SAFETY: getuid cannot fail.
    let root = unsafe { libc::getuid() } == 0;
    let mut cmd = if root {
        let mut c = Command::new("setpriv");
        c.arg("--bounding-set=-ipc_lock,-sys_nice").arg(env!("CARGO_BIN_EXE_tickinfer"));
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_tickinfer"))
    };
    // SAFETY: setrlimit is async-signal-safe and touches only the child's own limits.
    unsafe {
        cmd.pre_exec(|| {
            let memlock = libc::rlimit { rlim_cur: 8 << 20, rlim_max: 8 << 20 };
            let rtprio = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &memlock) != 0
                || libc::setrlimit(libc::RLIMIT_RTPRIO, &rtprio) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut server = Server::spawn_with(dir, socket, args, cmd);
    let status = server.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{}", server.log());
    assert!(!server.log().contains("ready: model"), "{}", server.log());
    server.log()
}

#[test]
fn lock_memory_and_rt_priority_refuse_with_the_fix() {
    // SAFETY: getuid cannot fail.
    let root = unsafe { libc::getuid() } == 0;
    if root && Command::new("setpriv").arg("--version").output().is_err() {
        return skip(
            "lock_memory_and_rt_priority_refuse_with_the_fix",
            "root without setpriv to drop capabilities",
        );
    }
    let log = refused(&["--lock-memory"]);
    assert!(log.contains("RLIMIT_MEMLOCK) is 8192 KiB") && log.contains("LimitMEMLOCK=infinity"), "{log}");
    let log = refused(&["--rt-priority", "20"]);
    assert!(log.contains("RLIMIT_RTPRIO) is 0") && log.contains("LimitRTPRIO=20"), "{log}");
    // Out of range is a usage error before anything starts.
    let out = Command::new(env!("CARGO_BIN_EXE_tickinfer"))
        .args(["serve", "--socket", "/nonexistent/x.sock", "--model", "m.toml", "--rt-priority", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1..=99"));
}

/// Scheduling policy and real-time priority of each thread of `pid`: (name, policy, priority).
fn thread_policies(pid: i32) -> Vec<(String, u32, u32)> {
    let mut out = vec![];
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap();
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap().trim().to_string();
        let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().collect();
        // Fields 40 (rt_priority) and 41 (policy); `rest` starts at field 3.
        out.push((name, rest[38].parse().unwrap(), rest[37].parse().unwrap()));
    }
    out
}

#[test]
fn rt_priority_runs_the_pinned_thread_fifo() {
    // SAFETY: getuid cannot fail.
    let root = unsafe { libc::getuid() } == 0;
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into `lim`, which outlives the call.
    unsafe { libc::getrlimit(libc::RLIMIT_RTPRIO, &mut lim) };
    if !root && lim.rlim_cur < 10 {
        return skip("rt_priority_runs_the_pinned_thread_fifo", "no CAP_SYS_NICE and RLIMIT_RTPRIO < 10");
    }
    // Blocking poll: a real-time thread that spins would own a core of this shared machine.
    let server = Server::start(&["--rt-priority", "10", "--mode", "inline"]);
    let mut c = Client::connect(&server.socket).unwrap();
    round_trips(&mut c, 10);
    let threads = thread_policies(server.pid());
    const SCHED_FIFO: u32 = 1;
    let fifo: Vec<_> = threads.iter().filter(|t| t.1 == SCHED_FIFO).collect();
    // Inline mode: the one pinned hot thread (the main thread, named after the binary).
    assert_eq!(fifo.len(), 1, "{threads:?}");
    assert_eq!((fifo[0].0.as_str(), fifo[0].2), ("tickinfer", 10), "{threads:?}");
    assert!(server.log().contains("inline thread: SCHED_FIFO priority 10"), "{}", server.log());
}
