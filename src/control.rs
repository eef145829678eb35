//! Control plane, off the hot path: a tokio current-thread runtime on its own
//! (unpinned) thread. It serves the control socket `<socket>.ctl`, the optional
//! Prometheus endpoint, and signals: SIGTERM/SIGINT drain, SIGHUP reloads the
//! model (re-reading `model` from the config file when there is one).
//!
//! Control protocol: one line per connection, one JSON line back, then close.
//! - `stats` → the [`StatsReport`];
//! - `reload PATH` → `{"ok":true,"name":…,"version":…}` or `{"ok":false,"error":…}`;
//!   `reload` alone reloads the configured model (what SIGHUP does), answered the same;
//! - `reset` / `reset SYMBOL` → `{"ok":true}` once the scoring thread cleared the
//!   per-symbol state (every symbol's, or one's) of a stateful model.
//!
//! The control socket can make the server read any file it can, so it is guarded
//! apart from the data socket: its own file mode (owner-only by default), and a
//! `SO_PEERCRED` check on every connection (the server's uid, root, and the uids
//! and gids the operator adds), made on accept, before anything else: a refused
//! peer is answered at once and holds nothing. Both endpoints bound what a client
//! can hold: at most [`MAX_CLIENTS`] connections each (more are closed at once),
//! the request must arrive within [`REQUEST_TIMEOUT`] and fit in [`MAX_REQUEST`]
//! bytes, and the answer must be taken within [`REPLY_TIMEOUT`].
//!
//! Readiness: the control socket is up before the model is loaded (a first ONNX
//! Runtime download takes seconds). `stats`, `reload` and `reset` sent meanwhile
//! wait for the server to serve, at most [`READY_WAIT`], then are answered as
//! usual (or with an error saying it is still loading). The loop's shutdown check runs on
//! an interval made once, so no rate of connections can starve it, and a SIGHUP
//! reload runs beside the loop, never blocking SIGTERM.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Semaphore;

use crate::server::Shared;
use crate::stats::StatsReport;
use crate::transport::{SocketFile, SocketPolicy};
use crate::wire::Status;

/// Connections each endpoint serves at once; more are closed on accept.
pub const MAX_CLIENTS: usize = 16;
/// The request line (control) or request head (metrics) must arrive within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest request line or head, bytes.
pub const MAX_REQUEST: usize = 4096;
/// The answer must be taken within this.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a command waits for a server still loading its model.
pub const READY_WAIT: Duration = Duration::from_secs(60);

/// The control socket path of a server socket.
pub fn control_path(socket: &Path) -> PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(".ctl");
    PathBuf::from(p)
}

/// Start the control thread; it ends once `shared.shutdown` triggers. `policy` is
/// the control socket's own (see `ServerConfig::control_policy`).
pub fn spawn(
    socket: &Path,
    policy: &SocketPolicy,
    shared: Arc<Shared>,
    config_file: Option<PathBuf>,
    metrics: Option<SocketAddr>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let (std_listener, file) =
        SocketFile::bind(&control_path(socket), policy).map_err(std::io::Error::other)?;
    std_listener.set_nonblocking(true)?;
    let metrics_listener = match metrics {
        Some(addr) => {
            let l = std::net::TcpListener::bind(addr)
                .map_err(|e| std::io::Error::new(e.kind(), format!("metrics address {addr}: {e}")))?;
            l.set_nonblocking(true)?;
            log::info!("metrics: http://{}/metrics", l.local_addr()?);
            Some(l)
        }
        None => None,
    };
    let policy = policy.clone();
    std::thread::Builder::new().name("tickinfer-control".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                log::error!("control plane: cannot start tokio: {e}");
                return;
            }
        };
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let control = Control {
            shared,
            policy,
            config_file,
            host: Default::default(),
            started,
            ready_wait: READY_WAIT,
        };
        rt.block_on(control.run(std_listener, file, metrics_listener));
        // A reload still loading a model must not hold up the exit (it is refused once the
        // server has drained: `ReloadSlot::close`).
        rt.shutdown_timeout(Duration::from_secs(1));
    })
}

/// One of an endpoint's [`MAX_CLIENTS`] slots for a new connection, or `None` (the
/// connection is then dropped, closed at once; logged once a second).
fn take_slot(
    slots: &Arc<Semaphore>,
    refused: &mut crate::ratelog::RateLimited,
    endpoint: &str,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let slot = slots.clone().try_acquire_owned().ok();
    if slot.is_none() {
        if let Some(n) = refused.event(crate::clock::now_ns()) {
            log::warn!(
                "{endpoint}: {MAX_CLIENTS} connections busy; closing new ones ({n} more since the last such line)"
            );
        }
    }
    slot
}

async fn next_signal(sig: &mut Option<tokio::signal::unix::Signal>) {
    match sig.as_mut() {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// The control plane's state, shared by its tasks.
struct Control {
    shared: Arc<Shared>,
    /// Who may use the control socket.
    policy: SocketPolicy,
    config_file: Option<PathBuf>,
    /// `tickinfer doctor`'s findings on this host, from this process, and when they were made.
    host: tokio::sync::Mutex<Option<(std::time::Instant, Arc<Vec<crate::doctor::Finding>>)>>,
    /// When the control plane started (Unix seconds), for `tickinfer_start_time_seconds`.
    started: f64,
    /// [`READY_WAIT`] (shorter in tests).
    ready_wait: Duration,
}

/// How long the doctor's findings are reused between scrapes.
const HOST_CHECK_EVERY: Duration = Duration::from_secs(60);

impl Control {
    async fn run(
        self,
        std_listener: std::os::unix::net::UnixListener,
        file: SocketFile,
        metrics: Option<std::net::TcpListener>,
    ) {
        use tokio::signal::unix::{signal, SignalKind};
        let _file = file; // the control socket file is removed when this ends
        let Ok(listener) = tokio::net::UnixListener::from_std(std_listener) else {
            log::error!("control socket: cannot register with tokio");
            return;
        };
        let metrics = metrics.and_then(|l| tokio::net::TcpListener::from_std(l).ok());
        let this = Arc::new(self);
        let (control_slots, metrics_slots) =
            (Arc::new(Semaphore::new(MAX_CLIENTS)), Arc::new(Semaphore::new(MAX_CLIENTS)));
        let mut refused = crate::ratelog::RateLimited::new(1_000_000_000);
        let mut peer_refused = crate::ratelog::RateLimited::new(1_000_000_000);
        let mut term = signal(SignalKind::terminate()).ok();
        let mut int = signal(SignalKind::interrupt()).ok();
        let mut hup = signal(SignalKind::hangup()).ok();
        // Made once: other arms firing cannot postpone it (a sleep made anew each turn could
        // be starved by a client connecting more often than its period).
        let mut shutdown_check = tokio::time::interval(Duration::from_millis(100));
        shutdown_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = next_signal(&mut term) => this.drain("SIGTERM"),
                _ = next_signal(&mut int) => this.drain("SIGINT"),
                _ = next_signal(&mut hup) => {
                    // Beside the loop: a slow reload never holds up SIGTERM.
                    tokio::spawn(this.clone().sighup_reload());
                }
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        // Credentials first: a refused peer is answered now and takes no slot.
                        if let Some(refusal) = this.refusal(&stream, &mut peer_refused) {
                            let _ = stream.try_write(format!("{refusal}\n").as_bytes());
                        } else if let Some(slot) = take_slot(&control_slots, &mut refused, "control socket") {
                            tokio::spawn(this.clone().serve_control(stream, slot));
                        }
                    }
                }
                accepted = async { match &metrics { Some(m) => m.accept().await, None => std::future::pending().await } } => {
                    if let Ok((stream, _)) = accepted {
                        if let Some(slot) = take_slot(&metrics_slots, &mut refused, "metrics") {
                            tokio::spawn(this.clone().serve_metrics(stream, slot));
                        }
                    }
                }
                _ = shutdown_check.tick() => {
                    if this.shared.shutdown.is_triggered() { break; }
                }
            }
        }
    }

    /// Start the drain on `signal`; systemd hears `STOPPING=1`.
    fn drain(&self, signal: &str) {
        log::info!("{signal}: draining");
        crate::systemd::stopping();
        self.shared.shutdown.trigger();
    }

    /// What a reload without a path loads: the config file's `model` re-read (it may
    /// name a new manifest), else (no config file, or no `model` in it) the manifest
    /// being served. A config file that no longer parses is an error, not a fallback.
    fn configured_model(&self) -> Result<PathBuf, String> {
        if let Some(cfg) = &self.config_file {
            let opts = crate::server::ServeOptions { config: Some(cfg.clone()), ..Default::default() }
                .with_config_file()?;
            if let Some(model) = opts.model {
                return Ok(model);
            }
        }
        self.shared.reload.current().map(|(_, p)| p).ok_or_else(|| "no model is serving yet".to_string())
    }

    async fn sighup_reload(self: Arc<Self>) {
        match self.configured_model() {
            Ok(p) => {
                log::info!("SIGHUP: reloading {}", p.display());
                let _ = self.reload(p).await;
            }
            Err(e) => log::warn!("SIGHUP: nothing reloaded: {e}"),
        }
    }

    /// Load `path` and swap it in, off the loop (blocking pool); systemd hears
    /// `RELOADING=1` before and `READY=1` after, whatever the outcome.
    async fn reload(&self, path: PathBuf) -> Result<crate::engine::ModelInfo, String> {
        crate::systemd::reloading(&format!("reloading {}", path.display()));
        let s = self.shared.clone();
        let result = match tokio::task::spawn_blocking(move || s.reload.reload(&path)).await {
            Ok(r) => r,
            Err(e) => Err(e.to_string()),
        };
        let serving = self.shared.reload.current().map(|(i, _)| format!("{} v{}", i.name, i.version));
        let serving = serving.unwrap_or_default();
        match &result {
            Ok(_) => crate::systemd::ready(&format!("reloaded: serving {serving}")),
            Err(e) => crate::systemd::ready(&format!("reload refused ({e}); still serving {serving}")),
        }
        result
    }

    /// The answer to a peer the control socket refuses (`None`: admitted); logged at
    /// most once a second.
    fn refusal(
        &self,
        stream: &tokio::net::UnixStream,
        log_limit: &mut crate::ratelog::RateLimited,
    ) -> Option<String> {
        let cred = match stream.peer_cred() {
            Ok(cred) => cred,
            Err(e) => return Some(json_error(&format!("cannot read peer credentials: {e}"))),
        };
        let peer = crate::sys::PeerCred { pid: cred.pid().unwrap_or(0), uid: cred.uid(), gid: cred.gid() };
        if self.policy.admits(&peer) {
            return None;
        }
        if let Some(left_out) = log_limit.event(crate::clock::now_ns()) {
            log::warn!(
                "control socket: refusing pid {} uid {} gid {} (not the server's uid, root, or \
                 --control-allow-uid/gid) ({left_out} more refused since the last such line)",
                peer.pid,
                peer.uid,
                peer.gid
            );
        }
        Some(json_error("permission denied: this uid may not use the control socket (--control-allow-uid)"))
    }

    async fn serve_control(
        self: Arc<Self>,
        stream: tokio::net::UnixStream,
        _slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        let (read, mut write) = stream.into_split();
        let answer = match read_line(read).await {
            Ok(line) => self.command(line.trim()).await,
            Err(e) => json_error(&e),
        };
        let reply = async {
            write.write_all(answer.as_bytes()).await?;
            write.write_all(b"\n").await
        };
        let _ = tokio::time::timeout(REPLY_TIMEOUT, reply).await;
    }

    /// Wait until the server serves (its model loaded), at most `ready_wait`; an error
    /// past that, or once it is stopping.
    async fn wait_ready(&self) -> Result<(), String> {
        let t0 = std::time::Instant::now();
        while !self.shared.is_serving() {
            if self.shared.shutdown.is_triggered() {
                return Err("the server is stopping".into());
            }
            if t0.elapsed() >= self.ready_wait {
                return Err(format!(
                    "the server is still loading its model after {:?} (a first ONNX Runtime download can take \
                     a while); try again",
                    self.ready_wait
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    async fn command(&self, line: &str) -> String {
        let known = ["stats", "reload", "reset", "shadow", "promote"];
        if known.iter().any(|c| line == *c || line.strip_prefix(c).is_some_and(|r| r.starts_with(' '))) {
            if let Err(e) = self.wait_ready().await {
                return json_error(&e);
            }
        }
        if line == "stats" {
            let mut report = self.shared.stats.lock().map(|s| s.report()).unwrap_or_default();
            let current = self.shared.reload.current();
            report.verify = crate::verify::report(
                &self.shared.verify,
                current.as_ref().and_then(|(i, _)| i.verification.as_ref()),
            );
            // The serving model, its backend now and why (the gate's report, timings at load).
            report.model = current.map(|(info, _)| crate::stats::ModelReport {
                backend: info.backend_now(),
                name: info.name,
                version: info.version,
                provider: info.provider.to_string(),
                backend_report: info.backend_report,
            });
            report.shadows = self.shared.shadows.reports();
            serde_json::to_string(&report).unwrap_or_default()
        } else if line == "reload" || line.starts_with("reload ") {
            let path = match line.strip_prefix("reload").map(str::trim).filter(|p| !p.is_empty()) {
                Some(p) => PathBuf::from(p),
                None => match self.configured_model() {
                    Ok(p) => p,
                    Err(e) => return json_error(&format!("cannot tell the configured model: {e}")),
                },
            };
            match self.reload(path).await {
                Ok(info) => {
                    serde_json::json!({ "ok": true, "name": info.name, "version": info.version }).to_string()
                }
                Err(e) => json_error(&e),
            }
        } else if line == "reset" || line.starts_with("reset ") {
            let symbol = match line.strip_prefix("reset").map(str::trim).filter(|a| !a.is_empty()) {
                None => None,
                Some(a) => match a.parse::<u16>() {
                    Ok(s) => Some(s),
                    Err(_) => {
                        return json_error("reset takes a symbol id 0..65535, or nothing for every symbol")
                    }
                },
            };
            let s = self.shared.clone();
            match tokio::task::spawn_blocking(move || s.reload.reset_state(symbol)).await {
                Ok(Ok(())) => serde_json::json!({ "ok": true }).to_string(),
                Ok(Err(e)) => json_error(&e),
                Err(e) => json_error(&e.to_string()),
            }
        } else if let Some(args) = line.strip_prefix("shadow ").map(str::trim) {
            self.shadow_command(args).await
        } else if let Some(args) = line.strip_prefix("promote ").map(str::trim) {
            let (name, force) = match args.strip_suffix(" force") {
                Some(name) => (name.trim().to_string(), true),
                None => (args.to_string(), false),
            };
            let s = self.shared.clone();
            match tokio::task::spawn_blocking(move || s.shadows.promote(&s.reload, &name, force)).await {
                Ok(Ok((name, version))) => {
                    serde_json::json!({ "ok": true, "name": name, "version": version }).to_string()
                }
                Ok(Err(e)) => json_error(&e),
                Err(e) => json_error(&e.to_string()),
            }
        } else {
            let shown: String = line.chars().take(40).collect();
            json_error(&format!(
                "unknown command `{shown}` (known: stats, reload [PATH], reset [SYMBOL], shadow add PATH | remove NAME \
                 | list, promote NAME [force])"
            ))
        }
    }
}

impl Control {
    /// `shadow add PATH`, `shadow remove NAME`, `shadow list`.
    async fn shadow_command(&self, args: &str) -> String {
        let s = self.shared.clone();
        let (verb, arg) = args.split_once(' ').map_or((args, ""), |(v, a)| (v, a.trim()));
        let arg = arg.to_string();
        let outcome = match verb {
            "list" => return serde_json::json!({ "ok": true, "shadows": s.shadows.reports() }).to_string(),
            "add" if !arg.is_empty() => {
                tokio::task::spawn_blocking(move || {
                    s.shadows
                        .add(&s.reload, std::path::Path::new(&arg))
                        .map(|r| serde_json::json!({ "ok": true, "shadow": r }))
                })
                .await
            }
            "remove" if !arg.is_empty() => {
                tokio::task::spawn_blocking(move || {
                    s.shadows.remove(&s.reload, &arg).map(|()| serde_json::json!({ "ok": true }))
                })
                .await
            }
            _ => return json_error("shadow takes: add PATH, remove NAME, or list"),
        };
        match outcome {
            Ok(Ok(v)) => v.to_string(),
            Ok(Err(e)) => json_error(&e),
            Err(e) => json_error(&e.to_string()),
        }
    }
}

/// One request line: at most [`MAX_REQUEST`] bytes, within [`REQUEST_TIMEOUT`].
async fn read_line(read: tokio::net::unix::OwnedReadHalf) -> Result<String, String> {
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64));
    match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => Err(format!("no request line within {REQUEST_TIMEOUT:?}")),
        Ok(Err(e)) => Err(format!("bad request line: {e}")),
        Ok(Ok(_)) if !line.ends_with('\n') && line.len() >= MAX_REQUEST => {
            Err(format!("request line longer than {MAX_REQUEST} bytes"))
        }
        Ok(Ok(_)) => Ok(line),
    }
}

fn json_error(e: &str) -> String {
    serde_json::json!({ "ok": false, "error": e }).to_string()
}

impl Control {
    /// Minimal HTTP/1.1 responder for `GET /metrics` (one request per connection; the
    /// head must arrive within [`REQUEST_TIMEOUT`] and fit in [`MAX_REQUEST`] bytes).
    async fn serve_metrics(
        self: Arc<Self>,
        mut stream: tokio::net::TcpStream,
        _slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        let mut buf = vec![0u8; MAX_REQUEST];
        let mut n = 0;
        let head = async {
            while n < buf.len() {
                match stream.read(&mut buf[n..]).await {
                    Ok(0) | Err(_) => return false,
                    Ok(k) => n += k,
                }
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    return true;
                }
            }
            false
        };
        if !matches!(tokio::time::timeout(REQUEST_TIMEOUT, head).await, Ok(true)) {
            return; // slow, oversized or closed: nothing to answer
        }
        let request = String::from_utf8_lossy(&buf[..n]);
        let (status, body) = if request.starts_with("GET /metrics ") || request.starts_with("GET /metrics?") {
            let host = self.host_findings().await;
            ("200 OK", prometheus_text(&self.shared, &host, self.started))
        } else {
            ("404 Not Found", "only GET /metrics is served\n".to_string())
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let reply = async {
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(body.as_bytes()).await
        };
        let _ = tokio::time::timeout(REPLY_TIMEOUT, reply).await;
    }

    /// The doctor's findings for this host as this process sees it (its own limits),
    /// checked at most once per [`HOST_CHECK_EVERY`], off the control loop.
    async fn host_findings(&self) -> Arc<Vec<crate::doctor::Finding>> {
        let mut cached = self.host.lock().await;
        if let Some((at, findings)) = cached.as_ref() {
            if at.elapsed() < HOST_CHECK_EVERY {
                return findings.clone();
            }
        }
        let findings =
            tokio::task::spawn_blocking(|| crate::doctor::Host::new("/").check()).await.unwrap_or_default();
        let findings = Arc::new(findings);
        *cached = Some((std::time::Instant::now(), findings.clone()));
        findings
    }
}

/// Latency histogram bucket upper bounds, ns (exported in seconds). Chosen for
/// this server's range: an in-process model run is 0.1–5 µs, a request's server
/// time 0.3–10 µs when healthy, and anything past 100 µs (the original budget) is
/// a fault worth seeing: fine steps from 100 ns to 100 µs (so `histogram_quantile`
/// interpolates within at most a 1.5–2× bucket there), then coarse up to 1 s.
pub const LATENCY_BUCKETS_NS: [u64; 25] = [
    100,
    250,
    500,
    1_000,
    2_000,
    3_000,
    5_000,
    7_500,
    10_000,
    15_000,
    20_000,
    30_000,
    50_000,
    75_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
    500_000_000,
    1_000_000_000,
];

/// The Prometheus text exposition of the shared stats and gauges, the build, and
/// `host`: the doctor's findings (one `tickinfer_doctor_finding` sample each).
pub fn prometheus_text(shared: &Shared, host: &[crate::doctor::Finding], started: f64) -> String {
    let mut out = String::new();
    let stats = match shared.stats.lock() {
        Ok(s) => s.clone(),
        Err(_) => return "# stats unavailable\n".into(),
    };
    let _ = writeln!(
        out,
        "# HELP tickinfer_build_info This build: crate version, wire and shared-memory protocol versions, GPU features.\n\
         # TYPE tickinfer_build_info gauge\n\
         tickinfer_build_info{{version=\"{}\",wire_version=\"{}\",shm_version=\"{}\",gpu=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        crate::wire::PROTOCOL_VERSION,
        crate::shm::SHM_VERSION,
        if cfg!(feature = "tensorrt") { "tensorrt" } else if cfg!(feature = "cuda") { "cuda" } else { "none" }
    );
    let _ = writeln!(
        out,
        "# HELP tickinfer_start_time_seconds When the server started, Unix seconds.\n\
         # TYPE tickinfer_start_time_seconds gauge\ntickinfer_start_time_seconds {started:.3}"
    );
    let _ = writeln!(
        out,
        "# HELP tickinfer_doctor_finding One per `tickinfer doctor` finding on this host, as the server's own \
         process sees it (its limits), re-checked at most once a minute; level ok, info or warn.\n\
         # TYPE tickinfer_doctor_finding gauge"
    );
    for f in host {
        let level = match f.level {
            crate::doctor::Level::Ok => "ok",
            crate::doctor::Level::Info => "info",
            crate::doctor::Level::Warn => "warn",
        };
        let _ = writeln!(out, "tickinfer_doctor_finding{{area=\"{}\",level=\"{level}\"}} 1", f.area);
    }
    out += "# HELP tickinfer_responses_total Responses sent, by wire status.\n# TYPE tickinfer_responses_total counter\n";
    for (code, n) in stats.status.iter().enumerate() {
        let name = format!("{:?}", Status::ALL[code]).to_lowercase();
        let _ = writeln!(out, "tickinfer_responses_total{{status=\"{name}\",code=\"{code}\"}} {n}");
    }
    let errors: u64 = stats.status.iter().skip(1).sum();
    let _ = writeln!(out, "# HELP tickinfer_errors_total Responses with a non-ok status.\n# TYPE tickinfer_errors_total counter\ntickinfer_errors_total {errors}");
    for (name, help, v) in [
        ("connections_accepted_total", "Client connections accepted.", stats.connections_accepted),
        (
            "connections_refused_total",
            "Client connections refused in the hello ack.",
            stats.connections_refused,
        ),
        (
            "slow_reader_disconnects_total",
            "Connections cut off for not reading their answers.",
            stats.slow_reader_disconnects,
        ),
        ("shm_sessions_total", "Shared-memory sessions granted.", stats.shm_sessions),
        (
            "shm_faults_total",
            "Shared-memory sessions cut off for breaking the ring protocol (bad indices).",
            stats.shm_faults,
        ),
        (
            "nonfinite_outputs_total",
            "Requests answered model failure because the model's output was NaN or infinite.",
            stats.nonfinite_outputs,
        ),
        (
            "keep_warm_runs_total",
            "Keep-warm model runs done while idle (--keep-warm-us), by the thread that owns the model.",
            stats.keep_warm_runs,
        ),
        (
            "keep_warm_socket_trips_total",
            "Keep-warm round trips on a private socket pair done while idle (--keep-warm-us).",
            stats.keep_warm_socket_trips,
        ),
        (
            "direct_reads_total",
            "Reads of the one connection made instead of a poll while spinning that took requests.",
            stats.direct_reads,
        ),
        (
            "direct_detaches_total",
            "Times the one connection was taken out of the poll to be read directly.",
            stats.direct_detaches,
        ),
        (
            "uid_quota_refusals_total",
            "Hellos refused because their uid held --max-connections-per-uid connections (also in \
             connections_refused_total).",
            stats.uid_quota_refusals,
        ),
        (
            "idle_disconnects_total",
            "Connections closed for sending no request within --idle-timeout-s.",
            stats.idle_disconnects,
        ),
        (
            "symbols_evicted_total",
            "Per-symbol state slots given to a new symbol after the old one was idle --evict-idle-symbols-ms.",
            stats.symbols_evicted,
        ),
        ("tcp_connections_total", "TCP connections accepted (--listen-tcp).", stats.tcp_connections),
        (
            "tcp_peers_refused_total",
            "TCP peers closed at accept because their address is not in --tcp-allow (also in \
             connections_refused_total).",
            stats.tcp_peers_refused,
        ),
        (
            "tcp_auth_refusals_total",
            "TCP hellos refused for a missing or wrong --tcp-token-file token (also in connections_refused_total).",
            stats.tcp_auth_refusals,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP tickinfer_{name} {help}\n# TYPE tickinfer_{name} counter\ntickinfer_{name} {v}"
        );
    }
    let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP tickinfer_{name} {help}\n# TYPE tickinfer_{name} gauge\ntickinfer_{name} {v}"
        );
    };
    // Relaxed: gauges.
    gauge(&mut out, "connections", "Open client connections.", shared.connections.load(Ordering::Relaxed));
    gauge(
        &mut out,
        "max_connections",
        "Client connections the server holds at most (--max-connections); more are refused.",
        shared.max_connections.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "shm_sessions",
        "Open connections whose requests travel through shared memory.",
        shared.shm_sessions.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "queue_depth",
        "Requests waiting in the request ring (pipeline mode).",
        shared.queue_depth.load(Ordering::Relaxed),
    );
    if let Some((info, _)) = shared.reload.current() {
        gauge(&mut out, "model_version", "Version of the serving model.", info.version as u64);
        let _ = writeln!(
            out,
            "# HELP tickinfer_model_info The serving model.\n# TYPE tickinfer_model_info gauge\ntickinfer_model_info{{name=\"{}\",provider=\"{}\",backend=\"{}\"}} 1",
            info.name.replace('"', "'"),
            info.provider,
            info.backend_now().split(' ').next().unwrap_or("ort")
        );
    }
    let verify = crate::verify::report(
        &shared.verify,
        shared.reload.current().as_ref().and_then(|(i, _)| i.verification.as_ref()),
    );
    gauge(
        &mut out,
        "backend_verify_every",
        "The live verifier re-runs one native answer in this many on ONNX Runtime (0: not verifying).",
        verify.every as u64,
    );
    for (name, help, v) in [
        ("backend_verified_total", "Native answers re-run on ONNX Runtime by the live verifier.", verify.checked),
        (
            "backend_disagreements_total",
            "Native answers ONNX Runtime gave differently (outside the tolerance or, for tree ensembles, any \
             difference).",
            verify.disagreed,
        ),
        (
            "backend_boundary_total",
            "Native answers within the tolerance whose signal differed at a rounding edge.",
            verify.boundary,
        ),
        ("backend_verify_dropped_total", "Samples the live verifier was too far behind to take.", verify.dropped),
        (
            "backend_fallbacks_total",
            "Models switched from the native backend to ONNX Runtime after a disagreement.",
            verify.fallbacks,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP tickinfer_{name} {help}\n# TYPE tickinfer_{name} counter\ntickinfer_{name} {v}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP tickinfer_reloads_total Model reloads, by result.\n# TYPE tickinfer_reloads_total counter"
    );
    let _ = writeln!(
        out,
        "tickinfer_reloads_total{{result=\"ok\"}} {}",
        shared.reload.reloads_ok.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "tickinfer_reloads_total{{result=\"failed\"}} {}",
        shared.reload.reloads_failed.load(Ordering::Relaxed)
    );
    for (name, help, h) in [
        ("queue_seconds", "Request read to model run start.", &stats.queue),
        ("inference_seconds", "Model run, per batch.", &stats.inference),
        ("total_seconds", "Request read to answer queued for write.", &stats.total),
    ] {
        let _ = writeln!(out, "# HELP tickinfer_{name} {help}\n# TYPE tickinfer_{name} histogram");
        for b in LATENCY_BUCKETS_NS {
            let count = h.count_between(0, b);
            let _ = writeln!(out, "tickinfer_{name}_bucket{{le=\"{}\"}} {count}", b as f64 / 1e9);
        }
        let _ = writeln!(out, "tickinfer_{name}_bucket{{le=\"+Inf\"}} {}", h.len());
        let sum = h.mean() * h.len() as f64 / 1e9;
        let _ = writeln!(out, "tickinfer_{name}_sum {sum}\ntickinfer_{name}_count {}", h.len());
    }
    let serving = shared.reload.current().map(|(info, _)| info.name);
    let shadows = shared.shadows.reports_and_tallies();
    let mut exposed =
        vec![crate::quality::Exposed { tally: &stats.quality, serving: serving.as_deref(), role: "primary" }];
    exposed.extend(shadows.iter().map(|(r, t)| crate::quality::Exposed {
        tally: t,
        serving: Some(&r.name),
        role: "shadow",
    }));
    crate::quality::write_prometheus(&mut out, &exposed);
    write_shadow_metrics(&mut out, serving.as_deref(), &stats.inference, &shadows);
    let _ = writeln!(
        out,
        "# HELP tickinfer_batch_size Requests per model run.\n# TYPE tickinfer_batch_size histogram"
    );
    for b in [1u64, 2, 4, 8, 16, 32, 64, 128, 256] {
        let _ =
            writeln!(out, "tickinfer_batch_size_bucket{{le=\"{b}\"}} {}", stats.batch.count_between(0, b));
    }
    let _ = writeln!(out, "tickinfer_batch_size_bucket{{le=\"+Inf\"}} {}", stats.batch.len());
    let _ = writeln!(
        out,
        "tickinfer_batch_size_sum {}\ntickinfer_batch_size_count {}",
        (stats.batch.mean() * stats.batch.len() as f64).round(),
        stats.batch.len()
    );
    out
}

/// The shadows' series (`crate::shadow`), and the primary's and shadows' model-run latency
/// side by side (labels `model`, `role`).
fn write_shadow_metrics(
    out: &mut String,
    serving: Option<&str>,
    primary: &hdrhistogram::Histogram<u64>,
    shadows: &[(crate::stats::ShadowReport, crate::quality::Tally)],
) {
    use std::fmt::Write as _;
    let clean = |m: &str| m.replace(['"', '\\', '\n'], "_");
    let _ = writeln!(
        out,
        "# HELP tickinfer_shadows Shadow candidates attached.\n# TYPE tickinfer_shadows gauge\ntickinfer_shadows {}",
        shadows.len()
    );
    let _ = writeln!(
        out,
        "# HELP tickinfer_model_run_seconds Model run time per run, by model and role (primary: since start; shadow: \
         since attached or promoted).\n# TYPE tickinfer_model_run_seconds summary"
    );
    let mut summary = |model: &str, role: &str, p: &crate::stats::Percentiles| {
        let labels = format!("model=\"{}\",role=\"{role}\"", clean(model));
        for (quantile, ns) in [("0.5", p.p50), ("0.99", p.p99), ("0.999", p.p999)] {
            let _ = writeln!(
                out,
                "tickinfer_model_run_seconds{{{labels},quantile=\"{quantile}\"}} {}",
                ns as f64 / 1e9
            );
        }
        let _ = writeln!(
            out,
            "tickinfer_model_run_seconds_sum{{{labels}}} {}\ntickinfer_model_run_seconds_count{{{labels}}} {}",
            p.mean * p.count as f64 / 1e9,
            p.count
        );
    };
    if let Some(m) = serving {
        summary(m, "primary", &crate::stats::Percentiles::of(primary));
    }
    for (r, _) in shadows {
        summary(&r.name, "shadow", &r.inference_ns);
    }
    if shadows.is_empty() {
        return;
    }
    type Of = fn(&crate::stats::ShadowReport) -> u64;
    let per_shadow: [(&str, &str, &str, Of); 6] = [
        ("shadow_scored_total", "counter", "Requests a shadow scored.", |r| r.scored),
        (
            "shadow_dropped_total",
            "counter",
            "Requests not queued for a shadow because it was behind (its state then starts again).",
            |r| r.dropped,
        ),
        ("shadow_queued", "gauge", "Requests queued for a shadow.", |r| r.queued),
        (
            "shadow_stale",
            "gauge",
            "1 while a shadow re-warms after dropped requests (promote refuses it without --force).",
            |r| r.stale as u64,
        ),
        ("shadow_warming_symbols", "gauge", "Symbols whose last answer from a shadow was warming.", |r| {
            r.warming_symbols
        }),
        ("shadow_broken", "gauge", "1 when a promotion gave up on a shadow's handover (remove it).", |r| {
            r.broken as u64
        }),
    ];
    for (name, kind, help, of) in per_shadow {
        let _ = writeln!(out, "# HELP tickinfer_{name} {help}\n# TYPE tickinfer_{name} {kind}");
        for (r, _) in shadows {
            let _ =
                writeln!(out, "tickinfer_{name}{{model=\"{}\",role=\"shadow\"}} {}", clean(&r.name), of(r));
        }
    }
    let _ = writeln!(
        out,
        "# HELP tickinfer_shadow_agreement_total Requests both the primary and a shadow answered ok, by the primary's \
         direction and the shadow's.\n# TYPE tickinfer_shadow_agreement_total counter"
    );
    const DIRS: [&str; 3] = ["-1", "0", "1"];
    for (r, _) in shadows {
        for (i, p) in DIRS.iter().enumerate() {
            for (j, s) in DIRS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "tickinfer_shadow_agreement_total{{model=\"{}\",role=\"shadow\",primary=\"{p}\",shadow=\"{s}\"}} {}",
                    clean(&r.name),
                    r.agreement[i][j]
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP tickinfer_shadow_failed_total Requests only one of the primary and a shadow answered ok, by which \
         failed.\n# TYPE tickinfer_shadow_failed_total counter"
    );
    for (r, _) in shadows {
        for (which, n) in [("shadow", r.shadow_only_failed), ("primary", r.primary_only_failed)] {
            let _ = writeln!(
                out,
                "tickinfer_shadow_failed_total{{model=\"{}\",role=\"shadow\",failed=\"{which}\"}} {n}",
                clean(&r.name)
            );
        }
    }
}

fn query(socket: &Path, command: &str) -> Result<String, String> {
    use std::io::{BufRead, Write};
    let path = control_path(socket);
    let mut s = std::os::unix::net::UnixStream::connect(&path).map_err(|e| {
        format!("cannot reach control socket {}: {e} (is `tickinfer serve` running?)", path.display())
    })?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(120))).map_err(|e| e.to_string())?;
    // A server that refuses may answer and close before reading: read its answer anyway.
    let sent = s.write_all(format!("{command}\n").as_bytes());
    let mut line = String::new();
    let read = std::io::BufReader::new(s).read_line(&mut line);
    match (sent, read) {
        (_, Ok(n)) if n > 0 => Ok(line),
        (Err(e), _) => Err(e.to_string()),
        (Ok(()), Err(e)) => Err(e.to_string()),
        (Ok(()), Ok(_)) => Err("the control socket closed without an answer".into()),
    }
}

/// Ask a running server's control socket for its stats (waiting, bounded, for a server
/// still loading its model).
pub fn query_stats(socket: &Path) -> Result<StatsReport, String> {
    let line = query(socket, "stats")?;
    let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| format!("bad answer: {e}: {line}"))?;
    if v["ok"] == false {
        return Err(v["error"].as_str().unwrap_or("stats failed").to_string());
    }
    serde_json::from_value(v).map_err(|e| format!("bad answer: {e}: {line}"))
}

/// Send a command whose answer is `{"ok":true,…}` or `{"ok":false,"error":…}`; the
/// answer when ok, else its error.
fn command_ok(socket: &Path, command: &str, what: &str) -> Result<serde_json::Value, String> {
    let line = query(socket, command)?;
    let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| format!("bad answer: {e}: {line}"))?;
    if v["ok"] == true {
        Ok(v)
    } else {
        Err(v["error"].as_str().map_or(format!("{what} failed"), String::from))
    }
}

/// Ask a running server to clear the per-symbol state of `symbol` (or every symbol's).
pub fn request_reset(socket: &Path, symbol: Option<u16>) -> Result<(), String> {
    let command = symbol.map_or("reset".to_string(), |s| format!("reset {s}"));
    command_ok(socket, &command, "reset").map(|_| ())
}

/// Ask a running server to load `model` as a shadow candidate beside its primary.
pub fn request_shadow_add(socket: &Path, model: &Path) -> Result<crate::stats::ShadowReport, String> {
    let abs = std::fs::canonicalize(model).map_err(|e| format!("{}: {e}", model.display()))?;
    let v = command_ok(socket, &format!("shadow add {}", abs.display()), "shadow add")?;
    serde_json::from_value(v["shadow"].clone()).map_err(|e| format!("bad answer: {e}"))
}

/// Ask a running server to detach its shadow named `name`.
pub fn request_shadow_remove(socket: &Path, name: &str) -> Result<(), String> {
    command_ok(socket, &format!("shadow remove {name}"), "shadow remove").map(|_| ())
}

/// A running server's shadows.
pub fn request_shadow_list(socket: &Path) -> Result<Vec<crate::stats::ShadowReport>, String> {
    let v = command_ok(socket, "shadow list", "shadow list")?;
    serde_json::from_value(v["shadows"].clone()).map_err(|e| format!("bad answer: {e}"))
}

/// Ask a running server to promote its shadow `name` to primary (`force`: even while it is
/// stale or warming); `Ok((name, version))` of the model serving now.
pub fn request_promote(socket: &Path, name: &str, force: bool) -> Result<(String, u32), String> {
    let command = if force { format!("promote {name} force") } else { format!("promote {name}") };
    let v = command_ok(socket, &command, "promote")?;
    Ok((v["name"].as_str().unwrap_or_default().to_string(), v["version"].as_u64().unwrap_or(0) as u32))
}

/// Ask a running server to load `model` (its configured model when `None`) and swap it
/// in; `Ok((name, version))`.
pub fn request_reload(socket: &Path, model: Option<&Path>) -> Result<(String, u32), String> {
    let command = match model {
        Some(m) => {
            let abs = std::fs::canonicalize(m).map_err(|e| format!("{}: {e}", m.display()))?;
            format!("reload {}", abs.display())
        }
        None => "reload".to_string(),
    };
    let v = command_ok(socket, &command, "reload")?;
    Ok((v["name"].as_str().unwrap_or_default().to_string(), v["version"].as_u64().unwrap_or(0) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that never finishes loading: `stats`, `reload` and `reset` wait the bound,
    /// then say so; an unknown command is answered at once.
    #[test]
    fn commands_wait_for_readiness_and_the_wait_is_bounded() {
        let control = Control {
            shared: Shared::new(),
            policy: SocketPolicy::default(),
            config_file: None,
            host: Default::default(),
            started: 0.0,
            ready_wait: Duration::from_millis(150),
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        for command in ["stats", "reload /tmp/m.toml", "reset", "reset 3"] {
            let t0 = std::time::Instant::now();
            let answer = rt.block_on(control.command(command));
            assert!(answer.contains("still loading its model after 150ms"), "{command}: {answer}");
            assert!(t0.elapsed() >= Duration::from_millis(150), "{command} waited {:?}", t0.elapsed());
        }
        let t0 = std::time::Instant::now();
        let answer = rt.block_on(control.command("restart"));
        assert!(answer.contains("unknown command") && t0.elapsed() < Duration::from_millis(100), "{answer}");
        control.shared.shutdown.trigger();
        let answer = rt.block_on(control.command("stats"));
        assert!(answer.contains("stopping"), "{answer}");
    }
}
