//! TCP for a trading system on another host: the very frames of the Unix socket
//! (hello, requests, answers, in order), with the admission TCP needs because it
//! carries no peer credentials: an address allowlist checked at accept, and an
//! optional pre-shared token in the hello (`ML_HELLO_FLAG_AUTH`, compared in
//! constant time). Plain sockets only, so a kernel-bypass stack that works by
//! `LD_PRELOAD` (Onload) accelerates this path unchanged.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::ListenError;
use crate::sys;
use crate::wire::{MlAuth, AUTH_TOKEN_MAX};

/// One allowlist entry: an address and a prefix length (`10.0.0.0/24`, `fd00::/8`,
/// or a bare address for one host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{text}`: not an address or CIDR (e.g. 10.0.0.0/24, fd00::/8)"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("`{text}`: prefix length must be 0..={max}"))?,
        };
        Ok(Cidr { net: canonical(net), prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// An IPv4 peer reaching an IPv6 socket shows as `::ffff:a.b.c.d`: compare it as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Cidr {
    /// Whether `ip` lies in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Parse `--tcp-allow` entries (each may itself be a comma-separated list).
pub fn parse_allow(entries: &[String]) -> Result<Vec<Cidr>, String> {
    entries
        .iter()
        .flat_map(|e| e.split(','))
        .filter(|e| !e.trim().is_empty())
        .map(|e| e.parse().map_err(|m| format!("--tcp-allow {m}")))
        .collect()
}

/// Who may use the TCP listener, and how its sockets are set up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TcpPolicy {
    /// Peer networks admitted at accept. Empty: loopback peers only (and then the
    /// listener must be bound to a loopback address).
    pub allow: Vec<Cidr>,
    /// File holding the pre-shared token every TCP hello must carry (read at start).
    pub token_file: Option<PathBuf>,
    /// `SO_BUSY_POLL` on every accepted socket (µs); `None`: the system default.
    pub busy_poll_us: Option<u32>,
}

impl TcpPolicy {
    /// Whether a peer at `ip` may connect.
    pub fn admits(&self, ip: IpAddr) -> bool {
        if self.allow.is_empty() {
            return canonical(ip).is_loopback();
        }
        self.allow.iter().any(|c| c.contains(ip))
    }
}

/// The pre-shared token, read once at start.
#[derive(Clone)]
pub struct Token(Vec<u8>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({} bytes)", self.0.len())
    }
}

impl Token {
    /// Read the token from `path`: 1..=64 bytes after a trailing newline is taken off.
    /// Refused when the file is readable by others than its owner (it is a secret).
    pub fn load(path: &Path) -> Result<Token, String> {
        use std::os::unix::fs::MetadataExt;
        let what = |e: io::Error| format!("--tcp-token-file {}: {e}", path.display());
        let meta = std::fs::metadata(path).map_err(what)?;
        if meta.mode() & 0o077 != 0 {
            return Err(format!(
                "--tcp-token-file {}: mode {:o} lets others read the token; chmod 600 it",
                path.display(),
                meta.mode() & 0o777
            ));
        }
        let mut bytes = std::fs::read(path).map_err(what)?;
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        if bytes.is_empty() || bytes.len() > AUTH_TOKEN_MAX {
            return Err(format!(
                "--tcp-token-file {}: the token must be 1..={AUTH_TOKEN_MAX} bytes (it is {})",
                path.display(),
                bytes.len()
            ));
        }
        Ok(Token(bytes))
    }

    /// A token from bytes (1..=64), for tests and the bench.
    pub fn from_bytes(bytes: &[u8]) -> Option<Token> {
        (1..=AUTH_TOKEN_MAX).contains(&bytes.len()).then(|| Token(bytes.to_vec()))
    }

    /// The token's bytes (for a client sending it).
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether the hello's auth frame carries this token (constant time in the token bytes).
    pub fn admits(&self, auth: Option<&MlAuth>) -> bool {
        auth.is_some_and(|a| a.token_matches(&self.0))
    }
}

/// Bind the TCP listener (non-blocking). `SO_REUSEADDR` (set by the standard library)
/// lets a restarted server bind again at once, so reconnecting clients find it. A
/// non-loopback address is refused unless `policy` has an allowlist.
pub fn bind(addr: SocketAddr, policy: &TcpPolicy) -> Result<std::net::TcpListener, ListenError> {
    if !addr.ip().is_loopback() && policy.allow.is_empty() {
        return Err(ListenError::Tcp(format!(
            "--listen-tcp {addr}: not a loopback address, and TCP carries no peer credentials: name the \
             peers allowed with --tcp-allow CIDR,… (e.g. --tcp-allow 10.0.0.2/32)"
        )));
    }
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| ListenError::Tcp(format!("--listen-tcp {addr}: cannot listen: {e}")))?;
    listener.set_nonblocking(true).map_err(|e| ListenError::Tcp(format!("--listen-tcp {addr}: {e}")))?;
    Ok(listener)
}

/// Set up an accepted (or connected) socket for latency: `TCP_NODELAY` (a 194-byte
/// request must not wait for Nagle), and `SO_BUSY_POLL` when asked. Returns the
/// busy-poll error (EPERM without CAP_NET_ADMIN above the current value) apart, so
/// the caller can say it once and carry on.
pub fn tune(stream: &mio::net::TcpStream, busy_poll_us: Option<u32>) -> io::Result<Option<io::Error>> {
    stream.set_nodelay(true)?;
    Ok(busy_poll_us.and_then(|us| sys::set_busy_poll(stream.as_raw_fd(), us).err()))
}

/// [`tune`] for a blocking client socket (`std`).
pub fn tune_std(stream: &std::net::TcpStream, busy_poll_us: Option<u32>) -> io::Result<Option<io::Error>> {
    stream.set_nodelay(true)?;
    Ok(busy_poll_us.and_then(|us| sys::set_busy_poll(stream.as_raw_fd(), us).err()))
}

/// `SO_BUSY_POLL` of a socket as the kernel holds it (µs), for logs and the bench.
pub fn busy_poll_of(fd: &impl AsRawFd) -> io::Result<u32> {
    sys::busy_poll(fd.as_raw_fd())
}

/// A `tcp://host:port` address (`--connect` of replay, the C example), resolved.
pub fn parse_url(text: &str) -> Option<Result<SocketAddr, String>> {
    let rest = text.strip_prefix("tcp://")?;
    use std::net::ToSocketAddrs;
    Some(
        rest.to_socket_addrs()
            .map_err(|e| format!("{text}: {e}"))
            .and_then(|mut it| it.next().ok_or_else(|| format!("{text}: no address"))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parses_and_matches() {
        let net: Cidr = "10.0.0.0/24".parse().unwrap();
        assert!(net.contains(ip("10.0.0.7")) && net.contains(ip("10.0.0.255")));
        assert!(!net.contains(ip("10.0.1.0")) && !net.contains(ip("fd00::1")));
        assert!(net.contains(ip("::ffff:10.0.0.9")), "an IPv4 peer on an IPv6 socket");
        let host: Cidr = "192.168.1.5".parse().unwrap();
        assert!(host.contains(ip("192.168.1.5")) && !host.contains(ip("192.168.1.4")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("1.2.3.4")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        for bad in ["10.0.0.0/33", "10.0.0/24", "host", "::/129", "10.0.0.0/-1", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let list = parse_allow(&["10.0.0.0/24,10.0.1.2".into(), "fd00::/8".into()]).unwrap();
        assert_eq!(list.len(), 3);
        assert!(parse_allow(&["10.0.0.0/24,nope".into()]).unwrap_err().contains("--tcp-allow"));
    }

    #[test]
    fn empty_allowlist_admits_loopback_only_and_binding_wide_needs_one() {
        let p = TcpPolicy::default();
        assert!(p.admits(ip("127.0.0.1")) && p.admits(ip("::1")) && p.admits(ip("::ffff:127.0.0.1")));
        assert!(!p.admits(ip("10.0.0.2")));
        let e = bind("0.0.0.0:0".parse().unwrap(), &p).unwrap_err().to_string();
        assert!(e.contains("--tcp-allow"), "{e}");
        let listed = TcpPolicy { allow: parse_allow(&["10.0.0.2".into()]).unwrap(), ..p };
        assert!(listed.admits(ip("10.0.0.2")) && !listed.admits(ip("127.0.0.1")));
        assert!(bind("127.0.0.1:0".parse().unwrap(), &TcpPolicy::default()).is_ok());
    }

    #[test]
    fn token_file_is_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "s3cret\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Token::load(&f).unwrap_err().contains("chmod 600"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let t = Token::load(&f).unwrap();
        assert!(t.admits(MlAuth::new(b"s3cret").as_ref()));
        assert!(!t.admits(MlAuth::new(b"s3cret\n").as_ref()) && !t.admits(None));
        std::fs::write(&f, "\n").unwrap();
        assert!(Token::load(&f).unwrap_err().contains("1..=64"));
        assert!(format!("{t:?}").contains("6 bytes") && !format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn urls() {
        assert_eq!(parse_url("tcp://127.0.0.1:7001"), Some(Ok("127.0.0.1:7001".parse().unwrap())));
        assert!(parse_url("/tmp/x.sock").is_none());
        assert!(parse_url("tcp://nohost").unwrap().is_err());
    }
}
