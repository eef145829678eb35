//! Control plane, off the hot path: a tokio current-thread runtime on its own
//! (unpinned) thread serving the control socket `<socket>.ctl` and turning
//! SIGTERM/SIGINT into a drain.
//!
//! Control protocol: one line per connection, one answer, then close.
//! `stats` → the shared [`StatsReport`] as one JSON line.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::server::Shutdown;
use crate::stats::{Stats, StatsReport};
use crate::transport::{SocketFile, SocketPolicy};

/// The control socket path of a server socket.
pub fn control_path(socket: &Path) -> PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(".ctl");
    PathBuf::from(p)
}

/// Start the control thread. It stops when `shutdown` triggers (after the
/// signal) or when the returned handle is dropped with the process.
pub fn spawn(
    socket: &Path,
    policy: &SocketPolicy,
    shared: Arc<Mutex<Stats>>,
    shutdown: Arc<Shutdown>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let (std_listener, file) =
        SocketFile::bind(&control_path(socket), policy).map_err(std::io::Error::other)?;
    std_listener.set_nonblocking(true)?;
    std::thread::Builder::new().name("tickinfer-control".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                log::error!("control plane: cannot start tokio: {e}");
                return;
            }
        };
        rt.block_on(async move {
            let _file = file; // removed when the control plane ends
            let listener = match tokio::net::UnixListener::from_std(std_listener) {
                Ok(l) => l,
                Err(e) => {
                    log::error!("control socket: {e}");
                    return;
                }
            };
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
            loop {
                tokio::select! {
                    _ = async { match term.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {
                        log::info!("SIGTERM: draining");
                        shutdown.trigger();
                    }
                    _ = async { match int.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {
                        log::info!("SIGINT: draining");
                        shutdown.trigger();
                    }
                    accepted = listener.accept() => {
                        if let Ok((stream, _)) = accepted {
                            tokio::spawn(serve_control(stream, shared.clone()));
                        }
                    }
                    _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {
                        if shutdown.is_triggered() { break; }
                    }
                }
            }
        });
    })
}

async fn serve_control(stream: tokio::net::UnixStream, shared: Arc<Mutex<Stats>>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read);
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    let answer = match line.trim() {
        "stats" => {
            let report = shared.lock().map(|s| s.report()).unwrap_or_default();
            serde_json::to_string(&report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
        }
        other => format!("{{\"error\":\"unknown command `{other}` (known: stats)\"}}"),
    };
    let _ = write.write_all(answer.as_bytes()).await;
    let _ = write.write_all(b"\n").await;
}

/// Ask a running server's control socket for its stats.
pub fn query_stats(socket: &Path) -> Result<StatsReport, String> {
    use std::io::{BufRead, Write};
    let path = control_path(socket);
    let mut s = std::os::unix::net::UnixStream::connect(&path).map_err(|e| {
        format!("cannot reach control socket {}: {e} (is `tickinfer serve` running?)", path.display())
    })?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).map_err(|e| e.to_string())?;
    s.write_all(b"stats\n").map_err(|e| e.to_string())?;
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line).map_err(|e| e.to_string())?;
    serde_json::from_str(&line).map_err(|e| format!("bad answer from {}: {e}: {line}", path.display()))
}
