//! The real `tickinfer serve`, spawned as a child process, and a blocking Rust client.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tickinfer::wire::{MlHello, MlHelloAck, MlRequest, MlResponse, Status, HELLO_ACK_SIZE, RESPONSE_SIZE};

use super::repo_root;

/// A running `tickinfer serve` on a socket in its own temporary directory.
pub struct Server {
    pub child: Option<Child>,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
    log: PathBuf,
}

impl Server {
    /// Start with the default model and `args` added (e.g. `["--poll", "block"]`), and wait until it answers.
    pub fn start(args: &[&str]) -> Server {
        let s = Server::spawn(args);
        s.wait_ready();
        s
    }

    /// Start without waiting.
    pub fn spawn(args: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("tickinfer.sock");
        Server::spawn_at(dir, socket, args)
    }

    pub fn spawn_at(dir: tempfile::TempDir, socket: PathBuf, args: &[&str]) -> Server {
        Server::spawn_with(dir, socket, args, Command::new(env!("CARGO_BIN_EXE_tickinfer")))
    }

    /// Start with at most `nofile` open descriptors (`RLIMIT_NOFILE`), and wait until it answers.
    pub fn start_with_nofile(args: &[&str], nofile: u64) -> Server {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("tickinfer.sock");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tickinfer"));
        // SAFETY: setrlimit is async-signal-safe and touches only the child's own limits.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit { rlim_cur: nofile, rlim_max: nofile };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
        let s = Server::spawn_with(dir, socket, args, cmd);
        s.wait_ready();
        s
    }

    /// Start `cmd` (the tickinfer binary, or a wrapper that runs it) with `serve --socket` and
    /// the defaults appended, logging into `dir`; without waiting.
    pub fn spawn_with(dir: tempfile::TempDir, socket: PathBuf, args: &[&str], mut cmd: Command) -> Server {
        let log = dir.path().join("server.log");
        cmd.arg("serve").arg("--socket").arg(&socket);
        if !args.contains(&"--model") {
            cmd.arg("--model").arg(repo_root().join("models/lobster_direction.toml"));
        }
        // Tests share two cores: block polling unless a test asks otherwise.
        if !args.contains(&"--poll") {
            cmd.args(["--poll", "block"]);
        }
        cmd.args(args)
            .env("RUST_LOG", std::env::var("TICKINFER_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap());
        let child = cmd.spawn().expect("spawn tickinfer serve");
        Server { child: Some(child), socket, dir, log }
    }

    /// Wait until the server logs that it is ready (its listener is registered
    /// by then), or panic with its log.
    pub fn wait_ready(&self) {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(60) {
            if self.log().contains("ready: model") {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("server did not become ready:\n{}", self.log());
    }

    /// Wait until the server is ready (`Ok`) or has exited (`Err` with its status and log).
    pub fn wait_ready_or_exit(&mut self) -> Result<(), String> {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(60) {
            if self.log().contains("ready: model") {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!("exited {status}:\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("server neither became ready nor exited:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The `host:port` of the metrics endpoint a server started with `--metrics ADDR` logged.
    pub fn metrics_address(&self) -> String {
        let log = self.log();
        log.lines()
            .find_map(|l| l.split("metrics: http://").nth(1))
            .and_then(|r| r.strip_suffix("/metrics"))
            .unwrap_or_else(|| panic!("no metrics address logged:\n{log}"))
            .to_string()
    }

    /// The body of `GET /metrics` from a server started with `--metrics ADDR`.
    pub fn metrics_text(&self) -> String {
        let mut s = std::net::TcpStream::connect(self.metrics_address()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(s, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or(text)
    }

    /// The address of the TCP listener a server started with `--listen-tcp ADDR` logged.
    pub fn tcp_addr(&self) -> SocketAddr {
        let log = self.log();
        log.lines()
            .find_map(|l| l.split("listening on tcp ").nth(1))
            .and_then(|r| r.split(' ').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no TCP address logged:\n{log}"))
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// SIGTERM, then wait (at most 30 s) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        self.wait(Duration::from_secs(30))
    }

    /// Wait for exit, at most `limit`.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().unwrap();
        let t0 = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                t0.elapsed() < limit,
                "server did not exit:\n{}",
                std::fs::read_to_string(&self.log).unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Server {
    /// `tickinfer stats --json` once.
    pub fn stats_json(&self) -> serde_json::Value {
        self.stats_when(|_| true)
    }

    /// `tickinfer stats --json`, polled until `done` holds on the report (stats are
    /// published every 200 ms, later on a loaded machine); panics after 20 s.
    pub fn stats_when(&self, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let t0 = Instant::now();
        loop {
            let out = Command::new(env!("CARGO_BIN_EXE_tickinfer"))
                .args(["stats", "--json", "--socket", self.socket.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if done(&report) {
                return report;
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "stats never got there: {report}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A blocking client speaking the protocol (hello on connect), on a Unix socket or
/// (`Client<TcpStream>`) over TCP.
pub struct Client<S = UnixStream> {
    pub stream: S,
    pub ack: MlHelloAck,
}

impl Client {
    pub fn connect(path: &Path) -> io::Result<Client> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        Client::handshake(stream, None)
    }
}

impl Client<TcpStream> {
    /// Connect over TCP (`--listen-tcp`), `TCP_NODELAY`.
    pub fn connect_tcp(addr: SocketAddr) -> io::Result<Client<TcpStream>> {
        Client::connect_tcp_with(addr, None)
    }

    /// Connect over TCP sending `token` in an auth frame after the hello.
    pub fn connect_tcp_with(addr: SocketAddr, token: Option<&[u8]>) -> io::Result<Client<TcpStream>> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        Client::handshake(stream, token)
    }
}

impl<S: Read + Write> Client<S> {
    fn handshake(mut stream: S, token: Option<&[u8]>) -> io::Result<Client<S>> {
        let mut hello = bytemuck::bytes_of(&MlHello::current()).to_vec();
        if let Some(token) = token {
            let auth = tickinfer::wire::MlAuth::new(token).expect("token of at most 64 bytes");
            hello[14] |= tickinfer::wire::HELLO_FLAG_AUTH as u8; // flags, low byte
            hello.extend_from_slice(bytemuck::bytes_of(&auth));
        }
        // A server refusing the peer at accept writes its ack and closes at once: the hello may
        // then meet a closed socket (EPIPE) while the ack waits in ours to be read.
        if let Err(e) = stream.write_all(&hello) {
            if !matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset) {
                return Err(e);
            }
        }
        let mut ack = [0u8; HELLO_ACK_SIZE];
        stream.read_exact(&mut ack)?;
        let ack: MlHelloAck = bytemuck::pod_read_unaligned(&ack);
        if ack.status != Status::Ok.code() {
            return Err(io::Error::other(format!("refused: status {}", { ack.status })));
        }
        Ok(Client { stream, ack })
    }

    pub fn send(&mut self, reqs: &[MlRequest]) -> io::Result<()> {
        self.stream.write_all(bytemuck::cast_slice(reqs))
    }

    pub fn recv(&mut self) -> io::Result<MlResponse> {
        let mut buf = [0u8; RESPONSE_SIZE];
        self.stream.read_exact(&mut buf)?;
        Ok(bytemuck::pod_read_unaligned(&buf))
    }

    /// Send one request and read its answer.
    pub fn roundtrip(&mut self, req: &MlRequest) -> io::Result<MlResponse> {
        self.send(std::slice::from_ref(req))?;
        self.recv()
    }
}

/// A valid request (AMZN-like prices at scale 10000) with this id.
pub fn request(id: u64) -> MlRequest {
    let tick = (id % 50) as i64 * 100;
    MlRequest {
        timestamp_ns: id,
        symbol_id: (id % 4) as u16,
        bid_price: 2_230_000 + tick,
        ask_price: 2_230_100 + tick + (id % 3) as i64 * 100,
        bid_size: 100 + (id % 7) as i64 * 50,
        ask_size: 100 + (id % 5) as i64 * 60,
        book_imbalance: 0,
        request_id: id,
        ..MlRequest::new()
    }
}

/// Answers `(direction, confidence, target, status, flags)` to `reqs` from a server on `model`
/// with `--max-batch max_batch --mode mode`, sent 64 at a time on one connection (ids checked).
#[allow(dead_code)]
pub fn pipelined_answers(
    model: &Path,
    max_batch: &str,
    mode: &str,
    reqs: &[MlRequest],
) -> Vec<(i8, u8, i64, u16, u16)> {
    pipelined_answers_with(model, &[], max_batch, mode, reqs)
}

/// [`pipelined_answers`] with `extra` serve flags (e.g. `["--backend", "native"]`).
#[allow(dead_code)]
pub fn pipelined_answers_with(
    model: &Path,
    extra: &[&str],
    max_batch: &str,
    mode: &str,
    reqs: &[MlRequest],
) -> Vec<(i8, u8, i64, u16, u16)> {
    let mut args = vec!["--model", model.to_str().unwrap(), "--max-batch", max_batch, "--mode", mode];
    args.extend_from_slice(extra);
    let server = Server::start(&args);
    let mut c = Client::connect(&server.socket).unwrap();
    let mut out = Vec::with_capacity(reqs.len());
    for window in reqs.chunks(64) {
        c.send(window).unwrap();
        for r in window {
            let resp = c.recv().unwrap();
            assert_eq!({ resp.request_id }, { r.request_id });
            out.push((resp.direction, resp.confidence, resp.target_price, resp.status, resp.flags));
        }
    }
    out
}
