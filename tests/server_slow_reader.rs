//! A client that sends but does not read never stalls the loop or a fast client;
//! past the write-buffer bound it is disconnected with a log line.
mod util;

use std::time::Duration;

use tickinfer::wire::MlRequest;
use util::server::{request, Client, Server};

fn fast_round_trips(server: &Server, n: u64) {
    let mut c = Client::connect(&server.socket).unwrap();
    for id in 0..n {
        c.send(&[request(id)]).unwrap();
        let r = c.recv().unwrap();
        assert_eq!(({ r.request_id }, { r.status }), (id, 0));
    }
}

#[test]
fn slow_reader_never_stalls_a_fast_client_and_is_cut_off_past_its_bound() {
    for mode in ["inline", "pipeline"] {
        let server = Server::start(&["--mode", mode, "--write-buffer-limit", "65536"]);

        // A reader that never reads, with a small backlog: buffered, not disconnected.
        let mut lazy = Client::connect(&server.socket).unwrap();
        let reqs: Vec<MlRequest> = (0..200).map(request).collect();
        lazy.send(&reqs).unwrap();
        fast_round_trips(&server, 1000);

        // A reader that never reads and floods: its answers pile up past the bound.
        let socket = server.socket.clone();
        let flood = std::thread::spawn(move || {
            let mut c = Client::connect(&socket).unwrap();
            c.stream.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
            let reqs: Vec<MlRequest> = (0..256).map(request).collect();
            // Until the server hangs up (EPIPE/ECONNRESET), within bounds: 20k batches or 20 s.
            let t0 = std::time::Instant::now();
            for k in 0..20_000 {
                if let Err(e) = c.send(&reqs) {
                    eprintln!("flood: cut off after {k} batches of 256 ({e})");
                    return true;
                }
                if t0.elapsed() > Duration::from_secs(20) {
                    break;
                }
            }
            false
        });
        // The fast client keeps its service while the flood goes on.
        fast_round_trips(&server, 2000);
        let flooded = flood.join().unwrap();
        assert!(flooded, "{mode}: the flooding slow reader was never disconnected:\n{}", server.log());
        assert!(server.log().contains("slow reader"), "no log line:\n{}", server.log());
        fast_round_trips(&server, 100);

        // The lazy reader's answers were kept all along: it can still read them, in order.
        for id in 0..200 {
            assert_eq!({ lazy.recv().unwrap().request_id }, id);
        }
    }
}
