//! The `tickinfer` command line.
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

use tickinfer::server::{self, ServeOptions, Shared};

#[derive(Parser)]
#[command(name = "tickinfer", version, about = "Low-latency trading-signal inference server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a model on a Unix socket until SIGTERM/SIGINT (then drain and exit 0).
    Serve(Box<ServeOptions>),
    /// Load a new model into a running server and swap it in between two requests; waits for
    /// the outcome (exit status 1 if refused: the old model keeps serving). systemd's ExecReload.
    Reload {
        #[arg(long)]
        socket: PathBuf,
        /// The new model's manifest [default: the server's configured model, re-read: the config
        /// file's `model` if it was started with one, else the manifest it serves].
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// Clear the per-symbol history of a running server's stateful model (e.g. at the session start).
    Reset {
        #[arg(long)]
        socket: PathBuf,
        /// Only this symbol_id [default: every symbol].
        #[arg(long)]
        symbol: Option<u16>,
    },
    /// Shadow candidates: models that see a copy of every request the primary scores, off the
    /// hot path, compared and scored side by side; their answers are never sent.
    Shadow {
        #[command(subcommand)]
        action: ShadowAction,
    },
    /// Make a shadow the primary between two requests, with its warm state; the primary
    /// becomes that shadow (rollback: promote it back).
    Promote {
        #[arg(long)]
        socket: PathBuf,
        /// The shadow's name (its manifest's `name`; `tickinfer shadow list`).
        #[arg(long)]
        model: String,
        /// Promote even while the shadow is stale (dropped requests) or warming symbols.
        #[arg(long)]
        force: bool,
    },
    /// Print the latency and status statistics of a running server.
    Stats {
        /// The server's socket (its control socket is PATH.ctl).
        #[arg(long)]
        socket: PathBuf,
        /// Print the raw JSON report.
        #[arg(long)]
        json: bool,
    },
    /// Replay recorded market data through a server: latency profile, signals, plot.
    Replay(Box<ReplayArgs>),
    /// Training data from the server's own feature code: for every event of recorded market
    /// data, the row the server would feed the model (warming flag included), its timestamp,
    /// symbol and mid, and the label at the model's horizon, as Parquet: one file per input.
    /// Exit status 2 on bad input (no partial file is left under the final name).
    Features(Box<FeaturesArgs>),
    /// The demo: serve the bundled model, replay the bundled sample stream, report, stop.
    Demo {
        /// Where the signals, summary and plots go.
        #[arg(long, default_value = "tickinfer-demo")]
        out: PathBuf,
    },
    /// Measure, in one run: transport floor, bare ORT, tickinfer per poll mode, throughput, Python sidecar.
    Bench {
        /// Model manifest.
        #[arg(long, default_value = "models/lobster_direction.toml")]
        model: PathBuf,
        /// Round trips per latency row.
        #[arg(long, default_value_t = 200_000)]
        requests: usize,
        /// Seconds of the throughput row.
        #[arg(long, default_value_t = 3.0)]
        throughput_secs: f64,
        /// Pipelining connections of the throughput row.
        #[arg(long, default_value_t = 2)]
        connections: usize,
        /// Requests per window (two windows in flight per connection).
        #[arg(long, default_value_t = 256)]
        window: usize,
        /// Short run for CI: every row, briefly.
        #[arg(long)]
        short: bool,
        /// Python for the sidecar row [default: $TICKINFER_PYTHON or python3].
        #[arg(long)]
        python: Option<String>,
        /// Output directory (bench.json, bench.md, bench.svg, bench.png).
        #[arg(long, default_value = "bench-out")]
        out: PathBuf,
        /// Print, instead of the plain table, the run's markdown tables for docs/performance.md
        /// with the date (UTC), the machine and the configuration (scripts/update_perf_docs.sh).
        #[arg(long)]
        markdown: bool,
    },
    /// Check whether this host is tuned for low latency, with the fix for each finding.
    Doctor {
        /// Read /proc and /sys under this root (for testing against fixture trees).
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Exit non-zero if anything should be fixed.
        #[arg(long)]
        strict: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the wire layout (every frame's size and field offsets) of this build.
    Layout,
    /// Install the C/C++ client (headers, CMake package `tickinfer::client`, tickinfer-client.pc) under a prefix.
    InstallClient {
        /// Install prefix: DIR/include/tickinfer, DIR/lib/cmake/tickinfer, DIR/lib/pkgconfig.
        #[arg(long)]
        prefix: PathBuf,
    },
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// Input: LOBSTER message CSV (orderbook beside it) or zip, DBN (.dbn/.dbn.zst), CSV, or capture.
    #[arg(long)]
    input: PathBuf,
    #[command(flatten)]
    reader: ReaderArgs,
    /// max (closed loop), realtime, or a factor (10 = ten times faster than recorded).
    #[arg(long, default_value = "max")]
    speed: String,
    /// Open loop at this many requests per second (latency from the intended send time).
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Requests in flight per connection [default: 1 closed loop; open loop (--speed X,
    /// --rate) the server's max_inflight, so no send waits for an answer].
    #[arg(long)]
    window: Option<usize>,
    /// How each connection thread waits when idle: spin (busy-poll, no sleep or yield on the
    /// measured path) or block (poll/futex until due or answered; for a shared machine,
    /// adds its wake-up to every answer).
    #[arg(long, value_enum, default_value = "spin")]
    client_poll: tickinfer::replay::ClientPoll,
    /// Spinning connection threads: after this many µs idle, send a message round a private
    /// socket pair so their kernel socket path stays in cache (what a latency-minded client
    /// does between sparse events; see docs/serving.md, "Keeping warm") [default: off].
    #[arg(long)]
    keep_warm_us: Option<u64>,
    /// How requests reach the server: its Unix socket, or shared memory negotiated on it
    /// (same host; one busy-polling thread per connection); tcp is what --connect selects.
    #[arg(long, value_enum, default_value = "socket")]
    transport: tickinfer::replay::Transport,
    /// A running server's socket ...
    #[arg(long, conflicts_with_all = ["model", "connect"], required_unless_present_any = ["model", "connect"])]
    socket: Option<PathBuf>,
    /// ... or a server on another host: tcp://host:port (its --listen-tcp) ...
    #[arg(long, value_name = "tcp://HOST:PORT", conflicts_with = "model")]
    connect: Option<String>,
    /// With --connect: a file holding the server's pre-shared token (its --tcp-token-file).
    #[arg(long, requires = "connect")]
    tcp_token_file: Option<PathBuf>,
    /// ... or a model manifest: a server is started on a temporary socket and stopped after.
    #[arg(long)]
    model: Option<PathBuf>,
    /// With --model: how that server polls.
    #[arg(long, value_enum, default_value = "spin")]
    server_poll: server::PollMode,
    /// With --model: that server's --keep-warm-us [default: off].
    #[arg(long)]
    server_keep_warm_us: Option<u64>,
    #[command(flatten)]
    label: LabelArgs,
    /// Leave out the first N events (e.g. the model's training period).
    #[arg(long, default_value_t = 0)]
    skip: usize,
    /// Send every event but score signal quality only from event N on (after --skip): the
    /// events before it warm a stateful model's per-symbol state (e.g. its training period).
    #[arg(long, default_value_t = 0)]
    score_from: usize,
    /// Replay only the first N events (after --skip).
    #[arg(long)]
    limit: Option<usize>,
    /// Output directory (signals.csv, summary.json, latency.svg, latency.png).
    #[arg(long, default_value = "replay-out")]
    out: PathBuf,
    /// Print the JSON summary instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct FeaturesArgs {
    /// The model's manifest: its features (and mean/std), price and size scales, [label]. The
    /// .onnx is not read: a manifest written for training, before any model, does.
    #[arg(long)]
    model: PathBuf,
    /// Inputs, one Parquet file each: LOBSTER (message CSV with its orderbook beside it, or a
    /// zip), DBN (.dbn/.dbn.zst), CSV, or capture.
    #[arg(long, num_args = 1.., required = true)]
    input: Vec<PathBuf>,
    #[command(flatten)]
    reader: ReaderArgs,
    /// Output directory: OUT/<input name>.parquet.
    #[arg(long)]
    out: PathBuf,
    /// Files written at once (one thread each).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    #[command(flatten)]
    label: LabelArgs,
    /// Leave out each file's first N events.
    #[arg(long, default_value_t = 0)]
    skip: usize,
    /// Take at most N events of each file (after --skip).
    #[arg(long)]
    limit: Option<usize>,
    /// Rows per Parquet row group.
    #[arg(long, default_value_t = tickinfer::dataset::ROW_GROUP_ROWS)]
    row_group_rows: usize,
    /// Rows that may wait for their label beyond a row group (the memory bound); a row still
    /// waiting past it is written with a null label, counted in the summary.
    #[arg(long, default_value_t = tickinfer::dataset::LOOKAHEAD_ROWS)]
    lookahead_rows: usize,
    /// Symbols with state per file, as the server's --max-symbols: events of more are
    /// refused (no row), as the server would answer them.
    #[arg(long, default_value_t = 1024)]
    max_symbols: usize,
    /// Print the JSON summary (every file's counts) on stdout instead of the written paths.
    #[arg(long)]
    json: bool,
}

/// How the input files are read: the options replay and features share.
#[derive(clap::Args)]
struct ReaderArgs {
    #[arg(long, value_enum)]
    format: tickinfer::replay::source::Format,
    /// CSV: read our column NAME from the file's COLUMN, e.g. `--columns timestamp=ts_event,bid_price=bid_px_00,
    /// symbol=ticker` (names: timestamp, timestamp_ns, symbol, symbol_id, bid_price, ask_price, bid_size,
    /// ask_size, book_imbalance, f0..f31); repeatable.
    #[arg(long)]
    columns: Vec<String>,
    /// CSV: unit of the timestamp column [default: ns for `timestamp_ns`, s for `timestamp`].
    #[arg(long, value_enum)]
    time_unit: Option<tickinfer::replay::source::TimeUnit>,
    /// Symbol mapping NAME=ID (ticker, DBN instrument id or CSV symbol); repeatable. Default: ids
    /// by first appearance (per input file).
    #[arg(long = "symbols")]
    symbols: Vec<String>,
}

/// The realised-direction rule (the label): the options replay and features share.
#[derive(clap::Args)]
struct LabelArgs {
    /// Events ahead (same symbol) for the realised direction [default: the manifest's [label]
    /// rule (the one a server scores live), else 10 events, flat within 0 bps].
    #[arg(long)]
    horizon: Option<u32>,
    /// The realised mid is the one in force this many ms later (request timestamps); with
    /// --horizon, the k-th later event counts only within it.
    #[arg(long)]
    horizon_ms: Option<f64>,
    /// A move of at most this many bps is flat [default: the manifest's flat_bps, else 0].
    #[arg(long)]
    flat_bps: Option<f64>,
}

impl LabelArgs {
    /// `model`'s rule (see [`label_of`]) with these options over it, checked.
    fn rule(&self, model: Option<&std::path::Path>) -> Result<tickinfer::quality::LabelRule, String> {
        let mut rule = label_of(model);
        if self.horizon.is_some() || self.horizon_ms.is_some() {
            (rule.horizon_events, rule.horizon_ms) = (self.horizon, self.horizon_ms);
        }
        rule.flat_bps = self.flat_bps.unwrap_or(rule.flat_bps);
        rule.checked().map_err(|e| format!("--horizon, --horizon-ms, --flat-bps: {e}"))
    }
}

/// `tickinfer features`: the options into [`tickinfer::dataset::run`]; paths on stdout, the
/// summary on stderr.
fn features(args: FeaturesArgs) -> Result<(), String> {
    let label = args.label.rule(Some(&args.model))?;
    let opts = tickinfer::dataset::Options {
        model: args.model,
        inputs: args.input,
        format: args.reader.format,
        out: args.out,
        jobs: args.jobs.max(1),
        symbols: args.reader.symbols,
        columns: tickinfer::replay::source::LoadOptions::parse_columns(&args.reader.columns)?,
        time_unit: args.reader.time_unit,
        label,
        skip: args.skip,
        limit: args.limit,
        row_group_rows: args.row_group_rows.max(1),
        lookahead_rows: args.lookahead_rows,
        max_symbols: args.max_symbols,
        progress: !args.json,
    };
    let summary = tickinfer::dataset::run(&opts)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?);
    } else {
        for f in &summary.files {
            println!("{}", f.output.display());
        }
    }
    eprintln!("{}", summary.line());
    Ok(())
}

#[derive(Subcommand)]
enum ShadowAction {
    /// Load a model beside the primary (at most 4 shadows).
    Add {
        #[arg(long)]
        socket: PathBuf,
        /// The candidate's manifest.
        #[arg(long)]
        model: PathBuf,
    },
    /// Detach a shadow.
    Remove {
        #[arg(long)]
        socket: PathBuf,
        /// The shadow's name.
        #[arg(long)]
        model: String,
    },
    /// The shadows beside the primary: agreement, latency, signal quality.
    List {
        #[arg(long)]
        socket: PathBuf,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
}

fn shadow(action: ShadowAction) -> ExitCode {
    use tickinfer::control;
    let result = match action {
        ShadowAction::Add { socket, model } => control::request_shadow_add(&socket, &model).map(|r| {
            println!("shadow attached: {} v{} ({}) from {}", r.name, r.version, r.backend, r.path);
        }),
        ShadowAction::Remove { socket, model } => {
            control::request_shadow_remove(&socket, &model).map(|()| println!("shadow {model} removed"))
        }
        ShadowAction::List { socket, json } => control::request_shadow_list(&socket).map(|list| {
            if json {
                println!("{}", serde_json::to_string_pretty(&list).expect("reports serialise"));
            } else if list.is_empty() {
                println!("no shadow attached");
            } else {
                list.iter().for_each(|r| println!("{}", tickinfer::stats::shadow_summary(r)));
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tickinfer shadow: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_micros()
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(opts) => serve(*opts),
        Command::Reload { socket, model } => {
            match tickinfer::control::request_reload(&socket, model.as_deref()) {
                Ok((name, version)) => {
                    println!("reloaded: now serving {name} v{version}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tickinfer reload: refused, the old model keeps serving: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Shadow { action } => shadow(action),
        Command::Promote { socket, model, force } => {
            match tickinfer::control::request_promote(&socket, &model, force) {
                Ok((name, version)) => {
                    println!("promoted: now serving {name} v{version}; the old primary is a shadow");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tickinfer promote: refused, the primary keeps serving: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Reset { socket, symbol } => match tickinfer::control::request_reset(&socket, symbol) {
            Ok(()) => {
                match symbol {
                    Some(s) => println!("state of symbol {s} reset"),
                    None => println!("state of every symbol reset"),
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tickinfer reset: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Stats { socket, json } => match tickinfer::control::query_stats(&socket) {
            Ok(report) if json => {
                println!("{}", serde_json::to_string_pretty(&report).expect("report serialises"));
                ExitCode::SUCCESS
            }
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tickinfer stats: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Replay(args) => match replay(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tickinfer replay: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Features(args) => match features(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tickinfer features: {e}");
                ExitCode::from(2)
            }
        },
        Command::Demo { out } => match demo(&out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tickinfer demo: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Bench {
            model,
            requests,
            throughput_secs,
            connections,
            window,
            short,
            python,
            out,
            markdown,
        } => {
            let model = if model.exists() { model } else { bundled("models/lobster_direction.toml") };
            let mut opts = tickinfer::bench::BenchOptions::short(model, out);
            if !short {
                opts.requests = requests;
                opts.throughput_secs = throughput_secs;
                opts.window = window;
            }
            opts.connections = connections;
            opts.more_models = tickinfer::bench::MORE_MODELS.iter().map(|m| bundled(m)).collect();
            if let Some(p) = python {
                opts.python = p;
            }
            match tickinfer::bench::run(&opts) {
                Ok(report) if markdown => {
                    print!("{}", tickinfer::bench::docs_markdown(&report, &opts));
                    eprintln!("written: {}/bench.{{json,md,svg,png}}", opts.out.display());
                    ExitCode::SUCCESS
                }
                Ok(report) => {
                    print!("{}", tickinfer::bench::markdown(&report));
                    println!("written: {}/bench.{{json,md,svg,png}}", opts.out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tickinfer bench: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Doctor { root, strict, json } => {
            let findings = tickinfer::doctor::Host::new(root).check();
            if json {
                println!("{}", serde_json::to_string_pretty(&findings).expect("findings serialise"));
            } else {
                print!("{}", tickinfer::doctor::render(&findings));
            }
            let warns = findings.iter().any(|f| f.level == tickinfer::doctor::Level::Warn);
            if strict && warns {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::InstallClient { prefix } => match tickinfer::client_install::install(&prefix) {
            Ok(files) => {
                for f in files {
                    println!("installed {}", f.display());
                }
                println!(
                    "use: find_package(tickinfer CONFIG REQUIRED) with CMAKE_PREFIX_PATH={p}, then \
                     target_link_libraries(app PRIVATE tickinfer::client); or \
                     PKG_CONFIG_PATH={p}/lib/pkgconfig pkg-config --cflags tickinfer-client",
                    p = prefix.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("install-client: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Layout => {
            println!("tickinfer wire protocol v{}", tickinfer::wire::PROTOCOL_VERSION);
            for (name, value) in tickinfer::wire::layout_table() {
                println!("{name:<40} {value:>4}");
            }
            ExitCode::SUCCESS
        }
    }
}

fn serve(opts: ServeOptions) -> ExitCode {
    let config_file = opts.config.clone();
    let mut cfg = match opts.with_config_file().and_then(ServeOptions::resolve) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("tickinfer serve: {e}");
            return ExitCode::from(2);
        }
    };
    // Shadows attach once the primary serves: a manifest that is not there is refused now.
    if let Some(missing) = cfg.shadows.iter().find(|p| !p.is_file()) {
        eprintln!("tickinfer serve: --shadow {}: no such manifest", missing.display());
        return ExitCode::from(2);
    }
    // Socket activation: systemd holds the listening socket; serve the one it passed.
    match tickinfer::systemd::inherited_listener(&cfg.socket) {
        Ok(inherited) => cfg.inherited_listener = inherited.map(std::sync::Arc::new),
        Err(e) => {
            eprintln!("tickinfer serve: {e}");
            return ExitCode::from(2);
        }
    }
    let shared = Shared::new();
    let control = match tickinfer::control::spawn(
        &cfg.socket,
        &cfg.control_policy,
        shared.clone(),
        config_file,
        cfg.metrics,
    ) {
        Ok(handle) => handle,
        Err(e) => {
            eprintln!("tickinfer serve: control socket: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = server::run(cfg, shared.clone(), |ready| {
        let line = format!(
            "model {} v{} on {} ({:?} mode, {:?} polling, batch up to {})",
            ready.model.name,
            ready.model.version,
            ready.model.provider,
            ready.mode,
            ready.poll,
            ready.model.max_batch
        );
        log::info!("ready: {line}");
        tickinfer::systemd::ready(&format!("serving {line}"));
    });
    shared.shutdown.trigger(); // stops the control plane on every path
    let _ = control.join();
    match result {
        Ok(report) => {
            log::info!("final stats:\n{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tickinfer serve: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A path given relative to the repository, found from the working directory or the source tree.
fn bundled(rel: &str) -> PathBuf {
    let here = PathBuf::from(rel);
    if here.exists() {
        here
    } else {
        tickinfer::source_root().join(rel)
    }
}

/// The label rule of `model`'s manifest: its `[label]`, else an older manifest's
/// `[model] horizon_events` with flat within 0 bps, else 10 events.
fn label_of(model: Option<&std::path::Path>) -> tickinfer::quality::LabelRule {
    let manifest = model.and_then(|m| tickinfer::manifest::Manifest::load(m).ok());
    let events = |k: Option<usize>| tickinfer::quality::LabelRule {
        horizon_events: Some(k.unwrap_or(10) as u32),
        horizon_ms: None,
        flat_bps: 0.0,
    };
    match manifest {
        Some(m) => m.label.map_or_else(|| events(m.horizon_events), |l| l.rule),
        None => events(None),
    }
}

fn replay(args: ReplayArgs) -> Result<(), String> {
    let speed: tickinfer::replay::Speed = args.speed.parse()?;
    let opts = tickinfer::replay::ReplayOptions {
        input: args.input,
        format: args.reader.format,
        speed,
        rate: args.rate,
        connections: args.connections,
        window: args.window,
        transport: match (&args.connect, args.transport) {
            (Some(_), tickinfer::replay::Transport::Socket | tickinfer::replay::Transport::Tcp) => {
                tickinfer::replay::Transport::Tcp
            }
            (Some(_), tickinfer::replay::Transport::Shm) => {
                return Err("--transport shm is for a server on this host (--socket), not --connect".into())
            }
            (None, tickinfer::replay::Transport::Tcp) => {
                return Err("--transport tcp: give the server's address with --connect tcp://host:port".into())
            }
            (None, t) => t,
        },
        client_poll: args.client_poll,
        keep_warm: args.keep_warm_us.map(std::time::Duration::from_micros),
        server_cores: vec![],
        symbols: args.reader.symbols,
        columns: tickinfer::replay::source::LoadOptions::parse_columns(&args.reader.columns)?,
        time_unit: args.reader.time_unit,
        label: args.label.rule(args.model.as_deref())?,
        skip: args.skip,
        score_from: args.score_from,
        limit: args.limit,
        progress: !args.json,
        tcp_token: match &args.tcp_token_file {
            Some(path) => Some(tickinfer::transport::tcp::Token::load(path)?.bytes().to_vec()),
            None => None,
        },
    };
    let connect = match &args.connect {
        Some(url) => match tickinfer::transport::tcp::parse_url(url) {
            Some(Ok(addr)) => Some(PathBuf::from(format!("tcp://{addr}"))),
            Some(Err(e)) => return Err(format!("--connect {e}")),
            None => return Err(format!("--connect {url}: want tcp://host:port (a Unix socket: --socket)")),
        },
        None => None,
    };
    let summary = match (args.socket.as_ref().or(connect.as_ref()), &args.model) {
        (Some(socket), _) => tickinfer::replay::run_and_report(socket, &opts, &args.out)?,
        (None, Some(model)) => {
            let mut cfg = tickinfer::server::ServerConfig::new(model, "unused");
            cfg.poll = args.server_poll;
            cfg.keep_warm = tickinfer::keep_warm::interval(
                "--server-keep-warm-us",
                args.server_keep_warm_us,
                cfg.poll != server::PollMode::Block,
                "--server-poll spin or adaptive",
            )?;
            cfg.stats_interval = std::time::Duration::ZERO;
            let local = tickinfer::replay::LocalServer::start(cfg)?;
            let opts = tickinfer::replay::ReplayOptions { server_cores: local.cores.clone(), ..opts };
            let summary = tickinfer::replay::run_and_report(&local.socket, &opts, &args.out);
            local.stop()?;
            summary?
        }
        (None, None) => unreachable!("clap requires --socket or --model"),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?);
    } else {
        print!("{}", tickinfer::replay::report::print(&summary));
    }
    Ok(())
}

fn demo(out: &std::path::Path) -> Result<(), String> {
    let model = bundled("models/lobster_direction.toml");
    let input = bundled("data/sample/SYNTH_2026-01-05_sample.zip");
    println!(
        "tickinfer demo: serving {} on a temporary socket, replaying {}",
        model.display(),
        input.display()
    );
    let (summary, server_stats, _) = demo_replay(&model, input, 0, true, out)?;
    print!("{}", tickinfer::replay::report::print(&summary));
    println!("server side (read -> answer queued), ns:\n{server_stats}");
    compare_signals(out)
}

/// The demo's second part: the stateless default beside the stateful models, same data,
/// same server settings. On the real AMZN day (when `../shared` is here) only its last
/// 30% is scored — the models' test period, never trained on — while every earlier event
/// is still sent, to warm the per-symbol state; elsewhere, the bundled synthetic sample.
fn compare_signals(out: &std::path::Path) -> Result<(), String> {
    let real = bundled("../shared/data/lobster/LOBSTER_SampleFile_AMZN_2012-06-21_1.zip");
    let (input, score_from, what) = if real.exists() {
        let report = bundled("models/lobster_stateful.report.md");
        let text = std::fs::read_to_string(&report).map_err(|e| format!("{}: {e}", report.display()))?;
        let from = tickinfer::replay::report::test_period_start(&text)
            .ok_or_else(|| format!("{}: no `train N events, validation M` line", report.display()))?;
        (
            real,
            from,
            format!("real AMZN day, scored from event {from} (the models' out-of-sample test period)"),
        )
    } else {
        let sample = bundled("data/sample/SYNTH_2026-01-05_sample.zip");
        (sample, 0, "bundled synthetic sample (no model was trained on it); ../shared absent".to_string())
    };
    println!("\nsignal quality, stateless beside stateful: {} — {what}", input.display());
    println!("| model | kind | accuracy | macro-F1 | always-majority macro-F1 | p50 µs | p99 µs |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    let mut backends = Vec::new();
    for (name, kind) in [
        ("lobster_direction", "stateless logistic, 6 features"),
        ("lobster_stateful", "stateful LightGBM, 18 features"),
        ("lobster_lstm_step", "LSTM step, 18 features"),
    ] {
        let model = bundled(&format!("models/{name}.toml"));
        let (s, _, info) =
            demo_replay(&model, input.clone(), score_from, false, &out.join("compare").join(name))?;
        backends.push(format!("{name}: {}", info.backend_report));
        let q = &s.quality;
        println!(
            "| {name} | {kind} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} |",
            q.accuracy,
            q.macro_f1,
            q.majority_macro_f1,
            s.latency_ns.p50 as f64 / 1e3,
            s.latency_ns.p99 as f64 / 1e3
        );
    }
    println!(
        "(round trips closed loop, window 1; per-model signals and plots under {}/compare/)",
        out.display()
    );
    // Which backend served each model, and why (docs/models-and-backends.md, "Backends").
    println!("backends:");
    for b in backends {
        println!("  {b}");
    }
    Ok(())
}

/// Serve `model` in process and replay the LOBSTER `input` through it closed loop, window 1:
/// the replay's summary and the server's own stats.
fn demo_replay(
    model: &std::path::Path,
    input: PathBuf,
    score_from: usize,
    progress: bool,
    out: &std::path::Path,
) -> Result<
    (tickinfer::replay::report::Summary, tickinfer::stats::StatsReport, tickinfer::engine::ModelInfo),
    String,
> {
    let mut cfg = tickinfer::server::ServerConfig::new(model, "unused");
    cfg.stats_interval = std::time::Duration::ZERO;
    let local = tickinfer::replay::LocalServer::start(cfg)?;
    let opts = tickinfer::replay::ReplayOptions {
        input,
        format: tickinfer::replay::source::Format::Lobster,
        speed: tickinfer::replay::Speed::Max,
        rate: None,
        connections: 1,
        window: Some(1),
        transport: tickinfer::replay::Transport::Socket,
        client_poll: tickinfer::replay::ClientPoll::Spin,
        keep_warm: None,
        server_cores: local.cores.clone(),
        symbols: vec![],
        columns: vec![],
        time_unit: None,
        label: label_of(Some(model)),
        skip: 0,
        score_from,
        limit: None,
        progress,
        tcp_token: None,
    };
    let summary = tickinfer::replay::run_and_report(&local.socket, &opts, out);
    let info = local.model.clone();
    let server_stats = local.stop()?;
    Ok((summary?, server_stats, info))
}
