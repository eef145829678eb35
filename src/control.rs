//! Control plane, off the hot path: a tokio current-thread runtime on its own
//! (unpinned) thread. It serves the control socket `<socket>.ctl`, the optional
//! Prometheus endpoint, and signals: SIGTERM/SIGINT drain, SIGHUP reloads the
//! model (re-reading `model` from the config file when there is one).
//!
//! Control protocol: one line per connection, one JSON line back, then close.
//! - `stats` → the [`StatsReport`];
//! - `reload PATH` → `{"ok":true,"name":…,"version":…}` or `{"ok":false,"error":…}`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::server::Shared;
use crate::stats::StatsReport;
use crate::transport::{SocketFile, SocketPolicy};
use crate::wire::Status;

/// The control socket path of a server socket.
pub fn control_path(socket: &Path) -> PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(".ctl");
    PathBuf::from(p)
}

/// Start the control thread; it ends once `shared.shutdown` triggers.
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
    std::thread::Builder::new().name("tickinfer-control".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                log::error!("control plane: cannot start tokio: {e}");
                return;
            }
        };
        rt.block_on(control_loop(std_listener, file, metrics_listener, shared, config_file));
    })
}

async fn next_signal(sig: &mut Option<tokio::signal::unix::Signal>) {
    match sig.as_mut() {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

async fn control_loop(
    std_listener: std::os::unix::net::UnixListener,
    file: SocketFile,
    metrics: Option<std::net::TcpListener>,
    shared: Arc<Shared>,
    config_file: Option<PathBuf>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let _file = file; // the control socket file is removed when this ends
    let Ok(listener) = tokio::net::UnixListener::from_std(std_listener) else {
        log::error!("control socket: cannot register with tokio");
        return;
    };
    let metrics = metrics.and_then(|l| tokio::net::TcpListener::from_std(l).ok());
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    let mut hup = signal(SignalKind::hangup()).ok();
    loop {
        tokio::select! {
            _ = next_signal(&mut term) => {
                log::info!("SIGTERM: draining");
                shared.shutdown.trigger();
            }
            _ = next_signal(&mut int) => {
                log::info!("SIGINT: draining");
                shared.shutdown.trigger();
            }
            _ = next_signal(&mut hup) => {
                let path = match &config_file {
                    Some(cfg) => crate::server::ServeOptions { config: Some(cfg.clone()), ..Default::default() }
                        .with_config_file()
                        .ok()
                        .and_then(|o| o.model),
                    None => shared.reload.current().map(|(_, p)| p),
                };
                match path {
                    Some(p) => {
                        log::info!("SIGHUP: reloading {}", p.display());
                        let s = shared.clone();
                        let _ = tokio::task::spawn_blocking(move || s.reload.reload(&p)).await;
                    }
                    None => log::warn!("SIGHUP: no model path to reload"),
                }
            }
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(serve_control(stream, shared.clone()));
                }
            }
            accepted = async { match &metrics { Some(m) => m.accept().await, None => std::future::pending().await } } => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(serve_metrics(stream, shared.clone()));
                }
            }
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {
                if shared.shutdown.is_triggered() { break; }
            }
        }
    }
}

fn json_error(e: &str) -> String {
    serde_json::json!({ "ok": false, "error": e }).to_string()
}

async fn serve_control(stream: tokio::net::UnixStream, shared: Arc<Shared>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    if BufReader::new(read).read_line(&mut line).await.is_err() {
        return;
    }
    let line = line.trim();
    let answer = if line == "stats" {
        let report = shared.stats.lock().map(|s| s.report()).unwrap_or_default();
        serde_json::to_string(&report).unwrap_or_else(|e| json_error(&e.to_string()))
    } else if let Some(path) = line.strip_prefix("reload ") {
        let path = PathBuf::from(path.trim());
        let s = shared.clone();
        match tokio::task::spawn_blocking(move || s.reload.reload(&path)).await {
            Ok(Ok(info)) => {
                serde_json::json!({ "ok": true, "name": info.name, "version": info.version }).to_string()
            }
            Ok(Err(e)) => json_error(&e),
            Err(e) => json_error(&e.to_string()),
        }
    } else {
        json_error(&format!("unknown command `{line}` (known: stats, reload PATH)"))
    };
    let _ = write.write_all(answer.as_bytes()).await;
    let _ = write.write_all(b"\n").await;
}

/// Minimal HTTP/1.1 responder for `GET /metrics` (one request per connection).
async fn serve_metrics(mut stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    while n < buf.len() {
        match stream.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => return,
            Ok(k) => n += k,
        }
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let request = String::from_utf8_lossy(&buf[..n]);
    let (status, body) = if request.starts_with("GET /metrics ") || request.starts_with("GET /metrics?") {
        ("200 OK", prometheus_text(&shared))
    } else {
        ("404 Not Found", "only GET /metrics is served\n".to_string())
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
}

/// Histogram bucket bounds in seconds: 1 µs … 1 s, fine enough for microseconds.
const LATENCY_BUCKETS_NS: [u64; 22] = [
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

/// The Prometheus text exposition of the shared stats and gauges.
pub fn prometheus_text(shared: &Shared) -> String {
    let mut out = String::new();
    let stats = match shared.stats.lock() {
        Ok(s) => s.clone(),
        Err(_) => return "# stats unavailable\n".into(),
    };
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
        "queue_depth",
        "Requests waiting in the request ring (pipeline mode).",
        shared.queue_depth.load(Ordering::Relaxed),
    );
    if let Some((info, _)) = shared.reload.current() {
        gauge(&mut out, "model_version", "Version of the serving model.", info.version as u64);
        let _ = writeln!(
            out,
            "# HELP tickinfer_model_info The serving model.\n# TYPE tickinfer_model_info gauge\ntickinfer_model_info{{name=\"{}\",provider=\"{}\"}} 1",
            info.name.replace('"', "'"),
            info.provider
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

fn query(socket: &Path, command: &str) -> Result<String, String> {
    use std::io::{BufRead, Write};
    let path = control_path(socket);
    let mut s = std::os::unix::net::UnixStream::connect(&path).map_err(|e| {
        format!("cannot reach control socket {}: {e} (is `tickinfer serve` running?)", path.display())
    })?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(120))).map_err(|e| e.to_string())?;
    s.write_all(format!("{command}\n").as_bytes()).map_err(|e| e.to_string())?;
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line).map_err(|e| e.to_string())?;
    Ok(line)
}

/// Ask a running server's control socket for its stats.
pub fn query_stats(socket: &Path) -> Result<StatsReport, String> {
    let line = query(socket, "stats")?;
    serde_json::from_str(&line).map_err(|e| format!("bad answer: {e}: {line}"))
}

/// Ask a running server to load `model` and swap it in; `Ok((name, version))`.
pub fn request_reload(socket: &Path, model: &Path) -> Result<(String, u32), String> {
    let abs = std::fs::canonicalize(model).map_err(|e| format!("{}: {e}", model.display()))?;
    let line = query(socket, &format!("reload {}", abs.display()))?;
    let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| format!("bad answer: {e}: {line}"))?;
    if v["ok"] == true {
        Ok((v["name"].as_str().unwrap_or_default().to_string(), v["version"].as_u64().unwrap_or(0) as u32))
    } else {
        Err(v["error"].as_str().unwrap_or("reload failed").to_string())
    }
}
