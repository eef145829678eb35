//! The `tickinfer` command line.
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::{Parser, Subcommand};

use tickinfer::server::{self, ServeOptions, Shutdown};
use tickinfer::stats::Stats;

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
    /// Print the latency and status statistics of a running server.
    Stats {
        /// The server's socket (its control socket is PATH.ctl).
        #[arg(long)]
        socket: PathBuf,
        /// Print the raw JSON report.
        #[arg(long)]
        json: bool,
    },
    /// Print the wire layout (every frame's size and field offsets) of this build.
    Layout,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_micros()
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(opts) => serve(*opts),
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
    let cfg = match opts.with_config_file().and_then(ServeOptions::resolve) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("tickinfer serve: {e}");
            return ExitCode::from(2);
        }
    };
    let shutdown = Shutdown::new();
    let shared = Arc::new(Mutex::new(Stats::default()));
    let control = match tickinfer::control::spawn(&cfg.socket, &cfg.policy, shared.clone(), shutdown.clone())
    {
        Ok(handle) => handle,
        Err(e) => {
            eprintln!("tickinfer serve: control socket: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = server::run(cfg, shutdown.clone(), shared, |ready| {
        log::info!(
            "ready: model {} v{} on {} ({:?} mode, {:?} polling, batch up to {})",
            ready.model.name,
            ready.model.version,
            ready.model.provider,
            ready.mode,
            ready.poll,
            ready.model.max_batch
        );
    });
    shutdown.trigger(); // stops the control plane on every path
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
