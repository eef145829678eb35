//! Direct reads (`server::direct_read`): a spinning server with exactly one connection
//! reads that connection's socket in place of three polls in four. The lone connection is
//! read directly (counted in `direct_reads`), over a Unix socket and over TCP, one request
//! in flight or a pipelined burst; a second client still gets in and is served while the
//! first, being read directly, keeps a request in flight without pause; while two
//! connections exist nothing is read directly; every answer comes back once, in order, to
//! its own client, and nothing after the last — inline and pipelined. While read directly
//! it is out of the poll, and back in before the loop blocks and while it waits to write.
mod util;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tickinfer::wire::Status;
use util::server::{request, Client, Server};

/// `n` round trips, one request in flight, ids from `first`: each answer is the request's own.
fn round_trips<S: std::io::Read + std::io::Write>(c: &mut Client<S>, first: u64, n: u64) {
    for id in first..first + n {
        let r = c.roundtrip(&request(id)).unwrap_or_else(|e| panic!("request {id}: {e}"));
        assert_eq!({ r.request_id }, id, "an answer out of order or not ours");
        assert_eq!({ r.status }, Status::Ok.code(), "request {id}");
    }
}

/// Stats once `responses` reached `n` (published every 200 ms).
fn stats_after(server: &Server, n: u64) -> serde_json::Value {
    server.stats_when(|s| s["responses"].as_u64() == Some(n))
}

/// A burst of `n` requests sent at once, ids from `first`: the answers in order, each once.
fn burst<S: std::io::Read + std::io::Write>(c: &mut Client<S>, first: u64, n: u64) {
    let reqs: Vec<_> = (first..first + n).map(request).collect();
    c.send(&reqs).unwrap();
    for id in first..first + n {
        let r = c.recv().unwrap_or_else(|e| panic!("burst answer {id}: {e}"));
        assert_eq!({ r.request_id }, id, "a burst's answer out of order, missing or repeated");
        assert_eq!({ r.status }, Status::Ok.code(), "request {id}");
    }
}

fn direct_reads(stats: &serde_json::Value) -> u64 {
    stats["direct_reads"].as_u64().expect("stats report direct_reads")
}

fn lone_connections_are_read_directly_and_others_still_get_in(mode: &str) {
    let server = Server::start(&["--poll", "spin", "--mode", mode, "--listen-tcp", "127.0.0.1:0"]);
    let mut answered = 0;

    // One Unix connection: read directly.
    let mut a = Client::connect(&server.socket).unwrap();
    round_trips(&mut a, 0, 3000);
    burst(&mut a, 1 << 40, 200); // within the default --max-inflight (256)
    round_trips(&mut a, 3000, 100);
    answered += 3300;
    let s = stats_after(&server, answered);
    let alone = direct_reads(&s);
    assert!(alone > 0 && alone <= answered, "a lone spinning connection read directly: {s}");

    // It keeps one request in flight without a pause, read directly; a TCP client connects
    // and is served meanwhile (the loop still polls: its accept and hello are seen).
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut id = 1 << 32;
            // Relaxed: a stop flag; the join below orders everything after it.
            while !stop.load(Ordering::Relaxed) {
                round_trips(&mut a, id, 1);
                id += 1;
            }
            (a, id - (1 << 32))
        })
    };
    server.stats_when(|s| direct_reads(s) > alone); // the busy client is being read directly
    let mut b = Client::connect_tcp(server.tcp_addr()).expect("a second client gets in beside a busy one");
    round_trips(&mut b, 2 << 32, 200);
    answered += 200;
    stop.store(true, Ordering::Relaxed);
    let (mut a, busy_n) = busy.join().expect("the busy client's answers all came back in order");
    answered += busy_n;

    // Two connections: every iteration polls, nothing is read directly.
    let before = direct_reads(&stats_after(&server, answered));
    round_trips(&mut a, 3 << 32, 500);
    round_trips(&mut b, 4 << 32, 500);
    answered += 1000;
    let s = stats_after(&server, answered);
    assert_eq!(direct_reads(&s), before, "read directly while two connections were open: {s}");

    // The Unix client leaves; the TCP one, alone again, is read directly.
    drop(a);
    round_trips(&mut b, 5 << 32, 3000);
    burst(&mut b, 6 << 32, 200);
    answered += 3200;
    let s = stats_after(&server, answered);
    assert!(direct_reads(&s) > before, "a lone TCP connection read directly: {s}");

    // Nothing after the last answer.
    b.stream.set_read_timeout(Some(std::time::Duration::from_millis(300))).unwrap();
    let mut extra = [0u8; 1];
    match std::io::Read::read(&mut b.stream, &mut extra) {
        Ok(n) => panic!("{n} byte(s) after the last answer"),
        Err(e) => {
            assert!(matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "{e}")
        }
    }
}

#[test]
fn inline_lone_connections_are_read_directly_and_others_still_get_in() {
    lone_connections_are_read_directly_and_others_still_get_in("inline");
}

#[test]
fn pipelined_lone_connections_are_read_directly_and_others_still_get_in() {
    lone_connections_are_read_directly_and_others_still_get_in("pipeline");
}

fn direct_detaches(stats: &serde_json::Value) -> u64 {
    stats["direct_detaches"].as_u64().expect("stats report direct_detaches")
}

/// Adaptive polling: the lone connection is out of the poll while read directly, and back
/// in before the loop blocks — its next request, sent while the loop sleeps, wakes it.
fn lone_connection_back_in_the_poll_before_the_loop_blocks(mode: &str) {
    let server = Server::start(&["--poll", "adaptive", "--spin-us", "200", "--mode", mode]);
    let mut a = Client::connect(&server.socket).unwrap();
    a.stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let mut answered = 0;
    for round in 0..4u64 {
        round_trips(&mut a, round * 1000, 500); // spinning: read directly, out of the poll
        answered += 500;
        std::thread::sleep(std::time::Duration::from_millis(30)); // past the spin window: it blocks
    }
    let s = stats_after(&server, answered);
    assert!(direct_reads(&s) > 0, "read directly while spinning: {s}");
    assert!(direct_detaches(&s) >= 4, "out of the poll again after each sleep: {s}");
}

#[test]
fn inline_lone_connection_back_in_the_poll_before_the_loop_blocks() {
    lone_connection_back_in_the_poll_before_the_loop_blocks("inline");
}

#[test]
fn pipelined_lone_connection_back_in_the_poll_before_the_loop_blocks() {
    lone_connection_back_in_the_poll_before_the_loop_blocks("pipeline");
}

/// A lone connection read directly that stops reading its answers: once the kernel's buffer
/// is full it goes back into the poll with its writable interest, and every answer comes
/// once the client reads again, in order.
#[test]
fn lone_connection_waiting_to_write_is_polled_for_it() {
    let server = Server::start(&["--poll", "spin"]);
    let mut a = Client::connect(&server.socket).unwrap();
    a.stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    round_trips(&mut a, 0, 200);
    let s = stats_after(&server, 200);
    assert!(direct_detaches(&s) >= 1, "out of the poll while read directly: {s}");
    // 15 000 answers (870 KB): more than the socket's buffers hold, less than
    // --write-buffer-limit (4 MiB).
    let n = 15_000;
    let reqs: Vec<_> = (1000..1000 + n).map(request).collect();
    a.send(&reqs).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200)); // its buffer full meanwhile
    for id in 1000..1000 + n {
        let r = a.recv().unwrap_or_else(|e| panic!("answer {id}: {e}"));
        assert_eq!({ r.request_id }, id, "an answer out of order, missing or repeated");
    }
    round_trips(&mut a, 100_000, 100); // and read directly again after
    let s = stats_after(&server, 200 + n + 100);
    assert!(direct_detaches(&s) >= 2, "out of the poll again once it could write: {s}");
}
