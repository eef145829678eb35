//! A full round trip over the socket, in process: the server (inline, spin,
//! pinned) on one thread, a busy-polling client on this one. Criterion gives the
//! mean; `tickinfer bench` gives the percentiles.
use criterion::{criterion_group, criterion_main, Criterion};
use std::io::{Read, Write};
use tickinfer::server::{Mode, PollMode, ServerConfig};
use tickinfer::wire::{MlHello, MlRequest, MlResponse, HELLO_ACK_SIZE, RESPONSE_SIZE};

fn bench(c: &mut Criterion) {
    let model = tickinfer::source_root().join("models/lobster_direction.toml");
    let mut cfg = ServerConfig::new(&model, "unused");
    cfg.mode = Mode::Inline;
    cfg.poll = PollMode::Spin;
    cfg.stats_interval = std::time::Duration::ZERO;
    let server = tickinfer::replay::LocalServer::start(cfg).expect("server starts");
    let mut s = std::os::unix::net::UnixStream::connect(&server.socket).unwrap();
    s.write_all(bytemuck::bytes_of(&MlHello::current())).unwrap();
    let mut ack = [0u8; HELLO_ACK_SIZE];
    s.read_exact(&mut ack).unwrap();
    s.set_nonblocking(true).unwrap();
    let req = MlRequest {
        bid_price: 2_230_000,
        ask_price: 2_230_100,
        bid_size: 300,
        ask_size: 100,
        request_id: 42,
        ..MlRequest::new()
    };
    let mut buf = [0u8; RESPONSE_SIZE];
    let mut round_trip = || {
        let mut bytes: &[u8] = bytemuck::bytes_of(&req);
        while !bytes.is_empty() {
            if let Ok(n) = s.write(bytes) {
                bytes = &bytes[n..];
            }
        }
        let mut got = 0;
        while got < RESPONSE_SIZE {
            if let Ok(n) = s.read(&mut buf[got..]) {
                got += n;
            }
        }
        let resp: MlResponse = bytemuck::pod_read_unaligned(&buf);
        resp
    };
    let first = round_trip();
    assert_eq!(({ first.request_id }, { first.status }), (42, 0), "works before it is timed");
    c.bench_function("roundtrip/socket_inline_spin", |b| b.iter(&mut round_trip));
    drop(s);
    server.stop().unwrap();
}

criterion_group!(benches, bench);
criterion_main!(benches);
