//! tickinfer — low-latency trading-signal inference over a Unix socket.
//!
//! The request's path, one module per stage (see README "Architecture"):
//! [`wire`] (the C header's mirror) → transport → ring → features → engine →
//! response. [`clock`] stamps every stage on `CLOCK_MONOTONIC`.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod clock;
pub mod engine;
pub mod features;
pub mod manifest;
pub mod wire;
