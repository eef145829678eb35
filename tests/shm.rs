//! The shared-memory transport against the real server: order, ids, statuses
//! and stamps; the in-flight bound; many shm and socket clients at once with
//! random disconnects; a client that scribbles over its region; one that clears its
//! doorbell's non-blocking flag; a client killed mid-stream; a drain with shm clients
//! in flight; the C client.
mod util;

use std::time::Duration;

use tickinfer::shm::ShmClient;
use tickinfer::wire::{MlRequest, MlResponse, Status};
use util::server::{request, Client, Server};

const T: Duration = Duration::from_secs(20);

fn connect(server: &Server) -> ShmClient {
    let (c, ack) = ShmClient::connect(&server.socket, T).unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    assert_eq!({ ack.status }, 0);
    c
}

/// Send `reqs` in windows of `window`, reading each window's answers; ids checked.
fn exchange(c: &mut ShmClient, reqs: &[MlRequest], window: usize) -> Vec<MlResponse> {
    let mut out = Vec::with_capacity(reqs.len());
    for w in reqs.chunks(window) {
        for r in w {
            c.send(r, T).unwrap();
        }
        for r in w {
            let resp = c.recv_spin(T).unwrap();
            assert_eq!({ resp.request_id }, { r.request_id }, "answers in request order");
            out.push(resp);
        }
    }
    out
}

#[test]
fn answers_match_the_socket_in_order_with_stamps() {
    let server = Server::start(&[]);
    let mut reqs: Vec<MlRequest> = (0..3000).map(request).collect();
    reqs[17].bid_price = reqs[17].ask_price; // crossed: an error answer, in its place
    reqs[18].n_features = 40;
    let mut shm = connect(&server);
    let got = exchange(&mut shm, &reqs, 64);
    let mut sock = Client::connect(&server.socket).unwrap();
    for (i, w) in reqs.chunks(64).enumerate() {
        sock.send(w).unwrap();
        for (j, r) in w.iter().enumerate() {
            let want = sock.recv().unwrap();
            let g = got[i * 64 + j];
            assert_eq!({ want.request_id }, { r.request_id });
            assert_eq!(
                (g.direction, g.confidence, { g.target_price }, { g.status }),
                (want.direction, want.confidence, { want.target_price }, { want.status }),
                "request {}: shm and socket answers differ",
                { r.request_id }
            );
        }
    }
    assert_eq!(Status::from_code(got[17].status), Some(Status::CrossedBook));
    assert_eq!(Status::from_code(got[18].status), Some(Status::FeatureCount));
    let now = tickinfer::clock::now_ns();
    for g in &got {
        assert!(
            { g.server_recv_ns } <= { g.server_send_ns } && { g.server_send_ns } <= now,
            "stamps in order"
        );
        assert_eq!({ g.frame_end }, tickinfer::wire::RESPONSE_END);
    }
    let stats = server.stats_when(|s| s["responses"].as_u64() >= Some(6000));
    assert_eq!(stats["shm_sessions"], 1, "{stats}");
}

fn run_c(exe: &std::path::Path, args: &[&str]) -> String {
    util::run_ok(std::process::Command::new(exe).args(args))
}

fn c_program(name: &str, source: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join(name);
    util::compile("c", &[&util::repo_root().join(source)], &exe);
    (dir, exe)
}

#[test]
fn c_client_over_shm_spin_and_block() {
    let (_dir, exe) = c_program("shm_client", "tests/c/shm_client.c");
    for poll in ["block", "adaptive", "spin"] {
        let server = Server::start(&["--poll", poll]);
        let out = run_c(&exe, &[server.socket.to_str().unwrap(), "check", "2000"]);
        assert!(out.contains("all checks passed"), "--poll {poll}: {out}");
        assert!(out.contains("ok pipelined 2000") && out.contains("ok 200 blocking"), "{out}");
    }
    let server = Server::start(&["--no-shm"]);
    let out = run_c(&exe, &[server.socket.to_str().unwrap(), "noshm"]);
    assert!(out.contains("all checks passed"), "{out}");
}

#[test]
fn c_example_prints_its_table_over_shm() {
    let (_dir, exe) = c_program("client_example", "proto/examples/client_example.c");
    let server = Server::start(&[]);
    let out = run_c(&exe, &[server.socket.to_str().unwrap(), "3000", "spin", "8", "0", "shm"]);
    assert!(
        out.contains("transport=shm") && out.contains("received=3000") && out.contains("mismatched=0"),
        "{out}"
    );
    assert!(out.contains("status 0 (ok): 3000") && out.contains("rtt_ns p50="), "{out}");
}

#[test]
fn the_in_flight_bound_holds_in_order() {
    let server = Server::start(&["--max-inflight", "8"]);
    let mut c = connect(&server);
    // 300 sent before any answer is read: past 8 in flight the server answers OVERLOADED,
    // in order, up to its hard limit, and takes the rest as answers are read.
    let reqs: Vec<MlRequest> = (0..300).map(request).collect();
    for r in &reqs {
        c.send(r, T).unwrap();
    }
    let mut statuses = Vec::new();
    for r in &reqs {
        let resp = c.recv_spin(T).unwrap();
        assert_eq!({ resp.request_id }, { r.request_id });
        statuses.push(Status::from_code(resp.status).unwrap());
    }
    assert!(statuses.iter().all(|s| matches!(s, Status::Ok | Status::Overloaded)), "{statuses:?}");
    assert!(statuses.contains(&Status::Overloaded), "the bound was hit");
    assert_eq!(statuses[0], Status::Ok);
}

/// Random windows over shm and socket clients at once, with disconnects mid-window.
#[test]
fn many_shm_and_socket_clients_with_random_disconnects() {
    let server = Server::start(&["--max-connections", "256", "--max-inflight", "512"]);
    let socket = server.socket.clone();
    let threads: Vec<_> = (0..64u64)
        .map(|t| {
            let socket = socket.clone();
            std::thread::spawn(move || -> (u64, u64) {
                let mut rng = util::Rng(0x9e37_79b9 ^ (t * 7919 + 1));
                let (mut answered, mut dropped) = (0u64, 0u64);
                for conn in 0..3u64 {
                    let shm = t % 2 == 0;
                    let mut shm_client = None;
                    let mut sock_client = None;
                    if shm {
                        shm_client = Some(ShmClient::connect(&socket, T).unwrap().0);
                    } else {
                        sock_client = Some(Client::connect(&socket).unwrap());
                    }
                    for w in 0..6u64 {
                        let n = rng.range(1, 64);
                        let base = (t << 40) | (conn << 32) | (w << 16);
                        let reqs: Vec<MlRequest> = (0..n).map(|i| request(base | i)).collect();
                        let cut = rng.range(0, 6) == 0; // disconnect with this window in flight
                        match (&mut shm_client, &mut sock_client) {
                            (Some(c), _) => reqs.iter().for_each(|r| c.send(r, T).unwrap()),
                            (_, Some(c)) => c.send(&reqs).unwrap(),
                            _ => unreachable!(),
                        }
                        if cut {
                            dropped += n;
                            break;
                        }
                        for r in &reqs {
                            let resp = match (&mut shm_client, &mut sock_client) {
                                (Some(c), _) => c.recv_block(T).unwrap(),
                                (_, Some(c)) => c.recv().unwrap(),
                                _ => unreachable!(),
                            };
                            assert_eq!(
                                { resp.request_id },
                                { r.request_id },
                                "client {t}: answer out of order"
                            );
                            assert_eq!({ resp.status }, 0, "client {t}: request {}", { r.request_id });
                            answered += 1;
                        }
                    }
                }
                (answered, dropped)
            })
        })
        .collect();
    let (mut answered, mut dropped) = (0, 0);
    for t in threads {
        let (a, d) = t.join().expect("a client thread failed");
        answered += a;
        dropped += d;
    }
    assert!(answered > 1000, "{answered} answered");
    // Still serving, both ways, after every disconnect.
    let mut c = connect(&server);
    assert_eq!({ exchange(&mut c, &[request(1)], 1)[0].status }, 0);
    let mut s = Client::connect(&server.socket).unwrap();
    s.send(&[request(2)]).unwrap();
    assert_eq!({ s.recv().unwrap().status }, 0);
    let stats = server.stats_when(|s| s["responses"].as_u64() >= Some(answered + 2));
    assert!(stats["shm_sessions"].as_u64().unwrap() >= 96, "{stats}");
    assert_eq!(stats["shm_faults"], 0, "{stats}");
    eprintln!("{answered} answered, {dropped} dropped with their connection");
}

/// The 32-bit word at `offset` of a client's region (the one it writes), as the server sees it.
fn word(c: &ShmClient, offset: usize) -> &std::sync::atomic::AtomicU32 {
    region_word(c.raw_client_region(), offset)
}

/// The 32-bit word at `offset` of a client's mapping of the server region (read-only: load it).
fn server_word(c: &ShmClient, offset: usize) -> &std::sync::atomic::AtomicU32 {
    region_word(c.raw_server_region(), offset)
}

fn region_word<'a>((base, len): (*mut u8, usize), offset: usize) -> &'a std::sync::atomic::AtomicU32 {
    assert!(offset % 4 == 0 && offset + 4 <= len);
    // SAFETY: in bounds of a live mapping, 4-aligned; accessed only atomically while its client lives
    // (the tests keep the client alive while they use the word).
    unsafe { std::sync::atomic::AtomicU32::from_ptr(base.add(offset).cast()) }
}

/// Fill request slot `index` with `byte`s (every byte, trailer included) through atomic stores.
fn scribble_slot(c: &ShmClient, index: u32, byte: u8) {
    use tickinfer::shm::{REQUEST_SLOT, SLOTS_OFFSET};
    let slot = (index & (c.capacities().0 - 1)) as usize;
    let v = u32::from_ne_bytes([byte; 4]);
    for k in (0..REQUEST_SLOT).step_by(4) {
        word(c, SLOTS_OFFSET + slot * REQUEST_SLOT + k).store(v, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Wait (bounded) until the server hangs up on `c`; panics if it never does.
fn hung_up_on(c: &mut ShmClient, server: &Server) {
    let t0 = std::time::Instant::now();
    while !c.server_gone() {
        assert!(t0.elapsed() < T, "server did not disconnect the misbehaving client:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_client_scribbling_over_its_region_harms_nobody_else() {
    use std::sync::atomic::Ordering::{Relaxed, Release};
    use tickinfer::shm::client_counters::{REQUEST_HEAD, RESPONSE_TAIL};
    let server = Server::start(&["--poll", "adaptive"]);
    // A well-behaved client streams the whole time.
    let socket = server.socket.clone();
    let good = std::thread::spawn(move || {
        let mut c = ShmClient::connect(&socket, T).unwrap().0;
        let reqs: Vec<MlRequest> = (0..4000).map(request).collect();
        exchange(&mut c, &reqs, 32).iter().filter(|r| r.status == 0).count()
    });

    // 1. A frame whose trailer is garbage: one BAD_FRAME answer, then the server hangs up.
    let mut c = connect(&server);
    c.send(&request(1), T).unwrap();
    scribble_slot(&c, 1, 0xA5);
    word(&c, REQUEST_HEAD).store(2, Release);
    assert_eq!({ c.recv_spin(T).unwrap().status }, 0);
    assert_eq!(Status::from_code(c.recv_spin(T).unwrap().status), Some(Status::BadFrame));
    hung_up_on(&mut c, &server);

    // 2. Garbage fields with a valid trailer: answered with validation statuses, in order.
    let mut c = connect(&server);
    for i in 0..50u32 {
        let mut r = request(i as u64);
        let bytes = bytemuck::bytes_of_mut(&mut r);
        for (k, b) in bytes[..tickinfer::wire::REQUEST_SIZE - 4].iter_mut().enumerate() {
            *b = (i as usize * 31 + k * 7) as u8;
        }
        r.request_id = i as u64;
        c.send(&r, T).unwrap();
        let resp = c.recv_spin(T).unwrap();
        assert_eq!({ resp.request_id }, i as u64);
        assert_ne!(Status::from_code(resp.status), Some(Status::Ok), "garbage must not score");
    }

    // 3. The client region's unused words and its own waiting flag scribbled over: no fault
    // (the server's counters are out of its reach: tests/c/shm_hostile.c tries).
    word(&c, 192).store(0xDEAD, Relaxed);
    word(&c, tickinfer::shm::client_counters::RESPONSE_WAITING).store(7, Relaxed);
    c.send(&request(99), T).unwrap();
    assert_eq!({ c.recv_spin(T).unwrap().request_id }, 99);
    assert!(!c.server_gone(), "scribbling over unused words is no protocol fault");

    // 4. A request head far beyond the ring: disconnected with a log line.
    let mut c = connect(&server);
    word(&c, REQUEST_HEAD).store(c.capacities().0 * 3 + 5, Release);
    hung_up_on(&mut c, &server);

    // 5. A response tail ahead of the server's head: disconnected.
    let mut c = connect(&server);
    word(&c, RESPONSE_TAIL).store(1_000_000, Release);
    c.send(&request(5), T).unwrap();
    hung_up_on(&mut c, &server);

    // 6. A full ring of garbage published at once (bounded work per turn), then gone.
    let mut c = connect(&server);
    let cap = c.capacities().0;
    for i in 0..cap {
        scribble_slot(&c, i, (i % 251) as u8);
    }
    word(&c, REQUEST_HEAD).store(cap, Release);
    hung_up_on(&mut c, &server);
    drop(c);

    assert_eq!(good.join().expect("the good client failed"), 4000, "the good client got every answer");
    let log = server.log();
    assert!(log.contains("shared-memory session broken"), "{log}");
    assert!(log.contains("in the shared-memory ring; answering"), "{log}");
    let stats = server.stats_when(|s| s["shm_faults"].as_u64() >= Some(2));
    assert!(stats["shm_faults"].as_u64().unwrap() >= 2, "{stats}");
    // Still serving.
    let mut c = connect(&server);
    assert_eq!({ exchange(&mut c, &[request(7)], 1)[0].status }, 0);
}

/// The doorbell eventfd is one open file description shared with the client: a client
/// that clears `O_NONBLOCK` on it (or reads it) must block nobody. The server sleeps with
/// the session's doorbell armed; a socket client must still be answered, the hostile
/// client's own ring keeps working, and SIGTERM still drains.
#[test]
fn a_client_clearing_its_doorbells_nonblocking_flag_blocks_nobody() {
    for poll in ["adaptive", "block"] {
        let mut server = Server::start(&["--poll", poll, "--spin-us", "50"]);
        let mut hostile = connect(&server);
        let fd = hostile.doorbell_fd();
        // SAFETY: fcntl on a descriptor this client owns, for the call only.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            assert!(flags >= 0 && flags & libc::O_NONBLOCK != 0, "passed non-blocking");
            assert_eq!(libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK), 0);
        }
        for round in 0..3u64 {
            // Long enough for the server to block in epoll with the doorbell armed.
            std::thread::sleep(Duration::from_millis(100));
            let mut sock = Client::connect(&server.socket)
                .unwrap_or_else(|e| panic!("--poll {poll}: no ack ({e}):\n{}", server.log()));
            sock.send(&[request(10 + round)]).unwrap();
            let r =
                sock.recv().unwrap_or_else(|e| panic!("--poll {poll}: unanswered ({e}):\n{}", server.log()));
            assert_eq!(({ r.request_id }, { r.status }), (10 + round, 0));
            std::thread::sleep(Duration::from_millis(100));
            // The hostile client's own requests ring its (now blocking) doorbell and are answered.
            let got = exchange(&mut hostile, &[request(20 + round), request(30 + round)], 1);
            assert!(got.iter().all(|r| r.status == 0), "--poll {poll}: {got:?}");
        }
        let status = server.terminate();
        assert!(status.success(), "--poll {poll}: exit {status}:\n{}", server.log());
        assert!(server.log().contains("drained"), "{}", server.log());
    }
}

/// The pages the server wrote (its header, counters and answers) must not outlive the
/// session in a client that keeps its mapping and descriptor: they are the server's
/// memory, and one client reconnecting in a loop would pile them up (shown on protocol
/// version 1: the answers stayed readable). Once a session ends the server region holds
/// no page (its blocks are 0 while nobody touches it) and reads back as zero in every
/// kept mapping.
#[test]
fn pages_the_server_wrote_do_not_outlive_the_session() {
    use std::os::unix::fs::MetadataExt;
    let server = Server::start(&[]);
    let mut kept = Vec::new();
    for session in 0..8u64 {
        let mut c = connect(&server);
        let reqs: Vec<MlRequest> = (0..64).map(|i| request((session << 32) | i)).collect();
        exchange(&mut c, &reqs, 16);
        assert_ne!(answer_words_written(&c), 0, "session {session}: answers are in the region");
        assert!(c.region_files().0.metadata().unwrap().blocks() > 0);
        c.hang_up();
        kept.push(c);
    }
    let t0 = std::time::Instant::now();
    for (session, c) in kept.iter().enumerate() {
        // Only the descriptor is looked at while waiting: a read through the mapping would
        // fault a (zero) page back in, on this process's account.
        while c.region_files().0.metadata().unwrap().blocks() != 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "session {session} ended, and the server region still holds its pages"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            answer_words_written(c),
            0,
            "session {session}: the answers are gone from the kept mapping"
        );
        assert_eq!(server_word(c, 0).load(std::sync::atomic::Ordering::Relaxed), 0, "and the header");
    }
}

/// Non-zero 32-bit words among the response slots, as a client mapping reads them.
fn answer_words_written(c: &ShmClient) -> usize {
    use std::sync::atomic::Ordering::Relaxed;
    let first = tickinfer::shm::SLOTS_OFFSET;
    let last = first + c.capacities().1 as usize * tickinfer::shm::RESPONSE_SLOT;
    (first..last).step_by(4).filter(|&o| server_word(c, o).load(Relaxed) != 0).count()
}

/// A client that misuses the descriptors and mappings it was given (tests/c/shm_hostile.c):
/// every way to write, punch, resize or re-seal memory the server touches is refused by
/// the kernel, and the session keeps working; requests published before the client says
/// it mapped its regions are answered once it does; a client that says so without having
/// written its own region's pages, or never says so, is disconnected.
#[test]
fn a_client_cannot_write_punch_resize_or_reseal_what_the_server_touches() {
    let (_dir, exe) = c_program("shm_hostile", "tests/c/shm_hostile.c");
    let server = Server::start(&["--poll", "adaptive"]);
    let sock = server.socket.to_str().unwrap();
    let out = run_c(&exe, &[sock, "misuse"]);
    assert!(out.contains("all refused") && out.contains("ok answered after the misuse"), "{out}");
    assert!(out.matches("refused ").count() >= 12, "{out}");
    let out = run_c(&exe, &[sock, "early"]);
    assert!(out.contains("ok early requests answered in order"), "{out}");
    let out = run_c(&exe, &[sock, "unmapped"]);
    assert!(out.contains("closed after"), "{out}");
    let out = run_c(&exe, &[sock, "silent"]);
    let ms: u64 = out.trim().rsplit(' ').nth(1).and_then(|m| m.parse().ok()).unwrap_or(0);
    assert!(out.contains("closed after") && ms >= 4_000, "{out}");
    let log = server.log();
    assert!(log.contains("pages never written"), "{log}");
    assert!(log.contains("no ML_SHM_MAPPED"), "{log}");
    // Still serving.
    let mut c = connect(&server);
    assert_eq!({ exchange(&mut c, &[request(8)], 1)[0].status }, 0);
}

#[test]
fn a_client_killed_mid_stream_frees_its_slot() {
    let (_dir, exe) = c_program("shm_client", "tests/c/shm_client.c");
    let server = Server::start(&["--max-connections", "1"]);
    let mut child = std::process::Command::new(&exe)
        .args([server.socket.to_str().unwrap(), "forever"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "connected");
    // The one slot is taken: a second client is refused.
    assert!(matches!(
        ShmClient::connect(&server.socket, T),
        Err(tickinfer::shm::ConnectError::Refused(Status::TooManyConnections))
    ));
    std::thread::sleep(Duration::from_millis(100)); // mid-stream
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Its slot (and region) are freed: the next client gets in.
    let t0 = std::time::Instant::now();
    let mut c = loop {
        match ShmClient::connect(&server.socket, T) {
            Ok((c, _)) => break c,
            Err(tickinfer::shm::ConnectError::Refused(Status::TooManyConnections)) if t0.elapsed() < T => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("{e}\n{}", server.log()),
        }
    };
    assert_eq!({ exchange(&mut c, &[request(3)], 1)[0].status }, 0);
}

#[test]
fn sigterm_answers_every_request_already_in_the_rings() {
    for mode in ["inline", "pipeline"] {
        sigterm_drains(mode);
    }
}

fn sigterm_drains(mode: &str) {
    let mut server = Server::start(&["--max-inflight", "1000", "--mode", mode]);
    let mut clients: Vec<ShmClient> = (0..4).map(|_| connect(&server)).collect();
    for (c, client) in clients.iter_mut().enumerate() {
        for i in 0..600u64 {
            client.send(&request(((c as u64) << 32) | i), T).unwrap();
        }
    }
    // SAFETY: kill(2) on our child's pid.
    unsafe { libc::kill(server.pid(), libc::SIGTERM) };
    for (c, client) in clients.iter_mut().enumerate() {
        for i in 0..600u64 {
            let r = client
                .recv_spin(T)
                .unwrap_or_else(|e| panic!("client {c} lost answer {i}: {e}\n{}", server.log()));
            assert_eq!(({ r.request_id }, { r.status }), (((c as u64) << 32) | i, 0));
        }
        let end = client.recv_spin(T).unwrap_err();
        assert_eq!(end.kind(), std::io::ErrorKind::BrokenPipe, "then the server hangs up: {end}");
    }
    let status = server.wait(T);
    assert!(status.success(), "exit status {status}:\n{}", server.log());
    assert!(server.log().contains("drained"), "{}", server.log());
}
