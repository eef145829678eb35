//! The shared-memory transport against the real server: order, ids, statuses
//! and stamps; the in-flight bound; many shm and socket clients at once with
//! random disconnects; a client that scribbles over its region; a client killed
//! mid-stream; a drain with shm clients in flight; the C client.
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
        assert!({ g.server_recv_ns } <= { g.server_send_ns } && { g.server_send_ns } <= now, "stamps in order");
        assert_eq!({ g.frame_end }, tickinfer::wire::RESPONSE_END);
    }
    let stats = server.stats_when(|s| s["responses"].as_u64() >= Some(6000));
    assert_eq!(stats["shm_sessions"], 1, "{stats}");
}
