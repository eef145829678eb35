//! tickinfer — low-latency trading-signal inference over a Unix socket.
//!
//! The request's path, one module per stage (see docs/architecture.md):
//! [`wire`] (the C header's mirror) → [`transport`] (sockets, buffers, decoding)
//! → [`ring`] (SPSC hand-off, pipeline mode) → [`features`] → [`engine`] (ONNX
//! Runtime) → [`manifest`] (output decoding) → response. [`server`] drives the
//! stages; [`clock`] stamps them; [`stats`] and [`control`] stay off the hot path.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod bench;
pub mod client_install;
pub mod clock;
pub mod control;
pub mod dataset;
pub mod doctor;
pub mod engine;
pub mod features;
pub mod keep_warm;
pub mod manifest;
pub mod quality;
pub mod ratelog;
pub mod record;
pub mod replay;
pub mod ring;
pub mod server;
pub mod shadow;
pub mod shm;
pub mod state;
pub mod stats;
mod sys;
pub mod systemd;
pub mod transport;
pub mod verify;
pub mod wire;

/// The source tree the bundled files (models, sample data, scripts) come from: the
/// `CARGO_MANIFEST_DIR` cargo sets for `cargo run`/`test`/`bench` when it names this crate's
/// tree (another crate's build may set it too), else the one this crate was built in. Read at run time first because a build directory
/// moved with its checkout keeps the old path compiled in (cargo does not rebuild for it).
pub fn source_root() -> std::path::PathBuf {
    match std::env::var_os("CARGO_MANIFEST_DIR").map(std::path::PathBuf::from) {
        Some(dir) if dir.join("models/lobster_direction.toml").is_file() => dir,
        _ => std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")),
    }
}
