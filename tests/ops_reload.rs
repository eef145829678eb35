//! Hot reload under load: zero failed or lost requests, and on every connection
//! the model version switches at exactly one point. A bad model is refused with
//! the reason and the old one keeps answering. SIGHUP re-reads the config file.
mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tickinfer::wire::MlRequest;
use util::repo_root;
use util::server::{request, Client, Server};

/// A copy of the default manifest with another version (same .onnx by absolute path).
fn manifest_version(dir: &Path, version: u32) -> PathBuf {
    let src = std::fs::read_to_string(repo_root().join("models/lobster_direction.toml")).unwrap();
    let onnx = repo_root().join("models/lobster_direction.onnx");
    let text = src
        .replace("version = 1", &format!("version = {version}"))
        .replace("onnx = \"lobster_direction.onnx\"", &format!("onnx = \"{}\"", onnx.display()));
    let path = dir.join(format!("v{version}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn reload(server: &Server, model: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tickinfer"))
        .args(["reload", "--socket", server.socket.to_str().unwrap(), "--model", model.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

fn reload_under_load(mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let v1 = manifest_version(dir.path(), 1);
    let v2 = manifest_version(dir.path(), 2);
    let server = Server::start(&["--model", v1.to_str().unwrap(), "--mode", mode]);
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8u64)
        .map(|c| {
            let (socket, stop) = (server.socket.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut cl = Client::connect(&socket).unwrap();
                let (mut id, mut versions) = (0u64, Vec::<u32>::new());
                while !stop.load(Ordering::Relaxed) || versions.last() != Some(&2) {
                    let reqs: Vec<MlRequest> = (id..id + 16).map(|i| request((c << 40) | i)).collect();
                    cl.send(&reqs).unwrap();
                    for i in id..id + 16 {
                        let r = cl.recv().expect("lost answer");
                        assert_eq!(({ r.request_id }, { r.status }), ((c << 40) | i, 0), "client {c}");
                        let v = r.model_version;
                        if versions.last() != Some(&v) {
                            versions.push(v);
                        }
                    }
                    id += 16;
                }
                (id, versions)
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (ok, out) = reload(&server, &v2);
    assert!(ok && out.contains("now serving lobster_direction v2"), "{out}");
    std::thread::sleep(std::time::Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for t in clients {
        let (answered, versions) = t.join().expect("client failed");
        assert!(answered > 0);
        assert_eq!(versions, vec![1, 2], "the version switches exactly once per connection");
        total += answered;
    }
    eprintln!("reload under load ({mode}): 8 connections, {total} requests answered, 0 failed or lost, one v1→v2 switch each");
    // New connections are told the new version.
    assert_eq!({ Client::connect(&server.socket).unwrap().ack.model_version }, 2);
}

#[test]
fn reload_under_load_inline() {
    reload_under_load("inline");
}

#[test]
fn reload_under_load_pipeline() {
    reload_under_load("pipeline");
}

#[test]
fn bad_models_are_refused_and_the_old_one_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&[]);
    let lgbm = repo_root().join("tests/fixtures/models/lgbm_direction.toml");
    let (ok, out) = reload(&server, &lgbm);
    assert!(!ok && out.contains("extra features"), "{out}");
    let broken = dir.path().join("broken.toml");
    let text = std::fs::read_to_string(manifest_version(dir.path(), 5)).unwrap();
    std::fs::write(&broken, text.replace("name = \"input\"", "name = \"nope\"")).unwrap();
    let (ok, out) = reload(&server, &broken);
    assert!(!ok && out.contains("input `nope` named in the manifest is not a model input"), "{out}");
    let (ok, out) = reload(&server, &dir.path().join("missing.toml"));
    assert!(!ok && out.contains("missing.toml"), "{out}");
    let mut c = Client::connect(&server.socket).unwrap();
    c.send(&[request(1)]).unwrap();
    let r = c.recv().unwrap();
    assert_eq!(({ r.status }, { r.model_version }), (0, 1), "old model still answering");
    assert!(server.log().contains("refused, the old model keeps serving"), "{}", server.log());
}

#[test]
fn sighup_rereads_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = manifest_version(dir.path(), 1);
    let v7 = manifest_version(dir.path(), 7);
    let config = dir.path().join("serve.toml");
    std::fs::write(&config, format!("model = \"{}\"\n", v1.display())).unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap(), "--model", v1.to_str().unwrap()]);
    let mut c = Client::connect(&server.socket).unwrap();
    assert_eq!({ c.ack.model_version }, 1);
    // The flag wins over the file at start; SIGHUP re-reads `model` from the file.
    std::fs::write(&config, format!("model = \"{}\"\n", v7.display())).unwrap();
    // SAFETY: kill(2) on our child's pid.
    unsafe { libc::kill(server.pid(), libc::SIGHUP) };
    let t0 = std::time::Instant::now();
    loop {
        c.send(&[request(9)]).unwrap();
        if c.recv().unwrap().model_version == 7 {
            break;
        }
        assert!(t0.elapsed().as_secs() < 20, "no reload after SIGHUP:\n{}", server.log());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A reload with no traffic at all is swapped in at once, in every mode and poll
/// mode (it used to wait for the next request and give up after 30 s).
#[test]
fn reload_on_an_idle_server_swaps_in_every_mode() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = manifest_version(dir.path(), 1);
    let v2 = manifest_version(dir.path(), 2);
    for mode in ["inline", "pipeline"] {
        for poll in ["spin", "adaptive", "block"] {
            let server = Server::start(&["--model", v1.to_str().unwrap(), "--mode", mode, "--poll", poll]);
            let t0 = std::time::Instant::now();
            let (ok, out) = reload(&server, &v2);
            let took = t0.elapsed();
            assert!(ok && out.contains("now serving lobster_direction v2"), "{mode}/{poll}: {out}");
            // Generous: a reload that waits for traffic takes 30 s and fails; a working one, a
            // model load and warm-up (~0.1 s here).
            assert!(took < std::time::Duration::from_secs(10), "{mode}/{poll}: reload took {took:?}");
            eprintln!("idle reload {mode}/{poll}: {took:?} (model load and warm-up included)");
            let mut c = Client::connect(&server.socket).unwrap();
            assert_eq!({ c.ack.model_version }, 2, "{mode}/{poll}: new connections are told v2");
            c.send(&[request(1)]).unwrap();
            assert_eq!({ c.recv().unwrap().model_version }, 2, "{mode}/{poll}");
        }
    }
}

/// A reload that reports failure did not swap: with no scoring thread to take
/// the engine, the reload times out, and a scoring thread that polls afterwards
/// finds nothing to swap in (the engine was taken back).
#[test]
fn a_reload_reported_failed_never_swaps() {
    use tickinfer::engine::Engine;
    use tickinfer::server::reload::ReloadSlot;
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = (manifest_version(dir.path(), 1), manifest_version(dir.path(), 2));
    let opts = util::test_engine_options();
    let mut serving = Engine::load(&v1, &opts).unwrap();
    let slot = Arc::new(ReloadSlot::with_swap_timeout(std::time::Duration::from_millis(50)));
    slot.set_current(serving.info().clone(), v1.clone(), opts.clone());
    let err = slot.reload(&v2).unwrap_err();
    assert!(err.contains("not swapped"), "{err}");
    assert!(!slot.poll(&mut serving), "a failed reload left an engine behind to swap in");
    assert_eq!((serving.info().version, slot.swaps()), (1, 0));
    assert_eq!(slot.reloads_failed.load(Ordering::Relaxed), 1);
    // With a scoring thread polling, the same reload succeeds and the swap is visible.
    let (s, stop) = (slot.clone(), Arc::new(AtomicBool::new(false)));
    let st = stop.clone();
    let scorer = std::thread::spawn(move || {
        while !st.load(Ordering::Relaxed) {
            s.poll(&mut serving);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        serving.info().version
    });
    let ok = ReloadSlot::reload(&slot, &v2);
    stop.store(true, Ordering::Relaxed);
    assert_eq!(ok.map(|i| i.version), Ok(2));
    assert_eq!(scorer.join().unwrap(), 2);
    assert_eq!(slot.swaps(), 1);
}

/// A loader bug (here a panic made on purpose, `TICKINFER_TEST_LOADER_PANIC`) refuses the
/// reload and nothing else: the old model keeps answering, and later reloads and resets
/// work (the reload lock is not left poisoned).
#[test]
fn a_reload_whose_loader_panics_is_refused_and_reloads_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = (manifest_version(dir.path(), 1), manifest_version(dir.path(), 2));
    let panicky = dir.path().join("panicky.toml");
    let text =
        std::fs::read_to_string(&v2).unwrap().replace("name = \"lobster_direction\"", "name = \"panicky\"");
    std::fs::write(&panicky, text).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tickinfer"));
    cmd.env("TICKINFER_TEST_LOADER_PANIC", "panicky");
    let sock = dir.path().join("tickinfer.sock");
    let serve_dir = tempfile::tempdir().unwrap();
    let server =
        Server::spawn_with(serve_dir, sock, &["--model", v1.to_str().unwrap(), "--backend", "native"], cmd);
    server.wait_ready();
    let mut c = Client::connect(&server.socket).unwrap();
    for _ in 0..2 {
        let (ok, out) = reload(&server, &panicky);
        assert!(!ok && out.contains("panicked") && out.contains("on purpose"), "{out}");
        let r = c.roundtrip(&request(1)).unwrap();
        assert_eq!((r.status, r.model_version), (0, 1), "the old model keeps answering");
    }
    // Counted and logged as a refused reload, like any other.
    let log = server.log();
    assert_eq!(
        log.matches("refused, the old model keeps serving: loading the model panicked").count(),
        2,
        "{log}"
    );
    let (ok, out) = reload(&server, &v2);
    assert!(ok, "a later reload works: {out}");
    let r = c.roundtrip(&request(2)).unwrap();
    assert_eq!((r.status, r.model_version), (0, 2));
    let reset = Command::new(env!("CARGO_BIN_EXE_tickinfer"))
        .args(["reset", "--socket", server.socket.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(reset.status.success(), "reset still works: {}", String::from_utf8_lossy(&reset.stderr));
}
