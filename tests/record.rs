//! `serve --record`: an existing file is refused unless `--record-overwrite`, a
//! write error (ENOSPC) is logged once with its cause and never costs serving,
//! the exit status or the final stats.
mod util;

use std::time::Duration;

use util::server::{request, Client, Server};

#[test]
fn an_existing_capture_is_refused_unless_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("old.tkcap");
    std::fs::write(&file, b"yesterday's capture").unwrap();
    let mut server = Server::spawn(&["--record", file.to_str().unwrap()]);
    let status = server.wait(Duration::from_secs(30));
    assert!(!status.success());
    assert!(server.log().contains("--record-overwrite"), "{}", server.log());
    assert_eq!(std::fs::read(&file).unwrap(), b"yesterday's capture", "untouched");

    let mut server = Server::start(&["--record", file.to_str().unwrap(), "--record-overwrite"]);
    let mut c = Client::connect(&server.socket).unwrap();
    c.send(&[request(1), request(2)]).unwrap();
    c.recv().unwrap();
    c.recv().unwrap();
    assert!(server.terminate().success());
    let cap = tickinfer::record::read_capture(&file).unwrap();
    assert_eq!(cap.records.len(), 2);
    assert!(server.log().contains("recorder: 2 requests written"), "{}", server.log());
}

#[test]
fn a_recorder_write_error_costs_neither_serving_nor_the_exit_status() {
    // /dev/full answers every write with ENOSPC.
    let mut server = Server::start(&["--record", "/dev/full", "--record-overwrite"]);
    let mut c = Client::connect(&server.socket).unwrap();
    for round in 0..20u64 {
        let reqs: Vec<_> = (0..100).map(|i| request(round * 100 + i)).collect();
        c.send(&reqs).unwrap();
        for _ in 0..100 {
            assert_eq!({ c.recv().unwrap().status }, 0);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = server.terminate();
    let log = server.log();
    assert!(status.success(), "{status:?}\n{log}");
    assert_eq!(log.matches("recording stops").count(), 1, "the error is logged once:\n{log}");
    assert!(log.contains("No space left on device"), "{log}");
    assert!(log.contains("0 dropped (writer fell behind)"), "drops are not blamed on a failed disk:\n{log}");
    assert!(log.contains("lost to a write error"), "{log}");
    assert!(log.contains("final stats"), "{log}");
}
