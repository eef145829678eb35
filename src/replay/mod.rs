//! `tickinfer replay`: recorded market data through a server, with an honest
//! latency profile and the signals' quality.
//!
//! Pacing:
//! - `--speed max` (default): closed loop, each connection keeps `--window`
//!   (default 1) requests in flight; latency is measured from the actual send.
//! - `--speed realtime` or `--speed X`: open loop, each event is due at its
//!   recorded time offset (divided by X); `--rate R`: open loop, event i due at
//!   i/R seconds. Nothing waits for answers: the window is the server's
//!   `max_inflight` (from the hello ack) unless `--window` says otherwise, and
//!   the times a full window held a due send back are reported. Latency is
//!   measured from the *intended* send time, so a late sender (or a stalled
//!   server) shows up in the numbers instead of hiding (no coordinated
//!   omission); the client's own lateness is reported apart as schedule lag.
//!
//! Events go to connection `symbol_id % connections`, so one symbol's events
//! stay in order on one connection. Each connection is one thread ([`drive`]),
//! over the socket or shared memory (`--transport shm`), busy-polling by
//! default, pinned to a core the server does not use where there are enough.

pub mod drive;
pub mod report;
pub mod source;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::clock::now_ns;
use crate::wire::{MlHello, MlHelloAck, MlResponse, Status, HELLO_ACK_SIZE};
pub use drive::{ClientPoll, WindowWaits};
use source::{Event, Format, Stream, SymbolTable};

/// Replay speed.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub enum Speed {
    /// Closed loop, as fast as the window allows.
    Max,
    /// Recorded inter-event times divided by this factor (1.0 = real time).
    Times(f64),
}

impl std::str::FromStr for Speed {
    type Err = String;
    fn from_str(s: &str) -> Result<Speed, String> {
        match s {
            "max" => Ok(Speed::Max),
            "realtime" => Ok(Speed::Times(1.0)),
            x => match x.trim_end_matches('x').parse::<f64>() {
                Ok(f) if f > 0.0 && f.is_finite() => Ok(Speed::Times(f)),
                _ => Err(format!("--speed {s}: use max, realtime or a factor like 10 (times faster)")),
            },
        }
    }
}

/// How replay's requests reach the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// The server's Unix socket.
    #[default]
    Socket,
    /// Shared-memory rings negotiated on the socket (same host).
    Shm,
}

/// Options of a replay run.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    pub input: PathBuf,
    pub format: Format,
    pub speed: Speed,
    /// Open loop at this many requests per second (overrides `speed`).
    pub rate: Option<f64>,
    pub connections: usize,
    /// Requests in flight per connection [default: 1 closed loop, the server's max_inflight open loop].
    pub window: Option<usize>,
    pub transport: Transport,
    /// How connection threads wait when idle.
    pub client_poll: ClientPoll,
    /// Cores the server runs on (a local server): connection threads are not pinned there.
    pub server_cores: Vec<usize>,
    /// `NAME=ID` symbol mappings.
    pub symbols: Vec<String>,
    /// CSV: `(our name, the file's column)` pairs (`--columns`).
    pub columns: Vec<(String, String)>,
    /// CSV: the timestamp column's unit (`--time-unit`).
    pub time_unit: Option<source::TimeUnit>,
    /// Events ahead for the realised direction (signal quality).
    pub horizon: usize,
    /// Leave out the first N events (e.g. a model's training period).
    pub skip: usize,
    /// Score signal quality only from this event on (the earlier ones are sent: they warm
    /// a stateful model's state).
    pub score_from: usize,
    /// Replay at most this many events (all when `None`).
    pub limit: Option<usize>,
    pub progress: bool,
}

/// What one request got.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome {
    pub status: u16,
    pub direction: i8,
    pub confidence: u8,
    pub target_price: i64,
    /// Round trip (closed loop) or latency from the intended send time (open loop), ns.
    pub latency_ns: u64,
}

impl Outcome {
    fn of(resp: &MlResponse, latency_ns: u64) -> Outcome {
        Outcome {
            status: resp.status,
            direction: resp.direction,
            confidence: resp.confidence,
            target_price: resp.target_price,
            latency_ns,
        }
    }
}

/// Everything a replay produced.
pub struct ReplayRun {
    pub stream: Stream,
    pub outcomes: Vec<Outcome>,
    pub latency: Histogram<u64>,
    /// Actual send − intended send (open loop; empty closed loop).
    pub schedule_lag: Histogram<u64>,
    pub window_waits: WindowWaits,
    /// The window used per connection.
    pub window: usize,
    pub open_loop: bool,
    /// Core of each connection thread (`None`: not pinned).
    pub client_cores: Vec<Option<usize>>,
    pub wall_ns: u64,
    pub price_scale: i64,
    pub model_name: String,
    pub model_version: u32,
    pub mismatched: u64,
    pub lost: u64,
}

/// Load the input, connect, replay, collect.
pub fn run(socket: &Path, opts: &ReplayOptions) -> Result<ReplayRun, String> {
    let mut symbols = SymbolTable::new(&opts.symbols)?;
    let connections = opts.connections.max(1);
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(match opts.transport {
            Transport::Socket => connect(socket).map(|(s, ack)| (Link::Socket(s), ack))?,
            Transport::Shm => crate::shm::ShmClient::connect(socket, Duration::from_secs(30))
                .map(|(c, ack)| (Link::Shm(Box::new(c)), ack))
                .map_err(|e| format!("shared memory on {}: {e}", socket.display()))?,
        });
    }
    let ack = conns[0].1;
    // Sizes are read at the server's size scale (its hello ack): a decimal size that does
    // not fit it is an error naming the manifest line that fixes it.
    let load = source::LoadOptions {
        size_scale: ack.size_scale(),
        columns: opts.columns.clone(),
        time_unit: opts.time_unit,
    };
    let mut stream =
        source::load_with(&opts.input, opts.format, &mut symbols, &load).map_err(|e| e.to_string())?;
    stream.events.drain(..opts.skip.min(stream.events.len()));
    if let Some(n) = opts.limit {
        stream.events.truncate(n);
    }
    if stream.events.is_empty() {
        return Err(format!("{}: no events to replay", opts.input.display()));
    }
    let price_scale = ack.price_scale;
    source::rescale(&mut stream.events, stream.price_scale, price_scale)
        .map_err(|e| format!("{}: {e}", opts.input.display()))?;
    let extras = { ack.model_features };
    if stream.depth_levels > 1 {
        // The file carries book depth (levels 2..=depth in features[]): send as much of
        // it as the model reads, since the server wants n_features equal to the model's.
        let carried = crate::wire::depth_features_for(stream.depth_levels) as u16;
        if extras > carried {
            log::warn!(
                "the model reads {extras} extra features; {} carries book depth to level {} ({carried} features): \
                 requests will be answered ML_ERR_FEATURE_COUNT",
                opts.input.display(),
                stream.depth_levels
            );
        }
        for e in &mut stream.events {
            e.req.n_features = extras.min(carried);
        }
    } else if extras > 0 && stream.events.iter().all(|e| { e.req.n_features } == 0) {
        log::warn!(
            "the model reads {extras} extra features but {} has none: requests will be answered ML_ERR_FEATURE_COUNT",
            opts.input.display()
        );
    }
    for (i, e) in stream.events.iter_mut().enumerate() {
        e.req.request_id = i as u64;
    }

    // Per-connection event lists (global indices), and each event's due offset.
    let n = stream.events.len();
    let mut lists: Vec<Vec<usize>> = vec![Vec::new(); connections];
    for (i, e) in stream.events.iter().enumerate() {
        lists[{ e.req.symbol_id } as usize % connections].push(i);
    }
    let due = schedule(&stream.events, opts.speed, opts.rate);
    let open_loop = due.iter().any(Option::is_some);
    // Open loop never waits on answers: the server's own in-flight bound is the window.
    let window =
        opts.window.unwrap_or(if open_loop { { ack.max_inflight }.max(1) as usize } else { 1 }).max(1);
    let client_cores = client_cores(connections, &opts.server_cores);
    let events = Arc::new(stream.events.clone());
    let due = Arc::new(due);
    let progress = report::progress_bar(n as u64, opts.progress);
    let start = now_ns() + 2_000_000; // every connection starts on the same clock
    let poll = opts.client_poll;

    let mut handles = Vec::new();
    for (((link, _), list), core) in conns.into_iter().zip(lists).zip(client_cores.clone()) {
        let (events, due, progress) = (events.clone(), due.clone(), progress.clone());
        handles.push(std::thread::spawn(move || {
            if let Some(c) = core {
                crate::sys::pin_to_core(c);
            }
            let plan = drive::Plan { events: &events, list: &list, due: &due, start, window, poll };
            let mut link: Box<dyn drive::Link> = match link {
                Link::Shm(c) => Box::new(drive::ShmLink::new(*c)),
                Link::Socket(s) => Box::new(drive::SocketLink::new(s)?),
            };
            drive::drive(link.as_mut(), &plan, &progress)
        }));
    }
    let mut outcomes = vec![Outcome::default(); n];
    let mut latency = drive::new_histogram();
    let mut schedule_lag = drive::new_histogram();
    let mut window_waits = WindowWaits::default();
    let (mut mismatched, mut lost) = (0, 0);
    let mut last = start;
    for h in handles {
        let r = h.join().map_err(|_| "a replay connection thread panicked".to_string())??;
        for (i, o) in r.outcomes {
            latency.saturating_record(o.latency_ns.max(1));
            outcomes[i] = o;
        }
        if open_loop {
            schedule_lag.add(&r.lag).map_err(|e| e.to_string())?;
        }
        window_waits.merge(&r.window);
        mismatched += r.mismatched;
        lost += r.lost;
        last = last.max(r.finished_ns);
    }
    progress.finish_and_clear();
    Ok(ReplayRun {
        stream,
        outcomes,
        latency,
        schedule_lag,
        window_waits,
        window,
        open_loop,
        client_cores,
        wall_ns: last.saturating_sub(start),
        price_scale,
        model_name: ack.model_name().to_string(),
        model_version: ack.model_version,
        mismatched,
        lost,
    })
}

/// A core for each connection thread: usable cores the server does not run on, core 0
/// first (a server takes isolated and non-zero cores first); none when there are fewer
/// such cores than connections (then the scheduler places them).
fn client_cores(connections: usize, server_cores: &[usize]) -> Vec<Option<usize>> {
    let mut free: Vec<usize> =
        crate::server::usable_cores().into_iter().filter(|c| !server_cores.contains(c)).collect();
    free.sort_by_key(|&c| (c != 0, c));
    if free.len() >= connections {
        free.into_iter().take(connections).map(Some).collect()
    } else {
        vec![None; connections]
    }
}

/// When each event is due, in ns after the replay's start: `None` for closed
/// loop (`Speed::Max` without a rate); `i / rate` at a fixed rate; the recorded
/// offset divided by the speed factor otherwise.
pub fn schedule(events: &[Event], speed: Speed, rate: Option<f64>) -> Vec<Option<u64>> {
    let t_first = events.first().map_or(0, |e| e.ts_ns);
    events
        .iter()
        .enumerate()
        .map(|(i, e)| match (rate, speed) {
            (Some(r), _) => Some((i as f64 * 1e9 / r).round() as u64),
            (None, Speed::Times(x)) => Some((e.ts_ns.saturating_sub(t_first) as f64 / x).round() as u64),
            (None, Speed::Max) => None,
        })
        .collect()
}

/// Connect and exchange hellos; a refusal is an error naming the status.
pub(crate) fn connect(socket: &Path) -> Result<(UnixStream, MlHelloAck), String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("connect {}: {e}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    s.write_all(bytemuck::bytes_of(&MlHello::current())).map_err(|e| e.to_string())?;
    let mut ack = [0u8; HELLO_ACK_SIZE];
    s.read_exact(&mut ack).map_err(|e| format!("hello: {e}"))?;
    let ack: MlHelloAck = bytemuck::pod_read_unaligned(&ack);
    if ack.status != Status::Ok.code() {
        let st = Status::from_code(ack.status).map_or("unknown".into(), |s| s.to_string());
        return Err(format!("server refused the connection: {st}"));
    }
    Ok((s, ack))
}

/// One replay connection.
enum Link {
    Socket(UnixStream),
    Shm(Box<crate::shm::ShmClient>),
}

/// A server run in this process on a temporary socket, for `replay --model` and
/// the demo; stopped (drained) when dropped.
pub struct LocalServer {
    pub socket: PathBuf,
    /// The model it serves (backend and why included).
    pub model: crate::engine::ModelInfo,
    /// Cores its threads are pinned to.
    pub cores: Vec<usize>,
    shared: Arc<crate::server::Shared>,
    thread: Option<std::thread::JoinHandle<Result<crate::stats::StatsReport, String>>>,
    dir: PathBuf,
}

impl LocalServer {
    /// Start `cfg` (its `socket` is replaced by a temporary one) and wait until ready.
    pub fn start(mut cfg: crate::server::ServerConfig) -> Result<LocalServer, String> {
        let dir = std::env::temp_dir().join(format!("tickinfer-{}-{}", std::process::id(), now_ns()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        cfg.socket = dir.join("replay.sock");
        let socket = cfg.socket.clone();
        let shared = crate::server::Shared::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let sd = shared.clone();
        let thread = std::thread::Builder::new()
            .name("tickinfer-server".into())
            .spawn(move || {
                let tx2 = tx.clone();
                let r = crate::server::run(cfg, sd, move |ready| {
                    let _ = tx2.send(Ok(ready.clone()));
                })
                .map_err(|e| e.to_string());
                if let Err(e) = &r {
                    let _ = tx.send(Err(e.clone()));
                }
                r
            })
            .map_err(|e| e.to_string())?;
        match rx.recv() {
            Ok(Ok(ready)) => {
                let cores = ready.io_core.into_iter().chain(ready.worker_core).collect();
                Ok(LocalServer { socket, model: ready.model, cores, shared, thread: Some(thread), dir })
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the server thread ended before it was ready".into()),
        }
    }

    /// Drain and stop; returns the server's own stats.
    pub fn stop(mut self) -> Result<crate::stats::StatsReport, String> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<crate::stats::StatsReport, String> {
        self.shared.shutdown.trigger();
        let r = match self.thread.take() {
            Some(t) => t.join().map_err(|_| "server thread panicked".to_string())?,
            None => Ok(Default::default()),
        };
        let _ = std::fs::remove_dir_all(&self.dir);
        r
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.stop_inner();
        }
    }
}

/// Replay, then write the signals file, JSON summary and plots into `out`.
pub fn run_and_report(socket: &Path, opts: &ReplayOptions, out: &Path) -> Result<report::Summary, String> {
    let run = run(socket, opts)?;
    let mut summary = report::summarize(&run, opts);
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let signals = out.join("signals.csv");
    report::write_signals(&run, &signals).map_err(|e| format!("{}: {e}", signals.display()))?;
    summary.signals_file = Some(signals);
    let title = format!(
        "tickinfer replay: {} events, {} — latency by percentile",
        summary.events,
        opts.input.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()
    );
    let svg = report::plot_svg(&run.latency, &title);
    let svg_path = out.join("latency.svg");
    std::fs::write(&svg_path, &svg).map_err(|e| format!("{}: {e}", svg_path.display()))?;
    summary.plot_svg = Some(svg_path);
    let png_path = out.join("latency.png");
    match report::svg_to_png(&svg, &png_path) {
        Ok(()) => summary.plot_png = Some(png_path),
        Err(e) => log::warn!("PNG plot not written ({e}); the SVG is"),
    }
    let json = out.join("summary.json");
    std::fs::write(&json, serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?)
        .map_err(|e| format!("{}: {e}", json.display()))?;
    Ok(summary)
}
