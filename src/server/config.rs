//! `tickinfer serve` options: a TOML config file whose keys the command-line
//! flags override. Every key of the file is a flag of the same name
//! (`max_inflight` ↔ `--max-inflight`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::{EngineOptions, ExecutionProvider};
use crate::transport::SocketPolicy;

/// Where the request stages run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Pipeline with ≥ 3 usable cores (I/O, worker, and one left for a client), else inline.
    Auto,
    /// One pinned thread runs I/O and inference.
    Inline,
    /// A pinned I/O thread and a pinned inference worker joined by SPSC rings.
    Pipeline,
}

/// How idle threads wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PollMode {
    /// Busy-poll: lowest latency, one core at 100%.
    Spin,
    /// Spin for `spin_us` after the last work, then block.
    Adaptive,
    /// Block in epoll / park: ~45 µs wake-up on a VM, no idle CPU.
    Block,
}

/// Execution provider names for the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ProviderName {
    Cpu,
    Cuda,
    Tensorrt,
}

/// Options of `tickinfer serve`, from flags and/or the config file.
#[derive(Clone, Debug, Default, Deserialize, Serialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ServeOptions {
    /// TOML config file; its keys are these options' long names with `_` for `-`. Flags override it.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Model manifest (TOML beside the .onnx), e.g. models/lobster_direction.toml.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Unix socket path to listen on. The control socket is PATH.ctl.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Stage layout [default: auto].
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// How idle threads wait [default: spin].
    #[arg(long, value_enum)]
    pub poll: Option<PollMode>,
    /// Adaptive polling: microseconds to spin after the last work before blocking [default: 200].
    #[arg(long)]
    pub spin_us: Option<u64>,
    /// While idle this many microseconds, exercise the hot path (one model run on a made-up
    /// request, one round trip through a private socket pair) to keep it in cache: on a VM
    /// an idle spinning thread's cache goes cold in milliseconds. Needs --poll spin or
    /// adaptive (warms only while spinning). e.g. 50 [default: off].
    #[arg(long)]
    pub keep_warm_us: Option<u64>,
    /// Core for the I/O (or inline) thread [default: from the affinity mask, isolated cores first].
    #[arg(long)]
    pub io_core: Option<usize>,
    /// Core for the inference worker in pipeline mode [default: the next usable core].
    #[arg(long)]
    pub worker_core: Option<usize>,
    /// Do not pin threads to cores.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub no_pin: Option<bool>,
    /// Refuse shared-memory sessions: a hello asking for one gets a plain ack (no
    /// region) and the client stays on the socket.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub no_shm: Option<bool>,
    /// Most concurrent client connections; more are refused in the hello ack [default: 64].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Connections still in their handshake (no hello yet) held at once, apart from the
    /// established ones; when full, the oldest is dropped for a new one [default: 128].
    #[arg(long)]
    pub max_pending: Option<usize>,
    /// Most connections one peer uid may hold; its next hello is refused
    /// ML_ERR_TOO_MANY_CONNECTIONS, so no uid can take every slot [default: --max-connections].
    #[arg(long)]
    pub max_connections_per_uid: Option<usize>,
    /// Close an established connection that sent no request for this many seconds (since
    /// its hello or its last request) [default: off].
    #[arg(long)]
    pub idle_timeout_s: Option<u64>,
    /// Requests in flight per connection before ML_ERR_OVERLOADED answers [default: 256].
    #[arg(long)]
    pub max_inflight: Option<u32>,
    /// Most requests per model run (dynamic-batch models) [default: 32].
    #[arg(long)]
    pub max_batch: Option<usize>,
    /// Bytes of unsent responses per connection before a slow reader is disconnected [default: 4194304].
    #[arg(long)]
    pub write_buffer_limit: Option<usize>,
    /// Also listen on TCP at ADDR:PORT (e.g. 10.0.0.1:7001; port 0 picks one, logged): the same
    /// hello, frames, order and bounds as the Unix socket, TCP_NODELAY. A non-loopback address
    /// needs --tcp-allow [default: off].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen_tcp: Option<std::net::SocketAddr>,
    /// TCP peers allowed, as CIDRs or addresses, comma-separated or repeated (e.g.
    /// 10.0.0.2/32,fd00::/8); others are closed at accept, counted (tcp_peers_refused) and
    /// logged once a second [default: loopback peers only].
    #[arg(long = "tcp-allow", value_name = "CIDR,…", value_delimiter = ',')]
    pub tcp_allow: Option<Vec<String>>,
    /// File (mode 600) holding a pre-shared token (1..=64 bytes) every TCP hello must carry
    /// (ML_HELLO_FLAG_AUTH; compared in constant time); for a shared network [default: none].
    #[arg(long, value_name = "PATH")]
    pub tcp_token_file: Option<PathBuf>,
    /// SO_BUSY_POLL on accepted TCP sockets: a blocking read busy-polls the NIC queue this
    /// many µs (raising it needs CAP_NET_ADMIN; see `tickinfer doctor`) [default: the
    /// system's net.core.busy_read].
    #[arg(long)]
    pub busy_poll_us: Option<u32>,
    /// Socket file mode, octal [default: 600].
    #[arg(long)]
    pub socket_mode: Option<String>,
    /// Socket file group (name or gid).
    #[arg(long)]
    pub socket_group: Option<String>,
    /// Peer uids allowed (SO_PEERCRED); repeatable. Empty: anyone who can open the socket.
    #[arg(long = "allow-uid")]
    pub allow_uids: Option<Vec<u32>>,
    /// Peer gids allowed; repeatable.
    #[arg(long = "allow-gid")]
    pub allow_gids: Option<Vec<u32>>,
    /// Control socket (PATH.ctl: stats, reload) file mode, octal. Owner-only unless widened [default: 600].
    #[arg(long)]
    pub control_socket_mode: Option<String>,
    /// Control socket file group (name or gid), for a widened --control-socket-mode.
    #[arg(long)]
    pub control_socket_group: Option<String>,
    /// Peer uids allowed on the control socket besides the server's own uid and root; repeatable.
    #[arg(long = "control-allow-uid")]
    pub control_allow_uids: Option<Vec<u32>>,
    /// Peer gids allowed on the control socket; repeatable.
    #[arg(long = "control-allow-gid")]
    pub control_allow_gids: Option<Vec<u32>>,
    /// Symbols a stateful model keeps history for (slots allocated at start); a new symbol
    /// beyond them is answered ML_ERR_TOO_MANY_SYMBOLS [default: 1024].
    #[arg(long)]
    pub max_symbols: Option<usize>,
    /// With every --max-symbols slot taken, a new symbol takes the slot of the least
    /// recently seen symbol if that one was idle this many milliseconds (its history is
    /// lost; counted) [default: off: the new symbol is refused].
    #[arg(long)]
    pub evict_idle_symbols_ms: Option<u64>,
    /// Symbol table: the symbol_ids served (others get ML_ERR_UNKNOWN_SYMBOL); repeatable.
    #[arg(long = "symbol")]
    pub symbols: Option<Vec<u16>>,
    /// A shadow candidate beside the model (at most 4; repeatable): sees a copy of every
    /// request the model scores, off the hot path; its answers are compared, never sent
    /// (`tickinfer shadow`, `tickinfer promote`).
    #[arg(long = "shadow")]
    pub shadows: Option<Vec<PathBuf>>,
    /// Seconds between stats log lines; 0 turns them off [default: 10].
    #[arg(long)]
    pub stats_interval_s: Option<u64>,
    /// libonnxruntime.so.1.31.1 to load [default: $TICKINFER_ORT_LIB, then the cache, provisioned from PyPI].
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
    /// ONNX Runtime intra-op threads [default: 1].
    #[arg(long)]
    pub intra_threads: Option<usize>,
    /// Execution provider; GPU providers need the `cuda`/`tensorrt` cargo features [default: cpu].
    #[arg(long, value_enum)]
    pub provider: Option<ProviderName>,
    /// Model backend, overriding the manifest's `[model] backend`: ort, native (the
    /// evaluator generated from the graph, checked against ONNX Runtime at load) or auto
    /// [default: the manifest's, else auto].
    #[arg(long, value_enum)]
    pub backend: Option<crate::manifest::Backend>,
    /// Largest run (requests per model run) the native backend serves; larger runs go to
    /// ONNX Runtime, carrying recurrent state across [default: measured at load by auto;
    /// every size for native].
    #[arg(long)]
    pub native_max_run: Option<usize>,
    /// While the native backend serves, re-run one answer in N on ONNX Runtime off the hot
    /// path and compare (0: never) [default: the manifest's `verify_every`, else 1000].
    #[arg(long)]
    pub verify_every: Option<u32>,
    /// What a disagreement found while serving does: fallback (count, log, switch the model
    /// to ONNX Runtime between two requests) or log [default: the manifest's, else fallback].
    #[arg(long, value_enum)]
    pub on_disagreement: Option<crate::manifest::OnDisagreement>,
    /// GPU device id [default: 0].
    #[arg(long)]
    pub device_id: Option<i32>,
    /// TensorRT engine cache directory.
    #[arg(long)]
    pub trt_cache: Option<PathBuf>,
    /// TensorRT fp16.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub trt_fp16: Option<bool>,
    /// Append every request with its arrival stamp to this capture file (proto/ml_capture.h),
    /// from a separate thread; drops (writer behind) are counted and logged.
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Replace an existing --record file (without it, an existing file is refused).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub record_overwrite: Option<bool>,
    /// Rotate the --record file when it would pass this many bytes (FILE.1 … FILE.9 kept).
    #[arg(long)]
    pub record_max_bytes: Option<u64>,
    /// Serve Prometheus metrics over HTTP on this address (e.g. 127.0.0.1:9464), off the hot path.
    #[arg(long)]
    pub metrics: Option<std::net::SocketAddr>,
    /// Once warm, lock every current and future page in memory (mlockall). Needs an unlimited
    /// locked-memory limit (`ulimit -l unlimited`, systemd `LimitMEMLOCK=infinity`) or CAP_IPC_LOCK.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub lock_memory: Option<bool>,
    /// Run the pinned hot threads SCHED_FIFO at this priority (1..=99). Needs `ulimit -r N`
    /// (systemd `LimitRTPRIO=N`) or CAP_SYS_NICE.
    #[arg(long)]
    pub rt_priority: Option<u8>,
}

impl ServeOptions {
    /// Flags over the config file (if `--config` was given). Merged as TOML tables
    /// (a flag's key replaces the file's), so every option works from the file with
    /// no list to keep in step; `tests::every_option_works_from_the_config_file` checks it.
    pub fn with_config_file(self) -> Result<ServeOptions, String> {
        let Some(path) = self.config.clone() else { return Ok(self) };
        let text = std::fs::read_to_string(&path).map_err(|e| format!("config {}: {e}", path.display()))?;
        let mut merged: toml::Table =
            toml::from_str(&text).map_err(|e| format!("config {}: {e}", path.display()))?;
        // Options not given on the command line are `None`, which TOML leaves out.
        let flags = toml::Table::try_from(&self).map_err(|e| format!("command-line options: {e}"))?;
        merged.extend(flags);
        let mut options: ServeOptions =
            merged.try_into().map_err(|e| format!("config {}: {e}", path.display()))?;
        options.config = self.config;
        Ok(options)
    }

    /// Resolve defaults and check values.
    pub fn resolve(self) -> Result<ServerConfig, String> {
        let model = self.model.ok_or("--model is required (or `model` in the config file)")?;
        let socket = self.socket.ok_or("--socket is required (or `socket` in the config file)")?;
        let mode = file_mode("--socket-mode", self.socket_mode.as_deref())?;
        let group = group_option("--socket-group", self.socket_group.as_deref())?;
        // The control socket can reload any file as the server: owner-only and peer-checked
        // (the server's own uid and root, plus what the operator adds) whatever the data socket's policy.
        let mut control_uids = vec![crate::sys::geteuid(), 0];
        control_uids.extend(self.control_allow_uids.unwrap_or_default());
        control_uids.dedup();
        let control_policy = SocketPolicy {
            mode: file_mode("--control-socket-mode", self.control_socket_mode.as_deref())?,
            group: group_option("--control-socket-group", self.control_socket_group.as_deref())?,
            allow_uids: control_uids,
            allow_gids: self.control_allow_gids.unwrap_or_default(),
        };
        let max_connections = self.max_connections.unwrap_or(64);
        let max_inflight = self.max_inflight.unwrap_or(256);
        if max_connections == 0 || max_connections > 65_536 {
            return Err("--max-connections must be in 1..=65536".into());
        }
        let max_symbols = self.max_symbols.unwrap_or(1024);
        if max_symbols == 0 || max_symbols > 65_536 {
            return Err("--max-symbols must be in 1..=65536".into());
        }
        let max_pending = self.max_pending.unwrap_or(128);
        if max_pending == 0 || max_pending > 65_536 {
            return Err("--max-pending must be in 1..=65536".into());
        }
        let max_connections_per_uid = self.max_connections_per_uid.unwrap_or(max_connections);
        if max_connections_per_uid == 0 || max_connections_per_uid > max_connections {
            return Err(format!(
                "--max-connections-per-uid must be in 1..=--max-connections ({max_connections})"
            ));
        }
        let seconds = |flag: &str, v: Option<u64>, unit: fn(u64) -> Duration| match v {
            Some(0) => Err(format!("{flag} must be at least 1 (leave it out to turn it off)")),
            v => Ok(v.map(unit)),
        };
        let idle_timeout = seconds("--idle-timeout-s", self.idle_timeout_s, Duration::from_secs)?;
        let shadows = self.shadows.unwrap_or_default();
        if shadows.len() > crate::shadow::MAX_SHADOWS {
            return Err(format!("--shadow: at most {} shadows", crate::shadow::MAX_SHADOWS));
        }
        let evict_idle_symbols =
            seconds("--evict-idle-symbols-ms", self.evict_idle_symbols_ms, Duration::from_millis)?;
        if max_inflight == 0 || max_inflight > 65_536 {
            return Err("--max-inflight must be in 1..=65536".into());
        }
        let poll = self.poll.unwrap_or(PollMode::Spin);
        let keep_warm = crate::keep_warm::interval(
            "--keep-warm-us",
            self.keep_warm_us,
            poll != PollMode::Block,
            "a spinning thread: --poll spin or adaptive",
        )?;
        let provider = match self.provider.unwrap_or(ProviderName::Cpu) {
            ProviderName::Cpu => ExecutionProvider::Cpu,
            ProviderName::Cuda => ExecutionProvider::Cuda { device_id: self.device_id.unwrap_or(0) },
            ProviderName::Tensorrt => ExecutionProvider::TensorRt {
                device_id: self.device_id.unwrap_or(0),
                engine_cache: self.trt_cache.clone(),
                fp16: self.trt_fp16.unwrap_or(false),
            },
        };
        if let Some(p) = self.rt_priority {
            if !(1..=99).contains(&p) {
                return Err(format!("--rt-priority {p}: SCHED_FIFO priorities are 1..=99"));
            }
        }
        let tcp_allow = crate::transport::tcp::parse_allow(&self.tcp_allow.unwrap_or_default())?;
        let tcp = match self.listen_tcp {
            Some(addr) => Some(TcpListen {
                addr,
                policy: crate::transport::tcp::TcpPolicy {
                    allow: tcp_allow,
                    token_file: self.tcp_token_file,
                    busy_poll_us: self.busy_poll_us,
                },
            }),
            None if !tcp_allow.is_empty() || self.tcp_token_file.is_some() || self.busy_poll_us.is_some() => {
                return Err("--tcp-allow, --tcp-token-file and --busy-poll-us need --listen-tcp".into());
            }
            None => None,
        };
        Ok(ServerConfig {
            tcp,
            lock_memory: self.lock_memory.unwrap_or(false),
            rt_priority: self.rt_priority,
            inherited_listener: None,
            record: self.record,
            record_options: crate::record::RecordOptions {
                overwrite: self.record_overwrite.unwrap_or(false),
                max_bytes: self.record_max_bytes,
            },
            metrics: self.metrics,
            model,
            socket,
            mode: self.mode.unwrap_or(Mode::Auto),
            poll,
            spin: Duration::from_micros(self.spin_us.unwrap_or(200)),
            keep_warm,
            io_core: self.io_core,
            worker_core: self.worker_core,
            pin: !self.no_pin.unwrap_or(false),
            shm: !self.no_shm.unwrap_or(false),
            max_connections,
            max_pending,
            max_connections_per_uid,
            idle_timeout,
            max_inflight,
            write_buffer_limit: self.write_buffer_limit.unwrap_or(4 << 20).max(64 * 1024),
            policy: SocketPolicy {
                mode,
                group,
                allow_uids: self.allow_uids.unwrap_or_default(),
                allow_gids: self.allow_gids.unwrap_or_default(),
            },
            control_policy,
            max_symbols,
            evict_idle_symbols,
            symbols: self.symbols,
            shadows,
            stats_interval: Duration::from_secs(self.stats_interval_s.unwrap_or(10)),
            engine: EngineOptions {
                ort_lib: self.ort_lib,
                intra_threads: self.intra_threads.unwrap_or(1),
                max_batch: self.max_batch.unwrap_or(32),
                warmup_runs: 20,
                provider,
                backend: self.backend,
                native_max_run: self.native_max_run,
                verify: crate::verify::VerifyOptions {
                    every: self.verify_every,
                    on_disagreement: self.on_disagreement,
                    ..Default::default()
                },
                quiet: false,
            },
        })
    }
}

/// An octal permission mode option (default 600).
fn file_mode(flag: &str, value: Option<&str>) -> Result<u32, String> {
    let mode = u32::from_str_radix(value.unwrap_or("600"), 8)
        .map_err(|_| format!("{flag} must be octal, e.g. 600 or 660"))?;
    if mode & !0o777 != 0 {
        return Err(format!("{flag} {mode:o}: only permission bits (0..777)"));
    }
    Ok(mode)
}

/// A group option (name or gid).
fn group_option(flag: &str, value: Option<&str>) -> Result<Option<u32>, String> {
    value.map(|g| crate::sys::group_id(g).map_err(|e| format!("{flag} {g}: {e}"))).transpose()
}

/// `--listen-tcp` and its admission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpListen {
    pub addr: std::net::SocketAddr,
    pub policy: crate::transport::tcp::TcpPolicy,
}

/// A resolved server configuration.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub model: PathBuf,
    pub socket: PathBuf,
    pub mode: Mode,
    pub poll: PollMode,
    /// Adaptive polling's spin window.
    pub spin: Duration,
    /// `--keep-warm-us`: idle time after which a spinning hot thread warms its path.
    pub keep_warm: Option<Duration>,
    pub io_core: Option<usize>,
    pub worker_core: Option<usize>,
    pub pin: bool,
    /// Grant shared-memory sessions to hellos that ask (`--no-shm` turns it off).
    pub shm: bool,
    pub max_connections: usize,
    /// Handshaking connections held apart from the established ones (oldest dropped when full).
    pub max_pending: usize,
    /// Established connections one peer uid may hold (≤ `max_connections`).
    pub max_connections_per_uid: usize,
    /// Close an established connection after this long without a request (`None`: never).
    pub idle_timeout: Option<Duration>,
    pub max_inflight: u32,
    pub write_buffer_limit: usize,
    pub policy: SocketPolicy,
    /// The control socket's file mode, group and peer allowlist (never empty: owner and root).
    pub control_policy: SocketPolicy,
    /// State slots of a stateful model.
    pub max_symbols: usize,
    /// A new symbol may take the slot of the least recently seen one idle this long.
    pub evict_idle_symbols: Option<Duration>,
    pub symbols: Option<Vec<u16>>,
    /// Shadow candidates attached once the server serves (`crate::shadow`).
    pub shadows: Vec<PathBuf>,
    /// Zero: no periodic stats log line.
    pub stats_interval: Duration,
    pub engine: EngineOptions,
    /// Capture file for `--record`.
    pub record: Option<PathBuf>,
    /// `--record-overwrite`, `--record-max-bytes`.
    pub record_options: crate::record::RecordOptions,
    /// Prometheus endpoint address.
    pub metrics: Option<std::net::SocketAddr>,
    /// `--lock-memory`: mlockall once warm.
    pub lock_memory: bool,
    /// `--rt-priority`: SCHED_FIFO for the pinned hot threads.
    pub rt_priority: Option<u8>,
    /// A listening socket handed over by systemd (socket activation), served instead of
    /// binding `socket` (which must be its path); `run` takes it.
    pub inherited_listener: Option<std::sync::Arc<std::os::unix::net::UnixListener>>,
    /// `--listen-tcp`: a TCP listener beside the Unix socket.
    pub tcp: Option<TcpListen>,
}

impl ServerConfig {
    /// A configuration with defaults for `model` on `socket`.
    pub fn new(model: impl Into<PathBuf>, socket: impl Into<PathBuf>) -> ServerConfig {
        ServeOptions { model: Some(model.into()), socket: Some(socket.into()), ..Default::default() }
            .resolve()
            .expect("defaults are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("serve.toml");
        std::fs::write(
            &file,
            "model = \"m.toml\"\nsocket = \"/tmp/a.sock\"\nmax_inflight = 8\npoll = \"block\"\nsymbols = [1, 2]\n",
        )
        .unwrap();
        let flags = ServeOptions { config: Some(file), max_inflight: Some(16), ..Default::default() };
        let cfg = flags.with_config_file().unwrap().resolve().unwrap();
        assert_eq!(cfg.max_inflight, 16, "flag wins");
        assert_eq!(cfg.poll, PollMode::Block, "file value kept");
        assert_eq!(cfg.symbols, Some(vec![1, 2]));
        assert_eq!(cfg.policy.mode, 0o600);
        std::fs::write(dir.path().join("bad.toml"), "symbol = [1]\n").unwrap();
        let bad = ServeOptions { config: Some(dir.path().join("bad.toml")), ..Default::default() };
        let e = bad.with_config_file().unwrap_err();
        assert!(e.contains("unknown field `symbol`"), "{e}");
    }

    /// A valid TOML value for every `serve` option. A new option fails
    /// `every_option_works_from_the_config_file` until it has one here.
    const SAMPLES: &[(&str, &str)] = &[
        ("model", "\"m.toml\""),
        ("socket", "\"/tmp/t.sock\""),
        ("mode", "\"pipeline\""),
        ("poll", "\"adaptive\""),
        ("spin_us", "77"),
        ("keep_warm_us", "50"),
        ("io_core", "1"),
        ("worker_core", "0"),
        ("no_pin", "true"),
        ("no_shm", "true"),
        ("max_connections", "9"),
        ("max_inflight", "17"),
        ("max_pending", "33"),
        ("max_connections_per_uid", "4"),
        ("idle_timeout_s", "30"),
        ("evict_idle_symbols_ms", "60000"),
        ("max_batch", "5"),
        ("write_buffer_limit", "1048576"),
        ("socket_mode", "\"660\""),
        ("socket_group", "\"0\""),
        ("allow_uids", "[0, 1000]"),
        ("allow_gids", "[0]"),
        ("symbols", "[3, 4]"),
        ("shadows", "[\"/tmp/candidate.toml\"]"),
        ("max_symbols", "77"),
        ("control_socket_mode", "\"660\""),
        ("control_socket_group", "\"0\""),
        ("control_allow_uids", "[1001]"),
        ("control_allow_gids", "[1002]"),
        ("stats_interval_s", "3"),
        ("ort_lib", "\"/opt/ort/libonnxruntime.so.1.31.1\""),
        ("intra_threads", "2"),
        ("provider", "\"cpu\""),
        ("backend", "\"native\""),
        ("verify_every", "10"),
        ("native_max_run", "4"),
        ("on_disagreement", "\"log\""),
        ("device_id", "1"),
        ("trt_cache", "\"/var/cache/trt\""),
        ("trt_fp16", "true"),
        ("record", "\"/var/tmp/requests.tkcap\""),
        ("metrics", "\"127.0.0.1:9464\""),
        ("record_overwrite", "true"),
        ("record_max_bytes", "1000000"),
        ("lock_memory", "true"),
        ("rt_priority", "40"),
        ("listen_tcp", "\"127.0.0.1:7001\""),
        ("tcp_allow", "[\"10.0.0.0/24\", \"127.0.0.1\"]"),
        ("tcp_token_file", "\"/etc/tickinfer/tcp.token\""),
        ("busy_poll_us", "50"),
    ];

    /// Walks every option `serve` has (from clap's own list): each works from the file
    /// alone, and the whole set resolves with every value where it belongs.
    #[test]
    fn every_option_works_from_the_config_file() {
        use clap::Args;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("serve.toml");
        let command = ServeOptions::augment_args(clap::Command::new("serve"));
        let mut all = String::new();
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "config" | "help" | "version") {
                continue;
            }
            let (_, value) = SAMPLES
                .iter()
                .find(|(k, _)| *k == id)
                .unwrap_or_else(|| panic!("option `{id}` has no sample in SAMPLES: add one"));
            let line = format!("{id} = {value}\n");
            all += &line;
            std::fs::write(&file, &line).unwrap();
            let opts = ServeOptions { config: Some(file.clone()), ..Default::default() }
                .with_config_file()
                .unwrap_or_else(|e| panic!("`{line}`: {e}"));
            let got = toml::Table::try_from(&opts).unwrap();
            let want: toml::Table = toml::from_str(&line).unwrap();
            assert_eq!(got.get(id), want.get(id), "option `{id}` from the config file was lost");
            // The same value as a flag beside a config file that does not set it.
            std::fs::write(&file, "").unwrap();
            let flags: ServeOptions = toml::from_str(&line).unwrap();
            let opts = ServeOptions { config: Some(file.clone()), ..flags }.with_config_file().unwrap();
            let got = toml::Table::try_from(&opts).unwrap();
            assert_eq!(got.get(id), want.get(id), "flag `--{id}` was lost beside --config");
        }
        std::fs::write(&file, &all).unwrap();
        let cfg = ServeOptions { config: Some(file), ..Default::default() }
            .with_config_file()
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(cfg.record.as_deref(), Some(std::path::Path::new("/var/tmp/requests.tkcap")));
        assert_eq!(cfg.metrics, Some("127.0.0.1:9464".parse().unwrap()));
        let record = crate::record::RecordOptions { overwrite: true, max_bytes: Some(1_000_000) };
        assert_eq!(cfg.record_options, record);
        assert_eq!((cfg.lock_memory, cfg.rt_priority), (true, Some(40)));
        let tcp = cfg.tcp.as_ref().unwrap();
        assert_eq!((tcp.addr, tcp.policy.busy_poll_us), ("127.0.0.1:7001".parse().unwrap(), Some(50)));
        assert_eq!(tcp.policy.allow.len(), 2);
        assert_eq!(tcp.policy.token_file.as_deref(), Some(std::path::Path::new("/etc/tickinfer/tcp.token")));
        assert_eq!(cfg.keep_warm, Some(Duration::from_micros(50)));
        assert_eq!(cfg.shadows, [std::path::PathBuf::from("/tmp/candidate.toml")]);
        assert_eq!(
            (cfg.mode, cfg.poll, cfg.spin),
            (Mode::Pipeline, PollMode::Adaptive, Duration::from_micros(77))
        );
        assert_eq!((cfg.io_core, cfg.worker_core, cfg.pin), (Some(1), Some(0), false));
        assert_eq!((cfg.max_connections, cfg.max_inflight, cfg.engine.max_batch), (9, 17, 5));
        assert_eq!((cfg.max_pending, cfg.max_symbols), (33, 77));
        assert_eq!(
            (cfg.max_connections_per_uid, cfg.idle_timeout, cfg.evict_idle_symbols),
            (4, Some(Duration::from_secs(30)), Some(Duration::from_secs(60)))
        );
        assert_eq!((cfg.write_buffer_limit, cfg.policy.mode, cfg.policy.group), (1 << 20, 0o660, Some(0)));
        assert_eq!((cfg.policy.allow_uids.clone(), cfg.policy.allow_gids.clone()), (vec![0, 1000], vec![0]));
        assert_eq!((cfg.symbols.clone(), cfg.stats_interval), (Some(vec![3, 4]), Duration::from_secs(3)));
        assert_eq!(cfg.engine.intra_threads, 2);
        let control = &cfg.control_policy;
        assert_eq!((control.mode, control.group, control.allow_gids.clone()), (0o660, Some(0), vec![1002]));
        assert!(control.allow_uids.contains(&1001) && control.allow_uids.contains(&0));
        assert_eq!(
            cfg.engine.ort_lib.as_deref(),
            Some(std::path::Path::new("/opt/ort/libonnxruntime.so.1.31.1"))
        );
    }

    #[test]
    fn bad_values_are_named() {
        let base =
            || ServeOptions { model: Some("m".into()), socket: Some("s".into()), ..Default::default() };
        let e = ServeOptions { socket_mode: Some("9x".into()), ..base() }.resolve().unwrap_err();
        assert!(e.contains("octal"), "{e}");
        let e = ServeOptions { max_inflight: Some(0), ..base() }.resolve().unwrap_err();
        assert!(e.contains("--max-inflight"), "{e}");
        let e = ServeOptions { control_socket_mode: Some("1777".into()), ..base() }.resolve().unwrap_err();
        assert!(e.contains("--control-socket-mode"), "{e}");
        // The control socket is owner-only and peer-checked whatever the data socket allows.
        let open = ServeOptions { socket_mode: Some("666".into()), ..base() }.resolve().unwrap();
        assert_eq!((open.policy.mode, open.control_policy.mode), (0o666, 0o600));
        assert!(open.policy.allow_uids.is_empty());
        assert!(!open.control_policy.admits(&crate::sys::PeerCred { pid: 1, uid: 54321, gid: 54321 }));
        let e = ServeOptions { keep_warm_us: Some(0), ..base() }.resolve().unwrap_err();
        assert!(e.contains("--keep-warm-us"), "{e}");
        let e = ServeOptions { keep_warm_us: Some(50), poll: Some(PollMode::Block), ..base() }
            .resolve()
            .unwrap_err();
        assert!(e.contains("--keep-warm-us") && e.contains("--poll spin or adaptive"), "{e}");
        let e = ServeOptions { model: None, ..base() }.resolve().unwrap_err();
        assert!(e.contains("--model"), "{e}");
        let e = ServeOptions { max_connections_per_uid: Some(65), ..base() }.resolve().unwrap_err();
        assert!(e.contains("--max-connections-per-uid") && e.contains("(64)"), "{e}");
        let e = ServeOptions { idle_timeout_s: Some(0), ..base() }.resolve().unwrap_err();
        assert!(e.contains("--idle-timeout-s"), "{e}");
        let e = ServeOptions { evict_idle_symbols_ms: Some(0), ..base() }.resolve().unwrap_err();
        assert!(e.contains("--evict-idle-symbols-ms"), "{e}");
        let e = ServeOptions { tcp_allow: Some(vec!["10.0.0.0/24".into()]), ..base() }.resolve().unwrap_err();
        assert!(e.contains("--listen-tcp"), "{e}");
        let e = ServeOptions {
            listen_tcp: Some("127.0.0.1:7001".parse().unwrap()),
            tcp_allow: Some(vec!["10.0.0.0/99".into()]),
            ..base()
        }
        .resolve()
        .unwrap_err();
        assert!(e.contains("--tcp-allow") && e.contains("prefix"), "{e}");
        let defaults = base().resolve().unwrap();
        assert_eq!((defaults.max_connections_per_uid, defaults.idle_timeout), (64, None));
    }
}
