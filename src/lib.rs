//! tickinfer — low-latency trading-signal inference over a Unix socket.
//!
//! The request's path, one module per stage (see README "Architecture"):
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
pub mod shm;
pub mod state;
pub mod stats;
mod sys;
pub mod systemd;
pub mod transport;
pub mod verify;
pub mod wire;
