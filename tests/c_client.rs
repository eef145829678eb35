//! The C client library and the C/C++ example programs, compiled with the
//! system compiler and run against the real `tickinfer serve`.
mod util;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;

use tickinfer::wire::{MlHello, MlHelloAck, Status, HELLO_ACK_SIZE, PROTOCOL_VERSION};
use util::server::Server;
use util::{compile, repo_root};

fn run(exe: &std::path::Path, args: &[&str]) -> String {
    util::run_ok(Command::new(exe).args(args))
}

fn field(out: &str, key: &str) -> u64 {
    let tok = out.split_whitespace().find_map(|t| t.strip_prefix(&format!("{key}="))).unwrap();
    tok.parse().unwrap_or_else(|_| panic!("{key} in {out}"))
}

#[test]
fn c_example_round_trips_spin_and_block() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("client_example");
    compile("c", &[&repo_root().join("proto/examples/client_example.c")], &exe);
    let path = server.socket.to_str().unwrap();

    let out = run(&exe, &[path, "2000", "spin", "1"]);
    assert_eq!(field(&out, "received"), 2000);
    assert_eq!(field(&out, "mismatched"), 0);
    assert!(out.contains("status 0 (ok): 2000"), "{out}");
    assert!(field(&out, "p50") > 0 && field(&out, "p50") <= field(&out, "p99"));
    assert!(field(&out, "p99") <= field(&out, "p999") && field(&out, "p999") <= field(&out, "max"));

    let out = run(&exe, &[path, "3000", "block", "32", "0"]);
    assert_eq!(field(&out, "received"), 3000);
    assert_eq!(field(&out, "mismatched"), 0);
    assert!(out.contains("status 0 (ok): 3000"), "{out}");
}

#[test]
fn cxx_example_round_trips_batches() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("client_example_cpp");
    compile("c++", &[&repo_root().join("proto/examples/client_example.cpp")], &exe);
    let out = run(&exe, &[server.socket.to_str().unwrap(), "2000", "16"]);
    assert_eq!(field(&out, "received"), 2000);
    assert_eq!(field(&out, "mismatched"), 0);
    assert!(out.contains("status 0 (ok): 2000"), "{out}");
}

#[test]
fn c_client_error_paths() {
    // The LightGBM fixture reads 2 extra features, so NaN in one is checked.
    let model = repo_root().join("tests/fixtures/models/lgbm_direction.toml");
    let server = Server::start(&["--model", model.to_str().unwrap()]);
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("client_errors");
    compile("c", &[&repo_root().join("tests/c/client_errors.c")], &exe);
    let out = run(&exe, &[server.socket.to_str().unwrap()]);
    assert!(out.contains("all checks passed"), "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("ok ")).count(), 16, "{out}");
}

/// A client built against another layout is refused in the ack, never answered.
#[test]
fn other_layout_or_version_is_refused_in_the_ack() {
    let server = Server::start(&[]);
    for (hello, want) in [
        (MlHello { request_size: 130, ..MlHello::current() }, Status::Layout),
        (MlHello { max_features: 16, ..MlHello::current() }, Status::Layout),
        (MlHello { version: PROTOCOL_VERSION + 1, ..MlHello::current() }, Status::Version),
        (MlHello { magic: 0x1234_5678, ..MlHello::current() }, Status::BadFrame),
    ] {
        let mut s = UnixStream::connect(&server.socket).unwrap();
        s.write_all(bytemuck::bytes_of(&hello)).unwrap();
        let mut ack = [0u8; HELLO_ACK_SIZE];
        s.read_exact(&mut ack).unwrap();
        let ack: MlHelloAck = bytemuck::pod_read_unaligned(&ack);
        assert_eq!({ ack.status }, want.code(), "{hello:?}");
        assert_eq!(s.read(&mut [0u8; 8]).unwrap(), 0, "connection closed after refusal");
    }
}

/// The C client over TCP (`ml_client_connect_tcp`, `_auth`): ids in order, statuses in
/// place, stamps, the token; and the example's `tcp://host:port`.
#[test]
fn c_client_over_tcp() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "tcp-test-token\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let server = Server::start(&["--listen-tcp", "127.0.0.1:0", "--tcp-token-file", token.to_str().unwrap()]);
    let addr = server.tcp_addr();
    let exe = dir.path().join("tcp_client");
    compile("c", &[&repo_root().join("tests/c/tcp_client.c")], &exe);
    let out = run(&exe, &[&addr.ip().to_string(), &addr.port().to_string(), "tcp-test-token"]);
    assert!(out.contains("all checks passed"), "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("ok ")).count(), 10, "{out}");

    let example = dir.path().join("client_example");
    compile("c", &[&repo_root().join("proto/examples/client_example.c")], &example);
    let url = format!("tcp://{addr}");
    let out = util::run_ok(
        Command::new(&example)
            .args([url.as_str(), "2000", "spin", "16"])
            .env("TICKINFER_TCP_TOKEN", "tcp-test-token"),
    );
    assert!(out.contains("transport=tcp"), "{out}");
    assert_eq!((field(&out, "received"), field(&out, "mismatched")), (2000, 0), "{out}");
    assert!(out.contains("status 0 (ok): 2000"), "{out}");
    let bad = Command::new(&example).args([url.as_str(), "10"]).output().unwrap();
    assert!(!bad.status.success(), "no token: refused");
}
