//! systemd: the shipped units pass `systemd-analyze`, the server serves a socket
//! systemd holds (socket activation, across a restart), and its notifications say
//! READY only once a request can be answered, RELOADING/READY around reloads, and
//! STOPPING on the drain.
mod util;

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tickinfer::wire::Status;
use util::server::{request, Client, Server};
use util::{repo_root, skip};

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// The shipped units, with ExecStart/ExecReload pointing at this build, in a temporary directory.
fn units_for_this_build() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_tickinfer");
    let mut paths = vec![];
    for unit in ["tickinfer.service", "tickinfer.socket"] {
        let text = std::fs::read_to_string(repo_root().join("deploy/systemd").join(unit)).unwrap();
        let path = dir.path().join(unit);
        std::fs::write(&path, text.replace("/usr/local/bin/tickinfer", bin)).unwrap();
        paths.push(path);
    }
    let socket = paths.pop().unwrap();
    let service = paths.pop().unwrap();
    (dir, service, socket)
}

#[test]
fn units_pass_systemd_analyze_verify_and_security() {
    if !have("systemd-analyze") {
        return skip("units_pass_systemd_analyze_verify_and_security", "systemd-analyze not installed");
    }
    let (_dir, service, socket) = units_for_this_build();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&socket)
        .arg(&service)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify:\n{stderr}");
    // The sandboxing's exposure score (docs/deployment.md quotes it): 0 is locked down, 10 is wide open.
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&service)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for tickinfer.service: ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}{}", String::from_utf8_lossy(&out.stderr)));
    eprintln!("systemd-analyze security: exposure {score}");
    assert!(
        score <= 2.0,
        "exposure {score} (docs/deployment.md says 1.3): a sandboxing line was lost\n{text}"
    );
}

/// The unit, the socket unit and the example config name one socket path.
#[test]
fn units_and_config_agree_on_the_socket_path() {
    let read = |f: &str| std::fs::read_to_string(repo_root().join("deploy/systemd").join(f)).unwrap();
    let listen = read("tickinfer.socket")
        .lines()
        .find_map(|l| l.strip_prefix("ListenStream=").map(str::to_string))
        .expect("ListenStream=");
    let config: toml::Table = toml::from_str(&read("tickinfer.toml")).unwrap();
    assert_eq!(config["socket"].as_str(), Some(listen.as_str()), "tickinfer.toml's socket");
    let service = read("tickinfer.service");
    let reload = service.lines().find(|l| l.starts_with("ExecReload=")).expect("ExecReload=");
    assert!(reload.ends_with(&format!("--socket {listen}")), "{reload}");
    assert!(service.contains("--config /etc/tickinfer/tickinfer.toml"), "ExecStart reads the config");
    // Every key of the example config is a serve option.
    let opts = tickinfer::server::ServeOptions {
        config: Some(repo_root().join("deploy/systemd/tickinfer.toml")),
        ..Default::default()
    };
    let cfg = opts.with_config_file().unwrap().resolve().unwrap();
    assert!(cfg.lock_memory && cfg.metrics.is_some());
}

/// Answers four requests on a new connection to `socket`.
fn answers(socket: &Path) {
    let mut c = Client::connect(socket).unwrap();
    let reqs: Vec<_> = (1..=4).map(request).collect();
    c.send(&reqs).unwrap();
    for r in &reqs {
        let a = c.recv().unwrap();
        assert_eq!(({ a.request_id }, { a.status }), ({ r.request_id }, Status::Ok.code()));
    }
}

#[test]
fn serves_through_systemd_socket_activate() {
    if !have("systemd-socket-activate") {
        return skip("serves_through_systemd_socket_activate", "systemd-socket-activate not installed");
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("activated.sock");
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l").arg(&socket).arg(env!("CARGO_BIN_EXE_tickinfer"));
    let mut server = Server::spawn_with(dir, socket.clone(), &[], cmd);
    // systemd-socket-activate binds the path, then starts the server on the first connection.
    let t0 = Instant::now();
    while !socket.exists() {
        assert!(t0.elapsed() < Duration::from_secs(20), "socket never bound:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    answers(&socket);
    server.wait_ready();
    assert!(server.log().contains("serving the socket systemd passed"), "{}", server.log());
    assert!(server.terminate().success(), "{}", server.log());
    // The socket file is the manager's: the server leaves it in place.
    assert!(socket.exists(), "the server removed systemd's socket file");
}

/// `sh` runs the server as its own pid with `listener` as fd 3 and LISTEN_FDS/LISTEN_PID set,
/// as systemd does.
fn activated(listener: &UnixListener) -> Command {
    let fd: RawFd = listener.as_raw_fd();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"", env!("CARGO_BIN_EXE_tickinfer")]);
    // SAFETY: dup2/fcntl are async-signal-safe and touch only the child's descriptor table.
    unsafe {
        cmd.pre_exec(move || {
            let rc = if fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(fd, 3) };
            if rc == -1 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        });
    }
    cmd
}

/// A restart through a held socket: a client that connects while no server runs waits in
/// the queue and is answered by the next one; the path never disappears.
#[test]
fn a_restart_on_a_held_socket_loses_no_client() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("held.sock");
    let listener = UnixListener::bind(&socket).unwrap();

    let first = Server::spawn_with(tempfile::tempdir().unwrap(), socket.clone(), &[], activated(&listener));
    first.wait_ready();
    answers(&socket);
    let mut first = first;
    assert!(first.terminate().success(), "{}", first.log());
    assert!(socket.exists(), "the socket file must outlive the server");

    // Nobody serves now: a client connects (queued by the kernel) and sends its hello.
    let waiting = std::thread::spawn({
        let socket = socket.clone();
        move || answers(&socket)
    });
    std::thread::sleep(Duration::from_millis(200));
    let second = Server::spawn_with(tempfile::tempdir().unwrap(), socket.clone(), &[], activated(&listener));
    second.wait_ready();
    waiting.join().expect("the client queued during the restart was answered");

    // The peer allowlist still applies to an inherited socket.
    let mut second = second;
    assert!(second.terminate().success());
    let third = Server::spawn_with(
        tempfile::tempdir().unwrap(),
        socket.clone(),
        &["--allow-uid", "4242"],
        activated(&listener),
    );
    third.wait_ready();
    let refused = Client::connect(&socket).err().expect("uid not in --allow-uid is refused");
    assert!(
        refused.to_string().contains(&format!("status {}", Status::PermissionDenied.code())),
        "{refused}"
    );

    // A socket that is not the configured path is refused with a message naming both.
    let other = Server::spawn_with(
        tempfile::tempdir().unwrap(),
        dir.path().join("elsewhere.sock"),
        &[],
        activated(&listener),
    );
    let mut other = other;
    let status = other.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(2), "{}", other.log());
    assert!(other.log().contains("ListenStream= path as --socket"), "{}", other.log());
}

/// Reads the datagrams the server sends to its NOTIFY_SOCKET.
struct Manager {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Manager {
    fn new(dir: &Path) -> Manager {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Manager { socket, path }
    }

    /// The next notification's `KEY=value` lines.
    fn next(&self) -> Vec<String> {
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).expect("a notification within 60 s");
        String::from_utf8_lossy(&buf[..n]).lines().map(str::to_string).collect()
    }
}

#[test]
fn notifications_ready_reloading_stopping() {
    let notify_dir = tempfile::tempdir().unwrap();
    let manager = Manager::new(notify_dir.path());
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("tickinfer.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tickinfer"));
    cmd.env("NOTIFY_SOCKET", &manager.path);
    let mut server = Server::spawn_with(dir, socket.clone(), &[], cmd);

    let ready = manager.next();
    assert!(ready.contains(&"READY=1".to_string()), "{ready:?}");
    // At READY=1, and not before, a request is answered: nothing else was waited for.
    answers(&socket);
    let status = ready.iter().find_map(|l| l.strip_prefix("STATUS=")).unwrap_or_default();
    assert!(status.contains("lobster_direction v1"), "{status}");

    // ExecReload: `tickinfer reload` without --model reloads the configured model.
    let out = Command::new(env!("CARGO_BIN_EXE_tickinfer"))
        .args(["reload", "--socket", socket.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reloading = manager.next();
    assert!(reloading.contains(&"RELOADING=1".to_string()), "{reloading:?}");
    assert!(reloading.iter().any(|l| l.starts_with("MONOTONIC_USEC=")), "{reloading:?}");
    let after = manager.next();
    assert!(after.contains(&"READY=1".to_string()), "{after:?}");
    assert!(after.iter().any(|l| l.starts_with("STATUS=reloaded")), "{after:?}");

    // A refused reload: RELOADING, then READY (the old model serves), the command fails.
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad.path(), "not a manifest").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tickinfer"))
        .args(["reload", "--socket", socket.to_str().unwrap(), "--model", bad.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(manager.next().contains(&"RELOADING=1".to_string()));
    let after = manager.next();
    assert!(after.contains(&"READY=1".to_string()), "{after:?}");
    assert!(after.iter().any(|l| l.starts_with("STATUS=reload refused")), "{after:?}");
    answers(&socket);

    // SIGTERM: STOPPING=1, then the drain and exit 0.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(server.pid(), libc::SIGTERM) };
    let stopping = manager.next();
    assert!(stopping.contains(&"STOPPING=1".to_string()), "{stopping:?}");
    assert!(server.wait(Duration::from_secs(30)).success(), "{}", server.log());
}
