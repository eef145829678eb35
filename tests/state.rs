//! Per-symbol state through the real server: the warming flag, the symbol bound,
//! batching never changing an answer, reset, and reload keeping or clearing the
//! state. The model is `tests/fixtures/models/stateful_linear` (history 20 events).
mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tickinfer::wire::{MlRequest, MlResponse, Status, RESPONSE_WARMING};
use util::repo_root;
use util::server::{Client, Server};

const HISTORY: u64 = 20;

fn model() -> PathBuf {
    repo_root().join("tests/fixtures/models/stateful_linear.toml")
}

/// Request `i` of the test market stream, for `symbol`.
fn tick(i: u64, symbol: u16) -> MlRequest {
    util::stream_request(i, symbol)
}

fn one(c: &mut Client, r: MlRequest) -> MlResponse {
    c.send(&[r]).unwrap();
    let resp = c.recv().unwrap();
    assert_eq!({ resp.request_id }, { r.request_id });
    resp
}

fn warming(r: &MlResponse) -> bool {
    r.flags & RESPONSE_WARMING != 0
}

fn control(server: &Server, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tickinfer"))
        .args(args)
        .args(["--socket", server.socket.to_str().unwrap()])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{args:?}: {text}");
    text
}

#[test]
fn warming_flag_and_the_symbol_bound() {
    let server = Server::start(&["--model", model().to_str().unwrap(), "--max-symbols", "2"]);
    assert!(server.log().contains("per-symbol state: 2 symbols"), "{}", server.log());
    let mut c = Client::connect(&server.socket).unwrap();
    for i in 0..HISTORY + 5 {
        let r = one(&mut c, tick(i, 1));
        assert_eq!({ r.status }, 0);
        assert_eq!(warming(&r), i < HISTORY, "event {i} of symbol 1");
    }
    assert_eq!({ one(&mut c, tick(100, 2)).status }, 0, "a second symbol gets the second slot");
    let r = one(&mut c, tick(101, 3));
    assert_eq!(Status::from_code(r.status), Some(Status::TooManySymbols), "no slot is left for a third");
    assert_eq!({ one(&mut c, tick(102, 1)).status }, 0, "the others keep being served");
    // An invalid request never touches the state: symbol 2 stays at one event.
    let mut bad = tick(103, 2);
    bad.bid_price = 0;
    assert_eq!(Status::from_code(one(&mut c, bad).status), Some(Status::BadPrice));
    for i in 0..HISTORY - 1 {
        assert!(warming(&one(&mut c, tick(200 + i, 2))), "symbol 2 valid event {}", i + 2);
    }
    assert!(!warming(&one(&mut c, tick(300, 2))), "symbol 2's 21st valid event is warm");
}

/// The same pipelined stream of 6 symbols through a server running one request per
/// model run (inline) and one running up to 32 (pipeline mode: the state lives on the
/// worker): the same answers, flags included.
#[test]
fn batching_never_changes_an_answer_through_the_server() {
    let reqs: Vec<MlRequest> = (0..3000u64).map(|i| tick(i, (i % 6) as u16)).collect();
    let answers =
        |max_batch: &str, mode: &str| util::server::pipelined_answers(&model(), max_batch, mode, &reqs);
    let (one, batched) = (answers("1", "inline"), answers("32", "pipeline"));
    assert_eq!(one.len(), 3000);
    assert!(one.iter().all(|a| a.3 == 0));
    assert_eq!(one.iter().filter(|a| a.4 & RESPONSE_WARMING != 0).count() as u64, 6 * HISTORY);
    assert_eq!(one, batched, "batch 1 and batch 32 answers differ");
}

fn manifest_copy(dir: &Path, version: u32, edit: impl Fn(String) -> String) -> PathBuf {
    let src = std::fs::read_to_string(model()).unwrap();
    let onnx = repo_root().join("tests/fixtures/models/stateful_linear.onnx");
    let text = src
        .replace("version = 1", &format!("version = {version}"))
        .replace("onnx = \"stateful_linear.onnx\"", &format!("onnx = \"{}\"", onnx.display()));
    let path = dir.join(format!("v{version}.toml"));
    std::fs::write(&path, edit(text)).unwrap();
    path
}

#[test]
fn reset_and_reload_keep_or_clear_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--model", model().to_str().unwrap()]);
    let mut c = Client::connect(&server.socket).unwrap();
    let mut id = 0;
    let mut next = |c: &mut Client, symbol: u16| {
        id += 1;
        one(c, tick(id, symbol))
    };
    let warm_up = |c: &mut Client, next: &mut dyn FnMut(&mut Client, u16) -> MlResponse| {
        for _ in 0..HISTORY {
            next(c, 1);
            next(c, 2);
        }
    };
    warm_up(&mut c, &mut next);
    assert!(!warming(&next(&mut c, 1)) && !warming(&next(&mut c, 2)));

    // One symbol's reset (a session start for one instrument).
    assert!(control(&server, &["reset", "--symbol", "1"]).contains("symbol 1 reset"));
    assert!(warming(&next(&mut c, 1)), "symbol 1 starts over");
    assert!(!warming(&next(&mut c, 2)), "symbol 2 keeps its history");

    // A reload with the same stateful features keeps every symbol's state.
    let same = manifest_copy(dir.path(), 2, |t| t);
    control(&server, &["reload", "--model", same.to_str().unwrap()]);
    let r = next(&mut c, 2);
    assert_eq!(({ r.model_version }, warming(&r)), (2, false), "same features: state kept");
    assert!(server.log().contains("state kept"), "{}", server.log());

    // Another window within what is already kept (the ring holds 20 events): state kept.
    let wider = manifest_copy(dir.path(), 3, |t| t.replace("ofi(10)", "ofi(12)"));
    control(&server, &["reload", "--model", wider.to_str().unwrap()]);
    let r = next(&mut c, 2);
    assert_eq!(({ r.model_version }, warming(&r)), (3, false), "same state kept per symbol");
    // Another EWMA half-life: the accumulators mean something else, every symbol starts empty.
    let other =
        manifest_copy(dir.path(), 4, |t| t.replace("ewma_mid_return_bps(4)", "ewma_mid_return_bps(8)"));
    control(&server, &["reload", "--model", other.to_str().unwrap()]);
    let r = next(&mut c, 2);
    assert_eq!(({ r.model_version }, warming(&r)), (4, true), "new state: cleared");
    assert!(server.log().contains("state starts empty"), "{}", server.log());

    // Everyone's reset.
    warm_up(&mut c, &mut next);
    assert!(!warming(&next(&mut c, 1)));
    control(&server, &["reset"]);
    assert!(warming(&next(&mut c, 1)) && warming(&next(&mut c, 2)), "every symbol starts over");
}

/// One client sending new symbol ids cannot fill the table for good: `reset` frees the
/// slots it clears, and with `--evict-idle-symbols-ms` a new symbol takes the slot of the
/// least recently seen one once that one is idle that long (its history is lost; counted
/// and logged). State is per symbol, whichever connection sends it.
#[test]
fn reset_frees_slots_and_idle_symbols_give_theirs_up() {
    let server = Server::start(&["--model", model().to_str().unwrap(), "--max-symbols", "2"]);
    let mut c = Client::connect(&server.socket).unwrap();
    let status = |r: MlResponse| Status::from_code(r.status);
    assert_eq!(status(one(&mut c, tick(1, 1))), Some(Status::Ok));
    assert_eq!(status(one(&mut c, tick(2, 2))), Some(Status::Ok));
    assert_eq!(status(one(&mut c, tick(3, 3))), Some(Status::TooManySymbols), "the table is full");
    control(&server, &["reset", "--symbol", "1"]);
    assert_eq!(status(one(&mut c, tick(4, 3))), Some(Status::Ok), "the reset freed symbol 1's slot");
    assert_eq!(status(one(&mut c, tick(5, 1))), Some(Status::TooManySymbols), "which symbol 3 now holds");
    control(&server, &["reset"]);
    let mut other = Client::connect(&server.socket).unwrap();
    assert_eq!(status(one(&mut other, tick(6, 4))), Some(Status::Ok), "every slot freed");
    assert_eq!(status(one(&mut c, tick(7, 5))), Some(Status::Ok));
    // Shared across connections, by symbol: symbol 4's events alternate between the two
    // connections, and its history counts them all (warm after HISTORY events in all).
    for i in 1..HISTORY {
        let conn = if i % 2 == 0 { &mut other } else { &mut c };
        assert!(warming(&one(conn, tick(10 + i, 4))), "event {} of symbol 4", i + 1);
    }
    assert!(!warming(&one(&mut other, tick(40, 4))), "one history per symbol, across connections");

    let server = Server::start(&[
        "--model",
        model().to_str().unwrap(),
        "--max-symbols",
        "2",
        "--evict-idle-symbols-ms",
        "300",
    ]);
    let mut c = Client::connect(&server.socket).unwrap();
    let mut id = 100;
    let mut send = |c: &mut Client, symbol: u16| {
        id += 1;
        status(one(c, tick(id, symbol)))
    };
    for _ in 0..HISTORY + 1 {
        send(&mut c, 1);
        send(&mut c, 2);
    }
    assert!(!warming(&one(&mut c, tick(500, 1))), "symbol 1 is warm");
    assert_eq!(send(&mut c, 3), Some(Status::TooManySymbols), "nobody idle 300 ms yet");
    // Symbol 2 keeps trading; symbol 1 goes quiet.
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(send(&mut c, 2), Some(Status::Ok));
    }
    assert_eq!(send(&mut c, 3), Some(Status::Ok), "symbol 1, idle 480 ms, gave its slot");
    assert_eq!(send(&mut c, 2), Some(Status::Ok), "symbol 2 kept its own");
    assert_eq!(send(&mut c, 1), Some(Status::TooManySymbols), "symbol 1 lost its slot (2 and 3 are recent)");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(send(&mut c, 3), Some(Status::Ok));
    let r = one(&mut c, tick(900, 1));
    assert_eq!(status(r), Some(Status::Ok), "symbol 1 back in symbol 2's slot (2 idle longest)");
    assert!(warming(&r), "its history was lost: warming again");
    let stats = server.stats_when(|s| s["symbols_evicted"].as_u64() >= Some(2));
    assert_eq!(stats["symbols_evicted"], 2, "{stats}");
    assert!(server.log().contains("takes the state slot of symbol 1"), "{}", server.log());
}
