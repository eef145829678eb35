//! TCP (`serve --listen-tcp`): the same wire as the Unix socket. Many TCP, Unix and
//! shared-memory clients at once with random disconnects, nothing lost or out of
//! order; the hostile-frame cases over TCP; the allowlist (a refused address is
//! closed at accept, counted, logged; a non-loopback bind without one is refused);
//! the pre-shared token; the drain on SIGTERM with TCP clients in flight; a client
//! finding a restarted server again; `--record` and a hot reload over TCP; and, as
//! root with iproute2, a real L2 path between two network namespaces joined by a veth
//! pair.
mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use tickinfer::wire::{MlHello, MlHelloAck, MlRequest, Status, HELLO_ACK_SIZE};
use util::server::{request, Client, Server};
use util::Rng;

const LOOPBACK_ANY_PORT: &[&str] = &["--listen-tcp", "127.0.0.1:0"];

fn tcp_server(extra: &[&str]) -> Server {
    let mut args = LOOPBACK_ANY_PORT.to_vec();
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Send `n` requests pipelined in windows of `window` and check every answer: its id,
/// in order, status OK, stamps set and ordered.
fn exchange<S: Read + Write>(c: &mut Client<S>, base: u64, n: u64, window: u64) {
    let mut next = 0;
    while next < n {
        let w = window.min(n - next);
        let reqs: Vec<MlRequest> = (next..next + w).map(|i| request(base + i)).collect();
        c.send(&reqs).unwrap();
        for r in &reqs {
            let resp = c.recv().unwrap();
            assert_eq!(
                ({ resp.request_id }, { resp.status }),
                ({ r.request_id }, Status::Ok.code()),
                "in order"
            );
            assert!(resp.server_recv_ns > 0 && resp.server_recv_ns <= resp.server_send_ns, "stamps");
        }
        next += w;
    }
}

#[test]
fn tcp_answers_equal_unix_answers_in_order() {
    let server = tcp_server(&[]);
    let mut reqs: Vec<MlRequest> = (0..2000).map(request).collect();
    reqs[17].bid_price = reqs[17].ask_price; // crossed: an error answer, in its place
    reqs[18].n_features = 40;
    let mut tcp = Client::connect_tcp(server.tcp_addr()).unwrap();
    let mut unix = Client::connect(&server.socket).unwrap();
    assert_eq!(tcp.ack, unix.ack, "the same ack on both transports");
    for w in reqs.chunks(64) {
        tcp.send(w).unwrap();
        unix.send(w).unwrap();
        for r in w {
            let (a, b) = (tcp.recv().unwrap(), unix.recv().unwrap());
            assert_eq!(({ a.request_id }, { b.request_id }), ({ r.request_id }, { r.request_id }));
            assert_eq!(
                (a.direction, a.confidence, { a.target_price }, { a.status }),
                (b.direction, b.confidence, { b.target_price }, { b.status }),
                "request {}",
                { r.request_id }
            );
        }
    }
    let stats = server.stats_when(|s| s["responses"].as_u64() >= Some(4000));
    assert!(stats["tcp_connections"].as_u64() >= Some(1), "{stats}");
}

/// One client's life: rounds of pipelined requests, each round checked in order; in some
/// rounds it hangs up with requests in flight and connects again.
fn churn<S: Read + Write>(connect: impl Fn() -> Client<S>, seed: u64, rounds: u64) -> u64 {
    let mut rng = Rng(seed);
    let mut c = connect();
    let mut checked = 0;
    for round in 0..rounds {
        let n = rng.range(1, 120);
        let base = (seed << 32) | (round << 16);
        if rng.range(0, 4) == 0 {
            // Hang up with many requests in flight and answers unread (a TCP reset): the
            // server drops their answers, and its slot's next holder never gets one of them.
            let n = rng.range(200, 900);
            let reqs: Vec<MlRequest> = (0..n).map(|i| request(base + i)).collect();
            c.send(&reqs).unwrap();
            for _ in 0..rng.range(0, n / 4) {
                c.recv().unwrap();
            }
            // Gone before the next connection: the server may give that one the freed slot.
            drop(c);
            c = connect();
            continue;
        }
        exchange(&mut c, base, n, rng.range(1, 64));
        checked += n;
    }
    checked
}

#[test]
fn tcp_unix_and_shm_clients_at_once_with_random_disconnects_inline() {
    mixed_clients("inline");
}

#[test]
fn tcp_unix_and_shm_clients_at_once_with_random_disconnects_pipeline() {
    mixed_clients("pipeline");
}

fn mixed_clients(mode: &str) {
    let server = tcp_server(&["--mode", mode, "--max-connections", "96", "--max-inflight", "1000"]);
    let addr = server.tcp_addr();
    let socket: PathBuf = server.socket.clone();
    let mut threads = Vec::new();
    for c in 0..32u64 {
        threads.push(std::thread::spawn(move || churn(|| Client::connect_tcp(addr).unwrap(), 1 + c, 12)));
    }
    for c in 0..32u64 {
        let socket = socket.clone();
        threads.push(std::thread::spawn(move || churn(|| Client::connect(&socket).unwrap(), 100 + c, 12)));
    }
    for c in 0..8u64 {
        let socket = socket.clone();
        threads.push(std::thread::spawn(move || {
            let t = Duration::from_secs(20);
            let (mut shm, _) = tickinfer::shm::ShmClient::connect(&socket, t).unwrap();
            let mut rng = Rng(200 + c);
            let mut checked = 0;
            for round in 0..12u64 {
                let n = rng.range(1, 120);
                let reqs: Vec<MlRequest> =
                    (0..n).map(|i| request(((200 + c) << 32) | (round << 16) | i)).collect();
                for r in &reqs {
                    shm.send(r, t).unwrap();
                }
                for r in &reqs {
                    let resp = shm.recv_spin(t).unwrap();
                    assert_eq!(({ resp.request_id }, { resp.status }), ({ r.request_id }, 0), "shm in order");
                }
                checked += n;
            }
            checked
        }));
    }
    let checked: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(checked > 0);
    // Everyone hung up or is gone: the server still serves both transports.
    exchange(&mut Client::connect_tcp(addr).unwrap(), 1 << 60, 100, 10);
    exchange(&mut Client::connect(&server.socket).unwrap(), 1 << 61, 100, 10);
    let stats = server.stats_when(|s| s["tcp_connections"].as_u64() >= Some(33));
    assert_eq!(stats["by_status"].as_object().unwrap().len(), 1, "only OK answers: {stats}");
}

fn refused_hello(addr: SocketAddr, bytes: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(bytes).unwrap();
    let mut ack = [0u8; HELLO_ACK_SIZE];
    s.read_exact(&mut ack).unwrap();
    let ack: MlHelloAck = bytemuck::pod_read_unaligned(&ack);
    assert_eq!(s.read(&mut [0u8; 8]).unwrap(), 0, "closed after the refusal");
    ack.status
}

#[test]
fn hostile_frames_over_tcp() {
    let server = tcp_server(&["--symbol", "0", "--symbol", "1", "--symbol", "2", "--symbol", "3"]);
    let addr = server.tcp_addr();
    // Bad requests: each answered with its status, in order; the connection stays.
    let mut c = Client::connect_tcp(addr).unwrap();
    let with = |id: u64, f: &dyn Fn(&mut MlRequest)| {
        let mut r = request(id);
        f(&mut r);
        r
    };
    let reqs = [
        request(1),
        with(2, &|r| r.ask_price = r.bid_price),
        with(3, &|r| r.bid_price = 0),
        with(4, &|r| r.bid_size = -1),
        with(5, &|r| r.book_imbalance = 2_000_000),
        with(6, &|r| r.n_features = 33),
        with(7, &|r| r.symbol_id = 9),
        with(8, &|r| r.reserved = 1),
        with(9, &|r| {
            r.n_features = 1;
            r.features[0] = f32::NAN;
        }),
        request(10),
    ];
    let want = [
        Status::Ok,
        Status::CrossedBook,
        Status::BadPrice,
        Status::BadSize,
        Status::BadImbalance,
        Status::FeatureCount,
        Status::UnknownSymbol,
        Status::ReservedNonzero,
        Status::FeatureCount, // the model reads 0 extra features: a count of 1 is refused first
        Status::Ok,
    ];
    c.send(&reqs).unwrap();
    for (r, w) in reqs.iter().zip(want) {
        let resp = c.recv().unwrap();
        assert_eq!(({ resp.request_id }, { resp.status }), ({ r.request_id }, w.code()));
    }
    // Frames split across TCP segments, a byte at a time.
    let bytes = bytemuck::bytes_of(&request(11)).to_vec();
    for b in &bytes {
        c.stream.write_all(std::slice::from_ref(b)).unwrap();
        c.stream.flush().unwrap();
    }
    assert_eq!({ c.recv().unwrap().request_id }, 11);
    // A broken stream: the requests before it answered, then one BAD_FRAME, then closed.
    let mut broken = bytemuck::bytes_of(&request(12)).to_vec();
    broken.extend_from_slice(&[0xAB; 194]);
    c.stream.write_all(&broken).unwrap();
    assert_eq!(
        ({ c.recv().unwrap().request_id }, { c.recv().unwrap().status }),
        (12, Status::BadFrame.code())
    );
    assert_eq!(c.stream.read(&mut [0u8; 8]).unwrap(), 0, "closed after BAD_FRAME");
    // Bad hellos are refused in the ack.
    assert_eq!(refused_hello(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Status::BadFrame.code());
    let other = MlHello { version: 9, ..MlHello::current() };
    assert_eq!(refused_hello(addr, bytemuck::bytes_of(&other)), Status::Version.code());
    let wide = MlHello { request_size: 130, ..MlHello::current() };
    assert_eq!(refused_hello(addr, bytemuck::bytes_of(&wide)), Status::Layout.code());
    // An auth flag followed by no auth frame.
    let mut lying = bytemuck::bytes_of(&MlHello { flags: 2, ..MlHello::current() }).to_vec();
    lying.extend_from_slice(&[0u8; 72]);
    assert_eq!(refused_hello(addr, &lying), Status::BadFrame.code());
    // Random garbage on many connections never hurts a well-behaved client.
    let mut rng = Rng(7);
    for _ in 0..40 {
        let mut s = TcpStream::connect(addr).unwrap();
        let mut junk =
            if rng.range(0, 2) == 0 { bytemuck::bytes_of(&MlHello::current()).to_vec() } else { vec![] };
        junk.extend((0..rng.range(1, 2000)).map(|_| rng.next() as u8));
        let _ = s.write_all(&junk);
    }
    exchange(&mut Client::connect_tcp(addr).unwrap(), 1000, 200, 16);
}

#[test]
fn an_address_not_allowed_is_closed_at_accept_and_counted() {
    // Only 10.255.255.254 may connect: a loopback peer is closed before a byte is read.
    let server = tcp_server(&["--tcp-allow", "10.255.255.254/32", "--metrics", "127.0.0.1:0"]);
    let addr = server.tcp_addr();
    for _ in 0..3 {
        let e = Client::connect_tcp(addr).err().expect("refused");
        assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
            ),
            "{e}"
        );
    }
    let stats = server.stats_when(|s| s["tcp_peers_refused"].as_u64() >= Some(3));
    assert_eq!(stats["tcp_connections"].as_u64(), Some(0), "{stats}");
    let metrics = server.metrics_text();
    assert!(metrics.contains("tickinfer_tcp_peers_refused_total 3"), "{metrics}");
    let log = server.log();
    assert!(log.contains("not in --tcp-allow (10.255.255.254/32)"), "{log}");
    assert_eq!(log.matches("refusing TCP connection").count(), 1, "logged at most once a second:\n{log}");
    // The Unix socket is untouched.
    exchange(&mut Client::connect(&server.socket).unwrap(), 0, 10, 10);
}

#[test]
fn a_non_loopback_address_without_an_allowlist_is_refused_at_start() {
    let mut server = Server::spawn(&["--listen-tcp", "0.0.0.0:0"]);
    let e = server.wait_ready_or_exit().expect_err("must not start");
    assert!(e.contains("--tcp-allow") && e.contains("not a loopback address"), "{e}");
    let mut server = Server::spawn(&["--tcp-allow", "10.0.0.0/8"]);
    let e = server.wait_ready_or_exit().expect_err("must not start");
    assert!(e.contains("need --listen-tcp"), "{e}");
}

#[test]
fn the_token_is_required_and_compared() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "correct horse battery\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let server = tcp_server(&["--tcp-token-file", token.to_str().unwrap()]);
    let addr = server.tcp_addr();
    let mut ok = Client::connect_tcp_with(addr, Some(b"correct horse battery")).unwrap();
    assert_eq!(ok.ack.model_name(), "lobster_direction");
    exchange(&mut ok, 0, 50, 10);
    for wrong in [None, Some(&b"correct horse batterY"[..]), Some(b"correct horse"), Some(b"x")] {
        let e = Client::connect_tcp_with(addr, wrong).err().expect("refused");
        assert!(e.to_string().contains(&format!("status {}", Status::PermissionDenied.code())), "{e}");
    }
    // A refusal says nothing about the server.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(bytemuck::bytes_of(&MlHello::current())).unwrap();
    let mut ack = [0u8; HELLO_ACK_SIZE];
    s.read_exact(&mut ack).unwrap();
    let ack: MlHelloAck = bytemuck::pod_read_unaligned(&ack);
    assert_eq!(
        ({ ack.status }, ack.model_name(), { ack.price_scale }),
        (Status::PermissionDenied.code(), "", 0)
    );
    // The Unix socket needs no token (peer credentials decide there).
    exchange(&mut Client::connect(&server.socket).unwrap(), 0, 10, 10);
    let stats = server.stats_when(|s| s["tcp_auth_refusals"].as_u64() >= Some(5));
    assert!(stats["connections_refused"].as_u64() >= Some(5), "{stats}");
    assert!(server.log().contains("no token in its hello"), "{}", server.log());
}

#[test]
fn sigterm_drains_tcp_clients_in_flight() {
    for mode in ["inline", "pipeline"] {
        let mut server = tcp_server(&["--mode", mode, "--max-inflight", "1000"]);
        let addr = server.tcp_addr();
        let mut clients: Vec<Client<TcpStream>> =
            (0..4).map(|_| Client::connect_tcp(addr).unwrap()).collect();
        for (c, client) in clients.iter_mut().enumerate() {
            let reqs: Vec<MlRequest> = (0..600).map(|i| request(((c as u64) << 32) | i)).collect();
            client.send(&reqs).unwrap();
        }
        // SAFETY: kill(2) on our child's pid.
        unsafe { libc::kill(server.pid(), libc::SIGTERM) };
        for (c, client) in clients.iter_mut().enumerate() {
            for i in 0..600u64 {
                let r = client.recv().unwrap_or_else(|e| panic!("{mode}: client {c} lost answer {i}: {e}"));
                assert_eq!(({ r.request_id }, { r.status }), (((c as u64) << 32) | i, 0));
            }
            let mut rest = Vec::new();
            client.stream.read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty(), "then the server closes the connection");
        }
        let status = server.wait(Duration::from_secs(30));
        assert!(status.success(), "{mode}: exit status {status}:\n{}", server.log());
        assert!(TcpStream::connect(addr).is_err(), "{mode}: no longer listening");
    }
}

#[test]
fn a_client_finds_a_restarted_server_on_the_same_port() {
    let mut first = tcp_server(&[]);
    let addr = first.tcp_addr();
    let mut c = Client::connect_tcp(addr).unwrap();
    exchange(&mut c, 0, 20, 5);
    assert!(first.terminate().success());
    // The old connection is closed; TIME_WAIT sockets do not stop the new server binding.
    assert!(c.roundtrip(&request(99)).is_err());
    let second = Server::start(&["--listen-tcp", &addr.to_string()]);
    assert_eq!(second.tcp_addr(), addr);
    exchange(&mut Client::connect_tcp(addr).unwrap(), 100, 20, 5);
}

/// A real L2 path: the server in one network namespace, the C example client in another,
/// joined by a veth pair (the kernel's whole TCP stack, the allowlist on a real address).
#[test]
fn across_network_namespaces_over_veth() {
    let ns = match tickinfer::transport::netns::Pair::create("t") {
        Ok(ns) => ns,
        Err(why) => return util::skip("across_network_namespaces_over_veth", &why),
    };
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("client_example");
    util::compile("c", &[&util::repo_root().join("proto/examples/client_example.c")], &exe);
    let listen = format!("{}:7411", ns.server_ip);
    let allow = format!("{}/32", ns.client_ip);
    let cmd = ns.in_server(env!("CARGO_BIN_EXE_tickinfer"));
    let sdir = tempfile::tempdir().unwrap();
    let socket = sdir.path().join("tickinfer.sock");
    let server = Server::spawn_with(sdir, socket, &["--listen-tcp", &listen, "--tcp-allow", &allow], cmd);
    server.wait_ready();
    let out = util::run_ok(ns.in_client(exe.to_str().unwrap()).args([
        &format!("tcp://{listen}"),
        "2000",
        "block",
        "8",
    ]));
    assert!(out.contains("transport=tcp") && out.contains("mismatched=0"), "{out}");
    assert!(out.contains("status 0 (ok): 2000"), "{out}");
    // From the server's own namespace the loopback peer is not in the allowlist.
    let refused =
        ns.in_server(exe.to_str().unwrap()).args([&format!("tcp://{listen}"), "10"]).output().unwrap();
    assert!(!refused.status.success(), "a peer outside --tcp-allow is refused");
    let stats = server.stats_when(|s| s["tcp_peers_refused"].as_u64() >= Some(1));
    assert!(stats["tcp_connections"].as_u64() >= Some(1), "{stats}");
}

/// `--record` and a hot reload with a TCP client: its requests are captured in order, its
/// answers switch model version exactly once, and a new TCP connection is told the new one.
#[test]
fn record_and_reload_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let root = util::repo_root();
    let manifest = |version: u32| {
        let text = std::fs::read_to_string(root.join("models/lobster_direction.toml")).unwrap();
        let onnx = root.join("models/lobster_direction.onnx");
        let text = text
            .replace("version = 1", &format!("version = {version}"))
            .replace("onnx = \"lobster_direction.onnx\"", &format!("onnx = \"{}\"", onnx.display()));
        let path = dir.path().join(format!("v{version}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let (v1, v2) = (manifest(1), manifest(2));
    let capture = dir.path().join("tcp.tkcap");
    let mut server = tcp_server(&["--model", v1.to_str().unwrap(), "--record", capture.to_str().unwrap()]);
    let mut c = Client::connect_tcp(server.tcp_addr()).unwrap();
    assert_eq!({ c.ack.model_version }, 1);
    exchange(&mut c, 0, 100, 10);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tickinfer"))
        .args(["reload", "--socket", server.socket.to_str().unwrap(), "--model", v2.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let versions: Vec<u32> = (100..200).map(|i| c.roundtrip(&request(i)).unwrap().model_version).collect();
    assert_eq!(versions.last(), Some(&2), "{versions:?}");
    assert!(versions.windows(2).all(|w| w[0] <= w[1]), "one switch: {versions:?}");
    assert_eq!({ Client::connect_tcp(server.tcp_addr()).unwrap().ack.model_version }, 2);
    drop(c);
    assert!(server.terminate().success());
    let records = tickinfer::record::read_capture(&capture).unwrap().records;
    let ids: Vec<u64> = records.iter().map(|r| r.request.request_id).collect();
    assert_eq!(ids, (0..200).collect::<Vec<u64>>(), "every TCP request captured, in order");
}
