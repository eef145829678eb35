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
