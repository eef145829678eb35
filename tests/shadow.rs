//! Shadow candidates (`src/shadow.rs`): a shadow sees exactly the primary's requests in the
//! primary's order (a twin of a stateful model agrees on every answer and scores the same
//! signal quality); promotion under pipelined load from many connections loses, misorders
//! and duplicates nothing, switches each connection's model once, and answers warm at once;
//! a shadow that falls behind drops (counted) and leaves the primary untouched; a reload of
//! the primary keeps the shadow; the limits and refusals say why.
mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tickinfer::wire::{MlRequest, RESPONSE_WARMING};
use util::server::{Client, Server};
use util::{repo_root, stream_request};

/// The tests of this file one at a time: each loads the machine with a server, clients and
/// a shadow thread that runs at lowered priority on the cores left over.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A copy of the bundled stateful model's manifest named `name`, version `version` (the same
/// .onnx, by absolute path).
fn stateful_as(dir: &Path, name: &str, version: u32) -> PathBuf {
    let src = std::fs::read_to_string(repo_root().join("models/lobster_stateful.toml")).unwrap();
    let onnx = repo_root().join("models/lobster_stateful.onnx");
    let text = src
        .replacen("name = \"lobster_stateful\"", &format!("name = \"{name}\""), 1)
        .replace("version = 1", &format!("version = {version}"))
        .replace("onnx = \"lobster_stateful.onnx\"", &format!("onnx = \"{}\"", onnx.display()));
    assert!(text.contains(&format!("name = \"{name}\"")));
    let path = dir.join(format!("{name}_v{version}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// `tickinfer ARGS --socket S`: (success, stdout + stderr).
fn cli(server: &Server, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tickinfer"))
        .args(args)
        .args(["--socket", server.socket.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

/// Event `i` of symbol `symbol`'s stream with a request id unique across symbols.
fn event(i: u64, symbol: u16) -> MlRequest {
    MlRequest { request_id: ((symbol as u64) << 32) | i, ..stream_request(i, symbol) }
}

/// Send `n` events of `symbol` pipelined 64 at a time; every answer ok, in order.
fn stream(socket: &Path, symbol: u16, from: u64, n: u64) {
    let mut c = Client::connect(socket).unwrap();
    let reqs: Vec<MlRequest> = (from..from + n).map(|i| event(i, symbol)).collect();
    for window in reqs.chunks(64) {
        c.send(window).unwrap();
        for r in window {
            let a = c.recv().expect("an answer for every request");
            assert_eq!(({ a.request_id }, { a.status }), ({ r.request_id }, 0));
        }
    }
}

fn shadow<'a>(stats: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    stats["shadows"]
        .as_array()
        .and_then(|l| l.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no shadow {name} in {stats}"))
}

fn agreement(s: &serde_json::Value) -> (u64, u64) {
    let m = &s["agreement"];
    let (mut same, mut all) = (0, 0);
    for i in 0..3 {
        for j in 0..3 {
            let n = m[i][j].as_u64().unwrap();
            all += n;
            if i == j {
                same += n;
            }
        }
    }
    (same, all)
}

#[test]
fn a_twin_shadow_sees_every_request_in_order_and_agrees_on_every_answer() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let primary = stateful_as(dir.path(), "primary", 1);
    let twin = stateful_as(dir.path(), "twin", 1);
    // From the command line (`--shadow`, the config key `shadows`).
    let server = Server::start(&["--model", primary.to_str().unwrap(), "--shadow", twin.to_str().unwrap()]);
    server.stats_when(|s| s["shadows"].as_array().is_some_and(|l| l.len() == 1));
    // Four connections, one symbol each, concurrently: the shadow must see the primary's
    // interleaving. A stateful model's answers depend on each symbol's whole history, so a
    // request missed, repeated or reordered changes later answers.
    let per = 2_500u64;
    let threads: Vec<_> = (0..4u16)
        .map(|sym| {
            let socket = server.socket.clone();
            std::thread::spawn(move || stream(&socket, sym, 0, per))
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let total = 4 * per;
    let stats = server.stats_when(|s| {
        let t = shadow(s, "twin");
        t["scored"] == total && t["queued"] == 0 && s["signal_quality"]["answers"] == total
    });
    let t = shadow(&stats, "twin");
    assert_eq!((t["dropped"].as_u64(), t["gaps"].as_u64()), (Some(0), Some(0)), "{t}");
    let (same, all) = agreement(t);
    assert_eq!((same, all), (total, total), "the twin answered differently: {t}");
    assert_eq!(t["shadow_only_failed"], 0);
    assert_eq!(t["primary_only_failed"], 0);
    // The same answers in the same order: the same live signal quality, count for count.
    let (p, q) = (&stats["signal_quality"], &t["quality"]);
    for key in ["answers", "pending", "outcomes", "unscored", "since_load"] {
        assert_eq!(p[key], q[key], "{key}: primary {p} vs shadow {q}");
    }
    assert!(p["since_load"]["scored"].as_u64().unwrap() > 1_000, "a real test scores many answers: {p}");
    // Side by side in `tickinfer stats` and `shadow list`.
    let (ok, text) = cli(&server, &["stats"]);
    assert!(
        ok && text.contains("shadow twin v1") && text.contains("agreement with the primary 100.00 %"),
        "{text}"
    );
    let (ok, text) = cli(&server, &["shadow", "list"]);
    assert!(ok && text.contains("shadow twin v1"), "{text}");
}

#[test]
fn promotion_under_pipelined_load_answers_every_request_once_and_warm() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let v1 = stateful_as(dir.path(), "incumbent", 1);
    let v2 = stateful_as(dir.path(), "candidate", 2);
    let server = Server::start(&["--model", v1.to_str().unwrap(), "--mode", "pipeline"]);
    let (ok, text) = cli(&server, &["shadow", "add", "--model", v2.to_str().unwrap()]);
    assert!(ok && text.contains("shadow attached: candidate v2"), "{text}");
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    // Eight connections pipelining 32 at a time, one symbol each.
    let clients: Vec<_> = (0..8u16)
        .map(|sym| {
            let (socket, stop, sent) = (server.socket.clone(), stop.clone(), sent.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(&socket).unwrap();
                let mut i = 0u64;
                // (version, first answer of that version warming?) at each switch
                let mut switches: Vec<(u32, bool)> = Vec::new();
                let mut warm_after = None;
                while !(stop.load(Ordering::Relaxed) && i > 0) {
                    let reqs: Vec<MlRequest> = (i..i + 32).map(|k| event(k, sym)).collect();
                    c.send(&reqs).unwrap();
                    for r in &reqs {
                        let a = c.recv().expect("an answer for every request");
                        // In order, each once: the next answer is the next request's.
                        assert_eq!(({ a.request_id }, { a.status }), ({ r.request_id }, 0), "symbol {sym}");
                        let warming = a.flags & RESPONSE_WARMING != 0;
                        if !warming && warm_after.is_none() {
                            warm_after = Some(i);
                        }
                        let v = a.model_version;
                        if switches.last().map(|s| s.0) != Some(v) {
                            switches.push((v, warming));
                        }
                    }
                    i += 32;
                    sent.fetch_add(32, Ordering::Relaxed);
                    // A load the shadow keeps up with on two busy cores in a debug build (a
                    // shadow works on the cores the primary leaves free; under saturation it
                    // drops, the next test): 8 x 32 requests per 20 ms.
                    std::thread::sleep(Duration::from_millis(20));
                }
                (switches, warm_after)
            })
        })
        .collect();
    let wait_sent = |n: u64| {
        let t0 = Instant::now();
        while sent.load(Ordering::Relaxed) < n {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "clients stalled at {}",
                sent.load(Ordering::Relaxed)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Both warm on every symbol, then promote under load.
    wait_sent(8 * 1_500);
    server.stats_when(|s| shadow(s, "candidate")["warming_symbols"] == 0);
    let (ok, text) = cli(&server, &["promote", "--model", "candidate"]);
    assert!(ok && text.contains("now serving candidate v2"), "{text}");
    // The old primary is now the shadow: rollback is one more promote.
    let after = sent.load(Ordering::Relaxed);
    wait_sent(after + 8 * 500);
    server.stats_when(|s| shadow(s, "incumbent")["warming_symbols"] == 0);
    let (ok, text) = cli(&server, &["promote", "--model", "incumbent"]);
    assert!(ok && text.contains("now serving incumbent v1"), "{text}");
    let after = sent.load(Ordering::Relaxed);
    wait_sent(after + 8 * 500);
    stop.store(true, Ordering::Relaxed);
    for (sym, c) in clients.into_iter().enumerate() {
        let (switches, warm_after) = c.join().unwrap();
        let versions: Vec<u32> = switches.iter().map(|s| s.0).collect();
        assert_eq!(
            versions,
            [1, 2, 1],
            "symbol {sym}: each connection's model switches exactly at each promotion"
        );
        assert!(warm_after.is_some_and(|i| i < 1_000), "symbol {sym} never warmed");
        // The first answers of each promoted model carry no warming flag: its state was warm.
        assert!(switches[1..].iter().all(|s| !s.1), "symbol {sym}: warming after a promotion: {switches:?}");
    }
    let stats = server.stats_json();
    assert_eq!(stats["model"]["name"], "incumbent");
    let c = shadow(&stats, "candidate");
    assert_eq!(c["dropped"], 0, "{c}");
    assert!(server
        .log()
        .contains("promoted: candidate v2 serves from the next request, with its warm state"));
}

#[test]
fn a_shadow_that_falls_behind_drops_and_the_primary_answers_everything() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let v1 = stateful_as(dir.path(), "primary", 1);
    let slow = stateful_as(dir.path(), "slow", 1);
    let socket = dir.path().join("s.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tickinfer"));
    // 5 ms a run of at most 32: far slower than the primary; its 16 384-record queue fills.
    cmd.env("TICKINFER_TEST_SHADOW_DELAY_US", "5000");
    let server = Server::spawn_with(
        dir,
        socket,
        &["--model", v1.to_str().unwrap(), "--shadow", slow.to_str().unwrap()],
        cmd,
    );
    server.wait_ready();
    server.stats_when(|s| s["shadows"].as_array().is_some_and(|l| l.len() == 1));
    let per = 20_000u64;
    let threads: Vec<_> = (0..2u16)
        .map(|sym| {
            let socket = server.socket.clone();
            std::thread::spawn(move || stream(&socket, sym, 0, per))
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    // The primary answered every request (checked in `stream`) and counted them all.
    server.stats_when(|s| s["by_status"]["0 ok"] == 2 * per && s["responses"] == 2 * per);
    // Every request is scored by the shadow or counted as dropped, none twice.
    let t0 = Instant::now();
    loop {
        let stats = server.stats_json();
        let s = shadow(&stats, "slow");
        let (scored, dropped) = (s["scored"].as_u64().unwrap(), s["dropped"].as_u64().unwrap());
        assert!(scored + dropped <= 2 * per, "{s}");
        if scored + dropped == 2 * per {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "the shadow never drained: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let stats = server.stats_json();
    let s = shadow(&stats, "slow");
    assert!(s["dropped"].as_u64().unwrap() > 0 && s["gaps"].as_u64().unwrap() > 0, "{s}");
    // A shadow with a hole is not promoted without --force.
    if s["stale"] == true {
        let (ok, text) = cli(&server, &["promote", "--model", "slow"]);
        assert!(!ok && text.contains("stale after dropped requests"), "{text}");
        assert_eq!(server.stats_json()["model"]["name"], "primary");
    }
}

#[test]
fn a_reload_of_the_primary_keeps_its_shadow() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let v1 = stateful_as(dir.path(), "primary", 1);
    let v3 = stateful_as(dir.path(), "primary", 3);
    let twin = stateful_as(dir.path(), "twin", 1);
    let server = Server::start(&["--model", v1.to_str().unwrap(), "--shadow", twin.to_str().unwrap()]);
    server.stats_when(|s| s["shadows"].as_array().is_some_and(|l| l.len() == 1));
    stream(&server.socket, 1, 0, 600);
    let (ok, text) = cli(&server, &["reload", "--model", v3.to_str().unwrap()]);
    assert!(ok, "{text}");
    let mut c = Client::connect(&server.socket).unwrap();
    let a = c.roundtrip(&event(600, 1)).unwrap();
    assert_eq!(({ a.status }, { a.model_version }), (0, 3));
    stream(&server.socket, 1, 601, 599);
    let stats =
        server.stats_when(|s| shadow(s, "twin")["scored"] == 1_200 && shadow(s, "twin")["queued"] == 0);
    let t = shadow(&stats, "twin");
    assert_eq!(agreement(t).1, 1_200, "compared with the primary before and after its reload: {t}");
    assert_eq!(t["dropped"], 0);
}

#[test]
fn shadows_are_limited_named_and_checked() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let v1 = stateful_as(dir.path(), "primary", 1);
    let server = Server::start(&["--model", v1.to_str().unwrap()]);
    let (ok, text) = cli(&server, &["shadow", "list"]);
    assert!(ok && text.contains("no shadow attached"), "{text}");
    let (ok, text) = cli(&server, &["promote", "--model", "nobody"]);
    assert!(!ok && text.contains("no shadow named `nobody`"), "{text}");
    for k in 0..4 {
        let m = stateful_as(dir.path(), &format!("s{k}"), 1);
        let (ok, text) = cli(&server, &["shadow", "add", "--model", m.to_str().unwrap()]);
        assert!(ok, "{text}");
    }
    let extra = stateful_as(dir.path(), "s4", 1);
    let (ok, text) = cli(&server, &["shadow", "add", "--model", extra.to_str().unwrap()]);
    assert!(!ok && text.contains("4 shadows are attached already"), "{text}");
    let (ok, text) = cli(&server, &["shadow", "remove", "--model", "s2"]);
    assert!(ok, "{text}");
    let again = stateful_as(dir.path(), "s0", 2);
    let (ok, text) = cli(&server, &["shadow", "add", "--model", again.to_str().unwrap()]);
    assert!(!ok && text.contains("a shadow named `s0` is attached already"), "{text}");
    // A model the clients' hello would not fit (another price scale) cannot shadow: it could
    // not be promoted.
    let text = std::fs::read_to_string(&extra).unwrap().replace("price_scale = 10000", "price_scale = 100");
    let other = dir.path().join("other_scale.toml");
    std::fs::write(&other, text).unwrap();
    let (ok, text) = cli(&server, &["shadow", "add", "--model", other.to_str().unwrap()]);
    assert!(!ok && text.contains("price_scale 100 differs"), "{text}");
    let stats = server.stats_json();
    let names: Vec<&str> =
        stats["shadows"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["s0", "s1", "s3"]);
    // Three events of a symbol: every shadow is still warming it. Refused without --force.
    stream(&server.socket, 7, 0, 3);
    server.stats_when(|s| shadow(s, "s1")["warming_symbols"] == 1);
    let (ok, text) = cli(&server, &["promote", "--model", "s1"]);
    assert!(!ok && text.contains("still warming"), "{text}");
    assert_eq!(server.stats_json()["model"]["name"], "primary");
    let (ok, text) = cli(&server, &["promote", "--model", "s1", "--force"]);
    assert!(ok && text.contains("now serving s1 v1"), "{text}");
    let stats = server.stats_json();
    assert_eq!(stats["model"]["name"], "s1");
    let names: Vec<&str> =
        stats["shadows"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["s0", "primary", "s3"], "the old primary took the promoted shadow's place");
}
