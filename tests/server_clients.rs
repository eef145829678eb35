//! Many clients: 64 concurrent pipelining clients, some disconnecting at random
//! with requests in flight. Every request of a client that stays is answered
//! exactly once, in order, with its own id; the server keeps serving. Also the
//! connection bound and the per-connection in-flight bound.
mod util;

use std::io::{Read, Write};
use std::net::Shutdown as SockShutdown;

use tickinfer::wire::{MlHello, MlHelloAck, MlRequest, Status, HELLO_ACK_SIZE};
use util::server::{request, Client, Server};
use util::Rng;

const CLIENTS: u64 = 64;
const PER_CLIENT: u64 = 400;

/// One client's life; returns how many answers it checked.
fn client(socket: std::path::PathBuf, c: u64) -> u64 {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (c + 1));
    let mut cl = Client::connect(&socket).unwrap_or_else(|e| panic!("client {c}: {e}"));
    let window = rng.range(1, 64);
    // Every 4th client hangs up at a random point with requests in flight.
    let quit_after = if c % 4 == 3 { Some(rng.range(0, PER_CLIENT)) } else { None };
    let (mut sent, mut got) = (0u64, 0u64);
    while got < PER_CLIENT {
        if Some(got) == quit_after {
            drop(cl);
            return got;
        }
        let burst = (window - (sent - got)).min(PER_CLIENT - sent).min(rng.range(1, 16));
        if burst > 0 {
            let reqs: Vec<MlRequest> = (sent..sent + burst).map(|i| request((c << 32) | i)).collect();
            cl.send(&reqs).unwrap();
            sent += burst;
        }
        let resp = cl.recv().unwrap_or_else(|e| panic!("client {c}: recv after {got}: {e}"));
        assert_eq!({ resp.request_id }, (c << 32) | got, "client {c}: answer out of order or not ours");
        assert_eq!({ resp.status }, Status::Ok.code(), "client {c} request {got}");
        assert!((-1..=1).contains(&{ resp.direction }) && resp.confidence <= 100);
        assert!({ resp.server_send_ns } >= { resp.server_recv_ns });
        got += 1;
    }
    // Nothing more may arrive: half-close and expect a clean EOF.
    cl.stream.shutdown(SockShutdown::Write).unwrap();
    let mut rest = Vec::new();
    cl.stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "client {c}: {} unexpected bytes after its last answer", rest.len());
    got
}

fn many_clients(args: &[&str]) {
    let server = Server::start(args);
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let socket = server.socket.clone();
            std::thread::spawn(move || client(socket, c))
        })
        .collect();
    let answered: u64 = threads.into_iter().map(|t| t.join().expect("client thread panicked")).sum();
    let stayed = (0..CLIENTS).filter(|c| c % 4 != 3).count() as u64;
    assert!(answered >= stayed * PER_CLIENT);

    // Still serving after the disconnects.
    let mut cl = Client::connect(&server.socket).unwrap();
    cl.send(&[request(7)]).unwrap();
    assert_eq!({ cl.recv().unwrap().request_id }, 7);

    // `tickinfer stats` reads the running server (published every 200 ms).
    // Both threads' stats are in: the I/O thread's statuses and (pipeline) the worker's histograms.
    let report = server.stats_when(|r| {
        r["responses"].as_u64().unwrap() > answered
            && r["queue_ns"]["count"].as_u64().unwrap() > answered
            && r["connections_accepted"].as_u64().unwrap() > CLIENTS
    });
    assert!(report["responses"].as_u64().unwrap() >= answered, "{report}");
    // Every histogram, in both modes (the pipeline's worker records queue, inference and batch).
    for h in ["total_ns", "queue_ns", "inference_ns", "batch"] {
        assert!(report[h]["count"].as_u64().unwrap() > 0, "{h} is empty: {report}");
        assert!(report[h]["p50"].as_u64().unwrap() > 0, "{h} p50 is zero: {report}");
    }
    assert!(report["queue_ns"]["count"].as_u64().unwrap() >= answered, "{report}");
    assert!(report["connections_accepted"].as_u64().unwrap() > CLIENTS, "{report}");
}

#[test]
fn sixty_four_pipelining_clients_inline() {
    many_clients(&["--mode", "inline"]);
}

#[test]
fn sixty_four_pipelining_clients_pipeline() {
    many_clients(&["--mode", "pipeline", "--poll", "adaptive", "--spin-us", "50"]);
}

#[test]
fn connection_bound_refuses_in_the_ack() {
    let server = Server::start(&["--max-connections", "2"]);
    let a = Client::connect(&server.socket).unwrap();
    let b = Client::connect(&server.socket).unwrap();
    let mut raw = std::os::unix::net::UnixStream::connect(&server.socket).unwrap();
    std::io::Write::write_all(&mut raw, bytemuck::bytes_of(&MlHello::current())).unwrap();
    let mut ack = [0u8; HELLO_ACK_SIZE];
    raw.read_exact(&mut ack).unwrap();
    let ack: MlHelloAck = bytemuck::pod_read_unaligned(&ack);
    assert_eq!({ ack.status }, Status::TooManyConnections.code());
    drop((a, b));
    // Slots free up again.
    std::thread::sleep(std::time::Duration::from_millis(100));
    Client::connect(&server.socket).unwrap();
}

#[test]
fn inflight_bound_answers_overloaded_in_order() {
    let server = Server::start(&["--mode", "inline", "--max-inflight", "4"]);
    let mut cl = Client::connect(&server.socket).unwrap();
    assert_eq!({ cl.ack.max_inflight }, 4);
    // One write of 20 frames: read in one go, so 16 exceed the bound.
    let reqs: Vec<MlRequest> = (0..20).map(request).collect();
    cl.send(&reqs).unwrap();
    let statuses: Vec<u16> = (0..20)
        .map(|i| {
            let r = cl.recv().unwrap();
            assert_eq!({ r.request_id }, i);
            r.status
        })
        .collect();
    assert_eq!(&statuses[..4], &[Status::Ok.code(); 4]);
    assert_eq!(&statuses[4..], &[Status::Overloaded.code(); 16]);
    // Once answered, the bound is free again.
    cl.send(&[request(99)]).unwrap();
    assert_eq!({ cl.recv().unwrap().status }, Status::Ok.code());
}

#[test]
fn a_connection_without_hello_is_closed_and_frees_its_slot() {
    let server = Server::start(&["--max-connections", "1"]);
    let mut silent = std::os::unix::net::UnixStream::connect(&server.socket).unwrap();
    silent.set_read_timeout(Some(std::time::Duration::from_secs(15))).unwrap();
    // The server hangs up on it (EOF) after its hello timeout...
    assert_eq!(silent.read(&mut [0u8; 8]).unwrap(), 0);
    assert!(server.log().contains("no hello within"), "{}", server.log());
    // ...and the slot serves a real client again.
    let mut c = Client::connect(&server.socket).unwrap();
    c.send(&[request(5)]).unwrap();
    assert_eq!({ c.recv().unwrap().request_id }, 5);
}

/// Past the hard in-flight limit (max_inflight + one read buffer) the server stops
/// reading a connection and resumes as answers drain: nothing lost, nothing reordered.
#[test]
fn backpressure_pauses_and_resumes_reading_without_loss() {
    for mode in ["inline", "pipeline"] {
        let server = Server::start(&["--mode", mode, "--max-inflight", "1"]);
        let mut cl = Client::connect(&server.socket).unwrap();
        let reqs: Vec<MlRequest> = (0..3000).map(request).collect();
        let socket_writer = {
            let mut w = cl.stream.try_clone().unwrap();
            std::thread::spawn(move || {
                std::io::Write::write_all(&mut w, bytemuck::cast_slice(&reqs)).unwrap()
            })
        };
        let mut overloaded = 0;
        for i in 0..3000u64 {
            let r = cl.recv().unwrap_or_else(|e| panic!("{mode}: answer {i} lost: {e}"));
            assert_eq!({ r.request_id }, i, "{mode}");
            overloaded += (r.status == tickinfer::wire::Status::Overloaded.code()) as u32;
        }
        socket_writer.join().unwrap();
        assert!(overloaded > 0, "{mode}: the bound of 1 in flight was never hit");
    }
}

/// Out of descriptors (`EMFILE`), the edge-triggered listener raises no new event for
/// clients already queued: the server retries `accept` on a timer, so a waiting client
/// is served as soon as a descriptor frees up, with no other connection arriving.
#[test]
fn accept_is_retried_after_running_out_of_descriptors() {
    // Find the server's own descriptor count, then allow 3 client connections more.
    let probe = Server::start(&[]);
    let base = std::fs::read_dir(format!("/proc/{}/fd", probe.pid())).unwrap().count() as u64;
    drop(probe);
    let server = Server::start_with_nofile(&["--max-connections", "16"], base + 3);
    let mut held = Vec::new();
    let waiting = loop {
        // Connect and hello; the first that gets no ack within 300 ms waits in the backlog.
        let mut s = std::os::unix::net::UnixStream::connect(&server.socket).unwrap();
        s.write_all(bytemuck::bytes_of(&MlHello::current())).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_millis(300))).unwrap();
        let mut ack = [0u8; HELLO_ACK_SIZE];
        match s.read_exact(&mut ack) {
            Ok(()) => held.push(s),
            Err(_) => break s,
        }
        assert!(held.len() < 16, "never ran out of descriptors:\n{}", server.log());
    };
    assert!(server.log().contains("retrying every"), "{}", server.log());
    // Free one descriptor; nothing else connects. The waiting client must be served.
    held.pop();
    let mut waiting = waiting;
    waiting.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let mut ack = [0u8; HELLO_ACK_SIZE];
    waiting.read_exact(&mut ack).expect("the queued client was never accepted");
    let ack: MlHelloAck = bytemuck::pod_read_unaligned(&ack);
    assert_eq!({ ack.status }, Status::Ok.code());
    waiting.write_all(bytemuck::bytes_of(&request(5))).unwrap();
    let mut buf = [0u8; tickinfer::wire::RESPONSE_SIZE];
    waiting.read_exact(&mut buf).unwrap();
    let r: tickinfer::wire::MlResponse = bytemuck::pod_read_unaligned(&buf);
    assert_eq!(({ r.request_id }, { r.status }), (5, 0));
    // With descriptors to spare again, the episode ends (logged once).
    drop(held);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(server.log().contains("accept recovered"), "{}", server.log());
    assert_eq!(server.log().matches("retrying every").count(), 1, "logged once per episode");
}
