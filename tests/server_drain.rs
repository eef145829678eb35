//! SIGTERM/SIGINT: stop accepting, answer every request already sent, flush,
//! remove the socket, exit 0.
mod util;

use std::io::Read;

use tickinfer::wire::MlRequest;
use util::server::{request, Client, Server};

fn drain_loses_nothing(args: &[&str], signal: i32) {
    let mut server = Server::start(args);
    let mut clients: Vec<Client> = (0..4).map(|_| Client::connect(&server.socket).unwrap()).collect();
    // 600 requests per client, pipelined, sent before the signal.
    for (c, client) in clients.iter_mut().enumerate() {
        let reqs: Vec<MlRequest> = (0..600).map(|i| request(((c as u64) << 32) | i)).collect();
        client.send(&reqs).unwrap();
    }
    // SAFETY: kill(2) on our child's pid.
    unsafe { libc::kill(server.pid(), signal) };
    for (c, client) in clients.iter_mut().enumerate() {
        for i in 0..600u64 {
            let r =
                client.recv().unwrap_or_else(|e| panic!("client {c} lost answer {i}: {e}\n{}", server.log()));
            assert_eq!(({ r.request_id }, { r.status }), (((c as u64) << 32) | i, 0));
        }
        let mut rest = Vec::new();
        client.stream.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "then the server closes the connection");
    }
    let status = server.wait(std::time::Duration::from_secs(30));
    assert!(status.success(), "exit status {status}:\n{}", server.log());
    assert!(!server.socket.exists(), "socket file removed");
    assert!(!tickinfer::control::control_path(&server.socket).exists(), "control socket removed");
    assert!(Client::connect(&server.socket).is_err(), "no longer accepting");
    assert!(server.log().contains("drained"), "{}", server.log());
}

#[test]
fn sigterm_inline() {
    drain_loses_nothing(&["--mode", "inline", "--max-inflight", "1000"], libc::SIGTERM);
}

#[test]
fn sigint_pipeline() {
    drain_loses_nothing(&["--mode", "pipeline", "--max-inflight", "1000"], libc::SIGINT);
}
