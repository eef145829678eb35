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
//!
//! Memory is bounded whatever the input's size: the source is streamed
//! ([`source::open`]); this thread reads ahead into per-connection job rings
//! (2^18 events in all), collects answers back into event order and hands them to
//! [`report::Sink`] (the signals file, counts, signal quality at the label rule's
//! horizon per symbol), sleeping whenever there is nothing to move.

pub mod drive;
pub mod horizon;
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
use source::{Event, Format, SymbolTable};

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
    /// TCP to a server's --listen-tcp (what --connect tcp://host:port selects).
    Tcp,
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
    /// `--keep-warm-us`: after this long idle, a spinning connection thread sends a
    /// message round a private socket pair to keep its kernel path in cache.
    pub keep_warm: Option<std::time::Duration>,
    /// Cores the server runs on (a local server): connection threads are not pinned there.
    pub server_cores: Vec<usize>,
    /// `NAME=ID` symbol mappings.
    pub symbols: Vec<String>,
    /// CSV: `(our name, the file's column)` pairs (`--columns`).
    pub columns: Vec<(String, String)>,
    /// CSV: the timestamp column's unit (`--time-unit`).
    pub time_unit: Option<source::TimeUnit>,
    /// The realised direction's rule (signal quality): the model's `[label]`, as the server scores live.
    pub label: crate::quality::LabelRule,
    /// Leave out the first N events (e.g. a model's training period).
    pub skip: usize,
    /// Score signal quality only from this event on (the earlier ones are sent: they warm
    /// a stateful model's state).
    pub score_from: usize,
    /// Replay at most this many events (all when `None`).
    pub limit: Option<usize>,
    pub progress: bool,
    /// The pre-shared token sent to a TCP server (`--connect tcp://…` with `--tcp-token-file`).
    pub tcp_token: Option<Vec<u8>>,
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
    /// Events sent (after `--skip`, within `--limit`).
    pub events: u64,
    /// Input rows skipped, with why.
    pub skipped: Vec<(String, u64)>,
    /// Answers by wire status code (the last slot: codes this build does not know).
    pub by_status: Vec<u64>,
    pub quality: report::Quality,
    pub latency: Histogram<u64>,
    /// Actual send − intended send (open loop; empty closed loop).
    pub schedule_lag: Histogram<u64>,
    pub window_waits: WindowWaits,
    /// The window used per connection.
    pub window: usize,
    pub open_loop: bool,
    /// Core of each connection thread (`None`: not pinned).
    pub client_cores: Vec<Option<usize>>,
    /// Events read ahead of the senders per connection (the bound on replay's memory).
    pub read_ahead: usize,
    pub wall_ns: u64,
    pub price_scale: i64,
    pub model_name: String,
    pub model_version: u32,
    pub mismatched: u64,
    pub lost: u64,
}

/// Events read ahead of the senders, over all connections: the replay's memory bound
/// (about 220 bytes each), whatever the input's size.
const READ_AHEAD_EVENTS: usize = 1 << 18;
/// The largest window: a server's `--max-inflight` is at most this.
const MAX_WINDOW: usize = 1 << 16;

/// Connect, stream the input through the connections, collect: the signals file
/// (`signals`, in event order), quality and latency. Memory stays bounded by the
/// read-ahead and the windows, whatever the input's size.
pub fn run(socket: &Path, opts: &ReplayOptions, signals: Option<&Path>) -> Result<ReplayRun, String> {
    if let Some(r) = opts.rate.filter(|r| !(r.is_finite() && *r > 0.0)) {
        return Err(format!("--rate {r}: requests per second must be a positive number"));
    }
    let keep_warm_us = opts.keep_warm.map(|d| d.as_micros() as u64);
    crate::keep_warm::interval(
        "--keep-warm-us",
        keep_warm_us,
        opts.client_poll == ClientPoll::Spin,
        "--client-poll spin",
    )?;
    let mut symbols = SymbolTable::new(&opts.symbols)?;
    let connections = opts.connections.max(1);
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(match opts.transport {
            Transport::Socket => {
                connect(socket).map(|(s, ack)| (Link::Socket(ClientStream::Unix(s)), ack))?
            }
            Transport::Tcp => {
                let addr = crate::transport::tcp::parse_url(&socket.to_string_lossy())
                    .ok_or("--transport tcp needs --connect tcp://host:port")??;
                connect_tcp(addr, opts.tcp_token.as_deref())
                    .map(|(s, ack)| (Link::Socket(ClientStream::Tcp(s)), ack))?
            }
            Transport::Shm if socket.to_string_lossy().starts_with("tcp://") => {
                return Err("--transport shm is for a server on this host: connect to its Unix socket".into());
            }
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
    let mut feed = Feed::open(opts, &load, &ack, &mut symbols)?;
    let open_loop = opts.rate.is_some() || opts.speed != Speed::Max;
    // Open loop never waits on answers: the server's own in-flight bound is the window.
    let window =
        opts.window.unwrap_or(if open_loop { { ack.max_inflight }.max(1) as usize } else { 1 }).max(1);
    if window > MAX_WINDOW {
        return Err(format!(
            "--window {window}: at most {MAX_WINDOW} (a server holds at most 65536 requests in flight per connection)"
        ));
    }
    let read_ahead = (READ_AHEAD_EVENTS / connections).max(4 * window).max(1024).next_power_of_two();
    let client_cores = client_cores(connections, &opts.server_cores);
    let start = now_ns() + 2_000_000; // every connection starts on the same clock
    let plan = Arc::new(drive::Plan { start, window, poll: opts.client_poll, keep_warm: opts.keep_warm });

    let mut job_tx = Vec::with_capacity(connections);
    let mut done_rx = Vec::with_capacity(connections);
    let mut handles = Vec::with_capacity(connections);
    for ((link, _), core) in conns.into_iter().zip(client_cores.clone()) {
        let (jtx, mut jrx) = rtrb::RingBuffer::<drive::Job>::new(read_ahead);
        // As large as the job ring: a connection never waits on the collector while it keeps up.
        let (mut dtx, drx) = rtrb::RingBuffer::<drive::Done>::new(read_ahead + window);
        job_tx.push(jtx);
        done_rx.push(drx);
        let plan = plan.clone();
        handles.push(std::thread::spawn(move || -> Result<drive::ConnResult, String> {
            if let Some(c) = core {
                crate::sys::pin_to_core(c);
            }
            let mut link: Box<dyn drive::Link> = match link {
                Link::Shm(c) => Box::new(drive::ShmLink::new(*c)),
                Link::Socket(s) => Box::new(drive::SocketLink::new(s)?),
            };
            Ok(drive::drive(link.as_mut(), &mut jrx, &mut dtx, &plan))
        }));
    }

    // This thread reads ahead and collects, off the measured path: it sleeps whenever
    // there is nothing to move (the senders never wait on it while read-ahead remains).
    let mut sink = report::Sink::new(signals, opts.label, opts.score_from)?;
    let progress = feed.progress_bar(opts.progress);
    // At most the total read-ahead between the oldest unanswered event and the newest
    // read: the reorder queue never grows past its first allocation.
    let ahead = read_ahead * connections;
    let mut pending = Reorder { base: 0, queue: std::collections::VecDeque::with_capacity(ahead) };
    let mut held: Option<(usize, drive::Job)> = None;
    let mut feeding = true;
    let mut turns = 0u64;
    loop {
        let mut moved = false;
        // Feed: events in order, each to its symbol's connection, while their rings have room.
        while feeding && (held.is_some() || pending.queue.len() < ahead) {
            let (c, job) = match held.take() {
                Some(h) => h,
                None => match feed.next(&mut symbols)? {
                    Some((c, job, meta)) => {
                        pending.push(meta);
                        (c, job)
                    }
                    None => {
                        feeding = false;
                        job_tx.clear(); // abandon the rings: the connections finish
                        break;
                    }
                },
            };
            match job_tx[c].push(job) {
                Ok(()) => moved = true,
                Err(rtrb::PushError::Full(job)) => {
                    held = Some((c, job));
                    break;
                }
            }
        }
        // Collect: answers into their event's place; whole prefixes go to the sink in order.
        for rx in &mut done_rx {
            while let Ok(d) = rx.pop() {
                pending.complete(d.i, d.outcome);
                moved = true;
            }
        }
        while let Some((meta, outcome)) = pending.pop_ready() {
            sink.add(&meta, outcome).map_err(|e| format!("signals file: {e}"))?;
        }
        turns += 1;
        if turns % 64 == 0 || !moved {
            feed.show(&progress);
        }
        if !feeding && pending.is_empty() && handles.iter().all(|h| h.is_finished()) {
            break;
        }
        if !moved {
            // Every wake-up of this thread can take a core from a busy-polling sender: sleep
            // long (20 ms) while every job ring is at least half full (at 4 M events/s a full
            // ring lasts 60 ms) or feeding is over (the answer rings hold the whole read-ahead,
            // so they cannot fill up meanwhile); 1 ms while a ring runs low.
            let low = feeding && job_tx.iter().any(|tx| tx.slots() > read_ahead / 2);
            std::thread::sleep(Duration::from_millis(if low { 1 } else { 20 }));
        }
    }
    progress.finish_and_clear();
    let mut latency = drive::new_histogram();
    let mut schedule_lag = drive::new_histogram();
    let mut window_waits = WindowWaits::default();
    let mut mismatched = 0;
    let mut last = start;
    for h in handles {
        let r = h.join().map_err(|_| "a replay connection thread panicked".to_string())??;
        latency.add(&r.latency).map_err(|e| e.to_string())?;
        if open_loop {
            schedule_lag.add(&r.lag).map_err(|e| e.to_string())?;
        }
        window_waits.merge(&r.window);
        mismatched += r.mismatched;
        last = last.max(r.finished_ns);
    }
    if sink.events == 0 {
        return Err(format!("{}: no events to replay", opts.input.display()));
    }
    let (events, by_status, lost, quality) = sink.finish().map_err(|e| format!("signals file: {e}"))?;
    Ok(ReplayRun {
        events,
        skipped: feed.source.skipped(),
        by_status,
        quality,
        latency,
        schedule_lag,
        window_waits,
        window,
        open_loop,
        client_cores,
        read_ahead,
        wall_ns: last.saturating_sub(start),
        price_scale: ack.price_scale,
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

/// What the collector keeps of a sent event until its answer is written out.
pub struct Meta {
    pub ts_ns: u64,
    pub symbol: u16,
    /// bid + ask, at the server's price scale (the mid × 2: its sign of change is the label).
    pub mid2: i128,
    /// The quote passes the server's price checks (bid > 0, ask > bid): an event of its
    /// symbol's history for the label.
    pub quoted: bool,
}

/// Sent events in order, waiting for their answers (at most the read-ahead of them).
struct Reorder {
    /// Global index of `queue[0]`.
    base: u64,
    queue: std::collections::VecDeque<(Meta, Option<Option<Outcome>>)>,
}

impl Reorder {
    fn push(&mut self, meta: Meta) {
        self.queue.push_back((meta, None));
    }
    fn complete(&mut self, i: u64, outcome: Option<Outcome>) {
        if let Some(slot) = i.checked_sub(self.base).and_then(|k| self.queue.get_mut(k as usize)) {
            slot.1 = Some(outcome);
        }
    }
    fn pop_ready(&mut self) -> Option<(Meta, Option<Outcome>)> {
        if !matches!(self.queue.front(), Some((_, Some(_)))) {
            return None;
        }
        let (meta, outcome) = self.queue.pop_front()?;
        self.base += 1;
        Some((meta, outcome.flatten()))
    }
    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// The input as jobs: skipped and limited, rescaled to the server's price scale, depth
/// fitted to what the model reads, numbered, routed (`symbol % connections`) and paced.
struct Feed {
    source: source::Source,
    path: PathBuf,
    connections: usize,
    skip: usize,
    limit: Option<usize>,
    /// Events taken so far (after the skip).
    taken: u64,
    server_price_scale: i64,
    extras: u16,
    speed: Speed,
    rate: Option<f64>,
    /// The first sent event's time (pacing is relative to it).
    t_first: Option<u64>,
    warned: bool,
}

impl Feed {
    fn open(
        opts: &ReplayOptions,
        load: &source::LoadOptions,
        ack: &MlHelloAck,
        symbols: &mut SymbolTable,
    ) -> Result<Feed, String> {
        let source = source::open(&opts.input, opts.format, load).map_err(|e| e.to_string())?;
        let mut feed = Feed {
            source,
            path: opts.input.clone(),
            connections: opts.connections.max(1),
            skip: opts.skip,
            limit: opts.limit,
            taken: 0,
            server_price_scale: ack.price_scale,
            extras: { ack.model_features },
            speed: opts.speed,
            rate: opts.rate,
            t_first: None,
            warned: false,
        };
        for _ in 0..feed.skip {
            if feed.source.next_event(symbols).map_err(|e| e.to_string())?.is_none() {
                break;
            }
        }
        Ok(feed)
    }

    /// The next job, its connection and what the collector keeps of it.
    fn next(&mut self, symbols: &mut SymbolTable) -> Result<Option<(usize, drive::Job, Meta)>, String> {
        if self.limit.is_some_and(|n| self.taken >= n as u64) {
            return Ok(None);
        }
        let Some(mut e) = self.source.next_event(symbols).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let i = self.taken;
        self.taken += 1;
        let short = fit_to_model(
            &mut e,
            i,
            self.source.price_scale,
            self.source.depth_levels,
            self.server_price_scale,
            self.extras,
        )
        .map_err(|m| format!("{}: {m}", self.path.display()))?;
        if let Some(short) = short.filter(|_| !self.warned) {
            self.warned = true;
            log::warn!("{}: {short}: requests will be answered ML_ERR_FEATURE_COUNT", self.path.display());
        }
        let t_first = *self.t_first.get_or_insert(e.ts_ns);
        let due = due(i, e.ts_ns, t_first, self.speed, self.rate);
        let symbol = { e.req.symbol_id };
        let meta = Meta {
            ts_ns: { e.req.timestamp_ns },
            symbol,
            mid2: e.req.bid_price as i128 + e.req.ask_price as i128,
            quoted: e.req.bid_price > 0 && e.req.ask_price > e.req.bid_price,
        };
        Ok(Some((symbol as usize % self.connections, drive::Job { i, req: e.req, due }, meta)))
    }

    /// A progress bar by input bytes (by events when the size is unknown).
    fn progress_bar(&self, wanted: bool) -> indicatif::ProgressBar {
        match self.source.progress().1 {
            Some(total) => report::progress_bar_bytes(total, wanted),
            None => report::progress_bar(self.limit.unwrap_or(0) as u64, wanted),
        }
    }

    fn show(&self, bar: &indicatif::ProgressBar) {
        match self.source.progress() {
            (read, Some(_)) => bar.set_position(read),
            (_, None) => bar.set_position(self.taken),
        }
    }
}

/// Event `i` of a source as a server whose model has `price_scale` and reads `extras` extra
/// features receives it: prices rescaled from the source's `from_scale`, `request_id = i`,
/// and — when the file carries book depth (`depth` levels so far, levels 2.. in
/// `features[]`) — as much of it as the model reads (`n_features`: the server wants the
/// model's count). `Ok(Some(why))`: the model reads more than the event carries (the server
/// answers `ML_ERR_FEATURE_COUNT`). Replay and `tickinfer features` both prepare events here.
pub fn fit_to_model(
    e: &mut Event,
    i: u64,
    from_scale: i64,
    depth: usize,
    price_scale: i64,
    extras: u16,
) -> Result<Option<String>, String> {
    source::rescale_event(e, i, from_scale, price_scale)?;
    e.req.request_id = i;
    if depth > 1 {
        let carried = crate::wire::depth_features_for(depth) as u16;
        e.req.n_features = extras.min(carried);
        if extras > carried {
            return Ok(Some(format!(
                "the model reads {extras} extra features; the file carries book depth to level {depth} \
                 ({carried} features)"
            )));
        }
    } else if extras > 0 && { e.req.n_features } == 0 {
        return Ok(Some(format!("the model reads {extras} extra features but the file has none")));
    }
    Ok(None)
}

/// When each event is due, in ns after the replay's start: `None` for closed
/// loop (`Speed::Max` without a rate); `i / rate` at a fixed rate; the recorded
/// offset divided by the speed factor otherwise.
pub fn schedule(events: &[Event], speed: Speed, rate: Option<f64>) -> Vec<Option<u64>> {
    let t_first = events.first().map_or(0, |e| e.ts_ns);
    events.iter().enumerate().map(|(i, e)| due(i as u64, e.ts_ns, t_first, speed, rate)).collect()
}

/// When event `i` (recorded at `ts_ns`; the first at `t_first`) is due; see [`schedule`].
fn due(i: u64, ts_ns: u64, t_first: u64, speed: Speed, rate: Option<f64>) -> Option<u64> {
    match (rate, speed) {
        (Some(r), _) => Some((i as f64 * 1e9 / r).round() as u64),
        (None, Speed::Times(x)) => Some((ts_ns.saturating_sub(t_first) as f64 / x).round() as u64),
        (None, Speed::Max) => None,
    }
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

/// `--connect tcp://host:port`: connect (TCP_NODELAY), send the hello (and the token, if
/// any), read the ack.
pub(crate) fn connect_tcp(
    addr: std::net::SocketAddr,
    token: Option<&[u8]>,
) -> Result<(std::net::TcpStream, MlHelloAck), String> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(30))
        .map_err(|e| format!("connect tcp://{addr}: {e}"))?;
    crate::transport::tcp::tune_std(&s, None).map_err(|e| format!("tcp://{addr}: TCP_NODELAY: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    let mut hello = MlHello::current();
    let mut bytes = Vec::with_capacity(crate::wire::HELLO_SIZE + crate::wire::AUTH_SIZE);
    if let Some(token) = token {
        let auth = crate::wire::MlAuth::new(token).ok_or_else(|| {
            format!("the TCP token is {} bytes: at most {}", token.len(), crate::wire::AUTH_TOKEN_MAX)
        })?;
        hello.flags |= crate::wire::HELLO_FLAG_AUTH;
        bytes.extend_from_slice(bytemuck::bytes_of(&hello));
        bytes.extend_from_slice(bytemuck::bytes_of(&auth));
    } else {
        bytes.extend_from_slice(bytemuck::bytes_of(&hello));
    }
    // A peer refused at accept is closed at once: the write may fail, the read says why.
    let wrote = s.write_all(&bytes);
    let mut ack = [0u8; HELLO_ACK_SIZE];
    if let Err(e) = s.read_exact(&mut ack) {
        return Err(match wrote {
            Err(w) => format!("tcp://{addr}: hello: {w} (is this address in the server's --tcp-allow?)"),
            Ok(()) => format!("tcp://{addr}: hello: {e} (is this address in the server's --tcp-allow?)"),
        });
    }
    let ack: MlHelloAck = bytemuck::pod_read_unaligned(&ack);
    if ack.status != Status::Ok.code() {
        let st = Status::from_code(ack.status).map_or("unknown".into(), |s| s.to_string());
        return Err(format!("server refused the connection: {st}"));
    }
    Ok((s, ack))
}

/// A replay connection's socket: the server's Unix socket, or TCP.
pub(crate) enum ClientStream {
    Unix(UnixStream),
    Tcp(std::net::TcpStream),
}

impl ClientStream {
    pub(crate) fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        match self {
            ClientStream::Unix(s) => s.set_nonblocking(on),
            ClientStream::Tcp(s) => s.set_nonblocking(on),
        }
    }
}

impl Read for ClientStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            ClientStream::Unix(s) => s.read(buf),
            ClientStream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for ClientStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            ClientStream::Unix(s) => s.write(buf),
            ClientStream::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl std::os::fd::AsRawFd for ClientStream {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            ClientStream::Unix(s) => s.as_raw_fd(),
            ClientStream::Tcp(s) => s.as_raw_fd(),
        }
    }
}

/// One replay connection.
enum Link {
    Socket(ClientStream),
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

    /// Its shadow candidates now (`crate::shadow`).
    pub fn shadows(&self) -> Vec<crate::stats::ShadowReport> {
        self.shared.shadows.reports()
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

/// Replay, writing the signals file as it goes, then the JSON summary and plots, into `out`.
pub fn run_and_report(socket: &Path, opts: &ReplayOptions, out: &Path) -> Result<report::Summary, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let signals = out.join("signals.csv");
    let run = run(socket, opts, Some(&signals))?;
    let mut summary = report::summarize(&run, opts);
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
