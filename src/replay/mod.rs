//! `tickinfer replay`: recorded market data through a server, with an honest
//! latency profile and the signals' quality.
//!
//! Pacing:
//! - `--speed max` (default): closed loop, each connection keeps `--window`
//!   requests in flight; latency is measured from the actual send.
//! - `--speed realtime` or `--speed X`: open loop, each event is due at its
//!   recorded time offset (divided by X); `--rate R`: open loop, event i due at
//!   i/R seconds. In open loop, latency is measured from the *intended* send
//!   time, so a late sender (or a stalled server) shows up in the numbers
//!   instead of hiding (no coordinated omission).
//!
//! Events go to connection `symbol_id % connections`, so one symbol's events
//! stay in order on one connection.
//!
//! `--transport shm` sends through shared memory (`proto/ml_shm.h`): one thread
//! per connection sends what is due (and fits the window) and drains answers
//! without blocking, busy-polling; latency is counted the same way.

pub mod report;
pub mod source;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::clock::now_ns;
use crate::wire::{MlHello, MlHelloAck, MlRequest, MlResponse, Status, HELLO_ACK_SIZE, RESPONSE_SIZE};
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
    pub window: usize,
    pub transport: Transport,
    /// `NAME=ID` symbol mappings.
    pub symbols: Vec<String>,
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
    let mut stream = source::load(&opts.input, opts.format, &mut symbols).map_err(|e| e.to_string())?;
    stream.events.drain(..opts.skip.min(stream.events.len()));
    if let Some(n) = opts.limit {
        stream.events.truncate(n);
    }
    if stream.events.is_empty() {
        return Err(format!("{}: no events to replay", opts.input.display()));
    }
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
    let events = Arc::new(stream.events.clone());
    let due = Arc::new(due);
    let progress = report::progress_bar(n as u64, opts.progress);
    let start = now_ns() + 2_000_000; // every connection starts on the same clock
    let window = opts.window.max(1);

    let mut handles = Vec::new();
    for ((s, _), list) in conns.into_iter().zip(lists) {
        let (events, due, progress) = (events.clone(), due.clone(), progress.clone());
        handles.push(std::thread::spawn(move || match s {
            Link::Shm(c) => drive_shm(*c, &events, &list, &due, start, window, &progress),
            Link::Socket(s) if window == 1 && due.iter().all(Option::is_none) => {
                drive_sync(s, &events, &list, start, &progress)
            }
            Link::Socket(s) => drive(s, &events, &list, &due, start, window, &progress),
        }));
    }
    let mut outcomes = vec![Outcome::default(); n];
    let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3).expect("static bounds");
    let (mut mismatched, mut lost) = (0, 0);
    let mut last = start;
    for h in handles {
        let r = h.join().map_err(|_| "a replay connection thread panicked".to_string())??;
        for (i, o) in r.outcomes {
            latency.saturating_record(o.latency_ns.max(1));
            outcomes[i] = o;
        }
        mismatched += r.mismatched;
        lost += r.lost;
        last = last.max(r.finished_ns);
    }
    progress.finish_and_clear();
    Ok(ReplayRun {
        stream,
        outcomes,
        latency,
        wall_ns: last.saturating_sub(start),
        price_scale,
        model_name: ack.model_name().to_string(),
        model_version: ack.model_version,
        mismatched,
        lost,
    })
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

/// One shared-memory connection on one thread: publish what is due and fits
/// the window, drain the answers, never block (busy-polling). Latency runs from
/// the intended send time (open loop) or the actual one (closed loop).
fn drive_shm(
    mut c: crate::shm::ShmClient,
    events: &[Event],
    list: &[usize],
    due: &[Option<u64>],
    start: u64,
    window: usize,
    progress: &indicatif::ProgressBar,
) -> Result<ConnResult, String> {
    while now_ns() < start {
        std::hint::spin_loop();
    }
    let mut intended = vec![0u64; list.len()];
    let mut outcomes = Vec::with_capacity(list.len());
    let (mut sent, mut k, mut mismatched, mut lost) = (0usize, 0usize, 0u64, 0u64);
    let (mut idle, mut gone) = (0u32, false);
    while k < list.len() {
        let mut moved = false;
        while sent < list.len() && sent - k < window {
            let now = now_ns();
            let when = match due[list[sent]] {
                Some(d) if start + d > now => break,
                Some(d) => start + d,
                None => now,
            };
            if !c.try_send(&events[list[sent]].req).map_err(|e| format!("send: {e}"))? {
                break; // request ring full: answers first
            }
            intended[sent] = when;
            sent += 1;
            moved = true;
        }
        while let Some(resp) = c.try_recv() {
            let t = now_ns();
            let i = list[k];
            mismatched += ({ resp.request_id } != i as u64) as u64;
            outcomes.push((i, Outcome::of(&resp, t.saturating_sub(intended[k]))));
            k += 1;
            moved = true;
            if k % 1024 == 0 {
                progress.inc(1024);
            }
        }
        if moved {
            idle = 0;
        } else if gone {
            // Hung up, and the pass after it found no answer left in the ring.
            lost = (list.len() - k) as u64;
            break;
        } else {
            idle = idle.wrapping_add(1);
            // The ring idle for a while: is the server still there? (one more pass drains
            // what it published before it hung up)
            gone = idle % 4096 == 0 && c.server_gone();
            std::hint::spin_loop();
        }
    }
    progress.inc((k % 1024) as u64);
    Ok(ConnResult { outcomes, mismatched, lost, finished_ns: now_ns() })
}

struct ConnResult {
    outcomes: Vec<(usize, Outcome)>,
    mismatched: u64,
    lost: u64,
    finished_ns: u64,
}

/// Closed loop with one request in flight: one thread sends, then busy-polls for
/// the answer (a blocking read would add the host's wake-up time, ~45 µs on a VM,
/// to every round trip).
fn drive_sync(
    mut stream: UnixStream,
    events: &[Event],
    list: &[usize],
    start: u64,
    progress: &indicatif::ProgressBar,
) -> Result<ConnResult, String> {
    stream.set_nonblocking(true).map_err(|e| e.to_string())?;
    while now_ns() < start {
        std::hint::spin_loop();
    }
    let mut outcomes = Vec::with_capacity(list.len());
    let (mut mismatched, mut lost) = (0, 0);
    let mut buf = [0u8; RESPONSE_SIZE];
    for (k, &i) in list.iter().enumerate() {
        let t0 = now_ns();
        if let Err(e) = write_all_spin(&mut stream, bytemuck::bytes_of(&events[i].req)) {
            log::warn!("replay connection: send: {e}");
            lost = (list.len() - k) as u64;
            break;
        }
        if read_exact_spin(&mut stream, &mut buf).is_err() {
            lost = (list.len() - k) as u64;
            break;
        }
        let t1 = now_ns();
        let resp: MlResponse = bytemuck::pod_read_unaligned(&buf);
        mismatched += ({ resp.request_id } != i as u64) as u64;
        outcomes.push((i, Outcome::of(&resp, t1 - t0)));
        if k % 1024 == 1023 {
            progress.inc(1024);
        }
    }
    Ok(ConnResult { outcomes, mismatched, lost, finished_ns: now_ns() })
}

/// Write all of `bytes` to a non-blocking socket, busy-polling while it is full.
pub(crate) fn write_all_spin(s: &mut UnixStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        match s.write(bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Fill `buf` from a non-blocking socket, busy-polling; EOF is `UnexpectedEof`.
pub(crate) fn read_exact_spin(s: &mut UnixStream, buf: &mut [u8]) -> std::io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One connection, pipelined or paced: a sender thread and a receiver (this thread).
fn drive(
    stream: UnixStream,
    events: &[Event],
    list: &[usize],
    due: &[Option<u64>],
    start: u64,
    window: usize,
    progress: &indicatif::ProgressBar,
) -> Result<ConnResult, String> {
    // intended[k]: when request k of this connection was due (or sent), ns.
    let intended: Arc<Vec<AtomicU64>> = Arc::new((0..list.len()).map(|_| AtomicU64::new(0)).collect());
    let received = Arc::new(AtomicU64::new(0));
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let reqs: Vec<MlRequest> = list.iter().map(|&i| events[i].req).collect();
    let dues: Vec<Option<u64>> = list.iter().map(|&i| due[i]).collect();
    let (int2, recv2) = (intended.clone(), received.clone());

    let sender = std::thread::spawn(move || -> Result<(), String> {
        while now_ns() < start {
            std::hint::spin_loop();
        }
        let mut k = 0;
        let mut buf: Vec<MlRequest> = Vec::with_capacity(64);
        while k < reqs.len() {
            buf.clear();
            // Acquire: pairs with the receiver's Release increment; the window counts answers seen.
            let done = recv2.load(Ordering::Acquire) as usize;
            let room = window.saturating_sub(k - done);
            let now = now_ns();
            while buf.len() < room.min(64) && k + buf.len() < reqs.len() {
                let j = k + buf.len();
                match dues[j] {
                    Some(d) if start + d > now => break,
                    Some(d) => int2[j].store(start + d, Ordering::Relaxed),
                    None => int2[j].store(now, Ordering::Relaxed),
                }
                buf.push(reqs[j]);
            }
            if buf.is_empty() {
                // Window full or next event not due: spin briefly, yield to the receiver.
                std::thread::yield_now();
                continue;
            }
            // Release for the intended stamps: the receiver reads them after its answer arrives.
            std::sync::atomic::fence(Ordering::Release);
            writer.write_all(bytemuck::cast_slice(&buf)).map_err(|e| format!("send: {e}"))?;
            k += buf.len();
        }
        Ok(())
    });

    let mut reader = stream;
    let mut outcomes = Vec::with_capacity(list.len());
    let mut mismatched = 0;
    let mut buf = vec![0u8; 256 * RESPONSE_SIZE];
    let (mut have, mut k) = (0usize, 0usize);
    let mut lost = 0;
    while k < list.len() {
        let n = match reader.read(&mut buf[have..]) {
            Ok(0) | Err(_) => {
                lost = (list.len() - k) as u64;
                break;
            }
            Ok(n) => n,
        };
        let t = now_ns();
        have += n;
        let whole = have / RESPONSE_SIZE;
        for f in 0..whole {
            let resp: MlResponse =
                bytemuck::pod_read_unaligned(&buf[f * RESPONSE_SIZE..(f + 1) * RESPONSE_SIZE]);
            let i = list[k];
            if { resp.request_id } != i as u64 {
                mismatched += 1;
            }
            std::sync::atomic::fence(Ordering::Acquire);
            let sent = intended[k].load(Ordering::Relaxed);
            outcomes.push((i, Outcome::of(&resp, t.saturating_sub(sent))));
            k += 1;
            // Release: the sender's Acquire load sees answers only after they are recorded.
            received.fetch_add(1, Ordering::Release);
        }
        progress.inc(whole as u64);
        buf.copy_within(whole * RESPONSE_SIZE..have, 0);
        have -= whole * RESPONSE_SIZE;
    }
    let finished_ns = now_ns();
    match sender.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) if lost > 0 => log::warn!("replay connection: {e}"),
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err("sender thread panicked".into()),
    }
    Ok(ConnResult { outcomes, mismatched, lost, finished_ns })
}

/// A server run in this process on a temporary socket, for `replay --model` and
/// the demo; stopped (drained) when dropped.
pub struct LocalServer {
    pub socket: PathBuf,
    /// The model it serves (backend and why included).
    pub model: crate::engine::ModelInfo,
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
                Ok(LocalServer { socket, model: ready.model, shared, thread: Some(thread), dir })
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
