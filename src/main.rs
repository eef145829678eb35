//! The `tickinfer` command line.
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tickinfer", version, about = "Low-latency trading-signal inference server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the wire layout (every frame's size and field offsets) of this build.
    Layout,
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Layout => {
            println!("tickinfer wire protocol v{}", tickinfer::wire::PROTOCOL_VERSION);
            for (name, value) in tickinfer::wire::layout_table() {
                println!("{name:<40} {value:>4}");
            }
        }
    }
}
