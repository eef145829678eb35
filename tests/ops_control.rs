//! The control plane (`PATH.ctl`) and the metrics endpoint: owner-only and
//! peer-checked whatever the data socket allows; `reload` reads only regular,
//! bounded files and never echoes them; slow or flooding clients hold nothing;
//! no rate of connections or signals can keep the server from draining.
mod util;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use util::other_uid::{self, NOBODY};
use util::repo_root;
use util::server::{request, Client, Server};

fn ctl(server: &Server) -> std::path::PathBuf {
    let mut p = server.socket.as_os_str().to_owned();
    p.push(".ctl");
    p.into()
}

/// `tickinfer stats` as another uid, through a copy of the binary that uid can reach (the
/// checkout may sit under a directory only its owner can enter); `Err` says why it cannot run.
fn stats_as(server: &Server, uid: u32) -> Result<(bool, String), String> {
    let bin = other_uid::binary_for(uid)?;
    if !other_uid::can_enter(server.dir.path(), uid) {
        return Err(format!("uid {uid} cannot reach the server's directory {}", server.dir.path().display()));
    }
    let out = other_uid::as_uid(
        Command::new(bin).args(["stats", "--json", "--socket", server.socket.to_str().unwrap()]),
        uid,
    )
    .unwrap();
    Ok((
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    ))
}

fn open_dir(server: &Server) {
    std::fs::set_permissions(server.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn control_socket_is_owner_only_and_peer_checked() {
    // A widened data socket leaves the control socket owner-only.
    let server = Server::start(&["--socket-mode", "660", "--socket-group", "0"]);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!((mode(&server.socket), mode(&ctl(&server))), (0o660, 0o600));
    open_dir(&server);
    let (ok, out) = match stats_as(&server, NOBODY) {
        Ok(r) => r,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    assert!(!ok && out.contains("Permission denied"), "the file mode keeps others out: {out}");

    // Widened file mode: the peer check still refuses other uids...
    let server = Server::start(&["--control-socket-mode", "666"]);
    open_dir(&server);
    assert_eq!(mode(&ctl(&server)), 0o666);
    let (ok, out) = stats_as(&server, NOBODY).unwrap();
    assert!(!ok && out.contains("permission denied"), "{out}");
    assert!(server.log().contains("control socket: refusing pid"), "{}", server.log());
    // ... and admits the uids the operator names; the owner always.
    let server = Server::start(&["--control-socket-mode", "666", "--control-allow-uid", &NOBODY.to_string()]);
    open_dir(&server);
    let (ok, out) = stats_as(&server, NOBODY).unwrap();
    assert!(ok && out.contains("\"responses\""), "{out}");
    let (ok, out) = stats_as(&server, 0).unwrap();
    assert!(ok, "{out}");
}

fn reload(server: &Server, model: &Path) -> (bool, String, Duration) {
    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_tickinfer"))
        .args(["reload", "--socket", server.socket.to_str().unwrap(), "--model", model.to_str().unwrap()])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text, t0.elapsed())
}

#[test]
fn reload_reads_only_regular_bounded_files_and_never_echoes_them() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    // A FIFO must not hang the one-reload-at-a-time lock.
    let fifo = dir.path().join("model.toml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let (ok, out, took) = reload(&server, &fifo);
    assert!(!ok && out.contains("not a regular file"), "{out}");
    assert!(took < Duration::from_secs(10), "a FIFO held the reload for {took:?}");
    // A device cannot eat memory.
    let (ok, out, _) = reload(&server, Path::new("/dev/zero"));
    assert!(!ok && out.contains("not a regular file"), "{out}");
    // An oversized file is refused before it is read.
    let big = dir.path().join("big.toml");
    std::fs::write(&big, vec![b'#'; 2 << 20]).unwrap();
    let (ok, out, _) = reload(&server, &big);
    assert!(!ok && out.contains("more than a manifest's"), "{out}");
    // A file that is not a manifest: the error names the place, not the content.
    let secret = dir.path().join("secret.toml");
    std::fs::write(&secret, "password: SECRET-TOKEN-8842\nroot:x:0:0\n").unwrap();
    let (ok, out, _) = reload(&server, &secret);
    assert!(!ok && out.contains("line 1"), "{out}");
    assert!(!out.contains("SECRET-TOKEN") && !out.contains("root:x"), "file content echoed: {out}");
    assert!(!server.log().contains("SECRET-TOKEN"), "file content logged");
    // The lock is free and the server serves: a good reload goes through.
    let (ok, out, _) = reload(&server, &repo_root().join("models/lobster_direction.toml"));
    assert!(ok, "{out}");
    let mut c = Client::connect(&server.socket).unwrap();
    c.send(&[request(1)]).unwrap();
    assert_eq!({ c.recv().unwrap().status }, 0);
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Read until EOF (the server closed) or the timeout; `true` on EOF.
fn closed_by_server(s: &mut impl Read, limit: Duration) -> bool {
    let t0 = Instant::now();
    let mut buf = [0u8; 512];
    while t0.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
            }
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn slow_and_flooding_control_and_metrics_clients_hold_nothing() {
    let server = Server::start(&["--metrics", "127.0.0.1:0"]);
    let addr = server.metrics_address();
    let base = open_fds(server.pid());
    // Slowloris: 40 silent connections on each endpoint.
    let mut silent_ctl: Vec<UnixStream> =
        (0..40).map(|_| UnixStream::connect(ctl(&server)).unwrap()).collect();
    let mut silent_http: Vec<std::net::TcpStream> =
        (0..40).map(|_| std::net::TcpStream::connect(&addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let during = open_fds(server.pid());
    // At most 16 held per endpoint (plus what accept has not yet closed).
    assert!(during <= base + 2 * 16 + 4, "fds: {base} before, {during} during the flood");
    for s in &silent_ctl {
        s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    }
    for s in &silent_http {
        s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    }
    // Every one is closed by the server: at once past the cap, after the request timeout otherwise.
    for s in silent_ctl.iter_mut() {
        assert!(closed_by_server(s, Duration::from_secs(6)), "a silent control client was kept");
    }
    for s in silent_http.iter_mut() {
        assert!(closed_by_server(s, Duration::from_secs(6)), "a silent metrics client was kept");
    }
    // An endless request line is cut at 4 KiB with an error.
    let mut long = UnixStream::connect(ctl(&server)).unwrap();
    let _ = long.write_all(&vec![b'x'; 10_000]);
    let mut answer = String::new();
    long.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = long.read_to_string(&mut answer);
    assert!(answer.contains("longer than 4096"), "{answer}");
    // Afterwards both endpoints answer, and the fds are back.
    let out = Command::new(env!("CARGO_BIN_EXE_tickinfer"))
        .args(["stats", "--socket", server.socket.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(open_fds(server.pid()) <= base + 2, "fds not released: {base} → {}", open_fds(server.pid()));
    assert!(server.log().contains("connections busy; closing new ones"), "{}", server.log());
}

#[test]
fn connections_at_100_hz_and_sighup_do_not_keep_the_server_from_draining() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("serve.toml");
    let model = repo_root().join("models/lobster_direction.toml");
    std::fs::write(&config, format!("model = \"{}\"\n", model.display())).unwrap();
    let mut server = Server::start(&["--config", config.to_str().unwrap()]);
    let path = ctl(&server);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let st = stop.clone();
    let knocker = std::thread::spawn(move || {
        let mut n = 0;
        while !st.load(std::sync::atomic::Ordering::Relaxed) {
            if UnixStream::connect(&path).is_ok() {
                n += 1;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        n
    });
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill(2) on our child's pid.
    unsafe { libc::kill(server.pid(), libc::SIGHUP) };
    // SAFETY: as above.
    unsafe { libc::kill(server.pid(), libc::SIGTERM) };
    let status = server.wait(Duration::from_secs(20));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let knocks = knocker.join().unwrap();
    assert!(status.success(), "{status:?}\n{}", server.log());
    assert!(knocks > 20, "the knocker connected {knocks} times");
    assert!(server.log().contains("SIGTERM: draining"), "{}", server.log());
}

/// Peers the control socket refuses (a widened mode lets them connect) are answered at
/// once and hold no slot: with 40 of them connected and silent, the owner's `stats` and
/// `reload` work (they used to hold a slot for 2 s each: 16 locked the owner out).
#[test]
fn refused_control_peers_take_no_slot() {
    let server = Server::start(&["--control-socket-mode", "666"]);
    open_dir(&server);
    let path = ctl(&server);
    let hold = Duration::from_secs(8);
    let refusals = std::thread::spawn(move || {
        util::connections_as(65534, &path, 40, b"", hold, b"permission denied: this uid may not use")
    });
    std::thread::sleep(Duration::from_millis(500)); // they are connected and held
    if refusals.is_finished() {
        if let Ok(None) = refusals.join() {
            return util::skip("refused_control_peers_take_no_slot", "connecting as another uid needs root");
        }
        panic!("the refused peers' process ended early");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_tickinfer"))
        .args(["stats", "--json", "--socket", server.socket.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "the owner was locked out: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!refusals.is_finished(), "the refused peers were still connected during the owner's stats");
    let (ok, text, _) = reload(&server, &repo_root().join("models/lobster_direction.toml"));
    assert!(ok, "{text}");
    let answered = refusals.join().unwrap().unwrap();
    assert_eq!(answered, 40, "every refused peer was answered at once:\n{}", server.log());
    let refused_lines = server.log().lines().filter(|l| l.contains("control socket: refusing")).count();
    assert!((1..=3).contains(&refused_lines), "refusals logged at most once a second: {refused_lines}");
}

/// The sockets are up before the model is loaded (here the ONNX Runtime "download" is
/// held up: the server's library cache is empty and its provisioning lock is ours).
/// `stats` and `reload` sent meanwhile wait and are answered once it serves (they were
/// refused "not serving yet"); a data client connecting early gets its hello acked and
/// its request answered then.
#[test]
fn commands_and_clients_sent_while_the_model_loads_wait_for_it() {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    use tickinfer::engine::runtime::{locate, pin_for, Flavor};
    let Ok(real) = locate(None, Flavor::Cpu) else {
        return util::skip("commands_and_clients_sent_while_the_model_loads", "no ONNX Runtime to copy");
    };
    let pin = pin_for(Flavor::Cpu, std::env::consts::ARCH).expect("a pinned CPU runtime");
    let real_dir = real.parent().unwrap().to_path_buf();
    if pin.libs.iter().any(|(name, _)| !real_dir.join(name).is_file()) {
        return util::skip(
            "commands_and_clients_sent_while_the_model_loads",
            "no pinned runtime cache to copy",
        );
    }
    let cache = tempfile::tempdir().unwrap();
    let lib_dir = cache.path().join(real_dir.file_name().unwrap());
    std::fs::DirBuilder::new().mode(0o700).create(&lib_dir).unwrap();
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(lib_dir.join(".lock"))
        .unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) }, 0);

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("tickinfer.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tickinfer"));
    cmd.env("TICKINFER_CACHE_DIR", cache.path()).env_remove("TICKINFER_ORT_LIB").env_remove("ORT_DYLIB_PATH");
    let server = Server::spawn_with(dir, socket.clone(), &[], cmd);
    let t0 = Instant::now();
    while !(socket.exists() && ctl(&server).exists()) {
        assert!(t0.elapsed() < Duration::from_secs(20), "sockets never bound:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    let cli = |args: Vec<String>| {
        std::thread::spawn(move || {
            let t0 = Instant::now();
            let out = Command::new(env!("CARGO_BIN_EXE_tickinfer")).args(&args).output().unwrap();
            let text =
                format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            (out.status.success(), text, t0.elapsed())
        })
    };
    let sock = socket.to_str().unwrap().to_string();
    let model = repo_root().join("models/lobster_direction.toml").to_str().unwrap().to_string();
    let stats = cli(vec!["stats".into(), "--json".into(), "--socket".into(), sock.clone()]);
    let reloaded = cli(vec!["reload".into(), "--socket".into(), sock.clone(), "--model".into(), model]);
    let early = {
        let socket = socket.clone();
        std::thread::spawn(move || {
            use tickinfer::wire::{MlHello, MlHelloAck, MlResponse, HELLO_ACK_SIZE, RESPONSE_SIZE};
            let t0 = Instant::now();
            let mut s = UnixStream::connect(&socket).expect("an early client's connect");
            // As long as the load may take on a busy machine (the stats and reload wait 60 s).
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            s.write_all(bytemuck::bytes_of(&MlHello::current())).unwrap();
            let mut ack = [0u8; HELLO_ACK_SIZE];
            s.read_exact(&mut ack).expect("an early client's hello ack");
            let ack: MlHelloAck = bytemuck::pod_read_unaligned(&ack);
            assert_eq!({ ack.status }, 0);
            s.write_all(bytemuck::bytes_of(&request(5))).unwrap();
            let mut answer = [0u8; RESPONSE_SIZE];
            s.read_exact(&mut answer).expect("an early client's request");
            (bytemuck::pod_read_unaligned::<MlResponse>(&answer), t0.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(1000));
    assert!(!server.log().contains("ready: model"), "the load was not held up:\n{}", server.log());
    assert!(!stats.is_finished() && !reloaded.is_finished() && !early.is_finished(), "{}", server.log());
    // The "download" finishes: the pinned libraries appear, the lock is released.
    for (name, _) in pin.libs {
        std::fs::copy(real_dir.join(name), lib_dir.join(name)).unwrap();
    }
    drop(lock);
    server.wait_ready();
    let (ok, text, waited) = stats.join().unwrap();
    assert!(ok && text.contains("\"responses\""), "{text}");
    assert!(waited >= Duration::from_millis(900), "stats answered before the model loaded? {waited:?}");
    let (ok, text, _) = reloaded.join().unwrap();
    assert!(ok && text.contains("reloaded: now serving"), "{text}\n{}", server.log());
    let (answer, waited) =
        early.join().unwrap_or_else(|_| panic!("the early client failed:\n{}", server.log()));
    assert_eq!(({ answer.request_id }, { answer.status }), (5, 0));
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
}
