//! Two network namespaces joined by a veth pair, for measuring and testing TCP over a
//! real L2 path with the kernel's whole TCP stack (not loopback's shortcut). Needs root
//! and iproute2 (`ip`); created on demand, removed on drop.

use std::process::{Command, Stdio};

/// A pair of namespaces, `server_ns` (address `server_ip`) and `client_ns`
/// (`client_ip`), one veth link between them.
#[derive(Debug)]
pub struct Pair {
    pub server_ns: String,
    pub client_ns: String,
    pub server_ip: String,
    pub client_ip: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e} (is iproute2 installed?)", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Pair {
    /// Why a pair cannot be made here (`None`: it can be tried): not root, or no `ip`.
    pub fn unavailable() -> Option<String> {
        if crate::sys::geteuid() != 0 {
            return Some("needs root (network namespaces)".into());
        }
        match Command::new("ip").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status() {
            Ok(s) if s.success() => None,
            _ => Some("needs `ip` (iproute2)".into()),
        }
    }

    /// Create the namespaces `ti{tag}{pid}s`/`…c`, the veth link and its /30, bring them up.
    /// The subnet is picked from the process id, so concurrent runs do not collide.
    pub fn create(tag: &str) -> Result<Pair, String> {
        if let Some(why) = Pair::unavailable() {
            return Err(why);
        }
        let pid = std::process::id();
        let id = format!("ti{tag}{}", pid % 100_000);
        let net = (pid % 250) as u8 + 1;
        let sub =
            (tag.bytes().fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b))) % 60) as u8 * 4;
        let pair = Pair {
            server_ns: format!("{id}s"),
            client_ns: format!("{id}c"),
            server_ip: format!("10.213.{net}.{}", sub + 1),
            client_ip: format!("10.213.{net}.{}", sub + 2),
        };
        // Interface names are at most 15 bytes.
        let (veth_s, veth_c) = (format!("v{}s", pid % 10_000_000), format!("v{}c", pid % 10_000_000));
        let made = (|| {
            ip(&["netns", "add", &pair.server_ns])?;
            ip(&["netns", "add", &pair.client_ns])?;
            ip(&[
                "link",
                "add",
                &veth_s,
                "netns",
                &pair.server_ns,
                "type",
                "veth",
                "peer",
                "name",
                &veth_c,
                "netns",
                &pair.client_ns,
            ])?;
            for (ns, dev, addr) in
                [(&pair.server_ns, &veth_s, &pair.server_ip), (&pair.client_ns, &veth_c, &pair.client_ip)]
            {
                ip(&["-n", ns, "addr", "add", &format!("{addr}/30"), "dev", dev])?;
                ip(&["-n", ns, "link", "set", dev, "up"])?;
                ip(&["-n", ns, "link", "set", "lo", "up"])?;
            }
            Ok(())
        })();
        match made {
            Ok(()) => Ok(pair),
            Err(e) => {
                drop(pair); // removes what was made
                Err(e)
            }
        }
    }

    /// Run `f` on this thread inside namespace `ns` (the server's or the client's): the
    /// sockets it creates, and the threads it starts, live there. The thread is moved back
    /// after, whatever `f` returned.
    pub fn within<T>(ns: &str, f: impl FnOnce() -> T) -> Result<T, String> {
        let home = std::path::PathBuf::from("/proc/thread-self/ns/net");
        // Keep our own namespace open: the path would name the new one once we moved.
        let saved = std::fs::File::open(&home).map_err(|e| format!("{}: {e}", home.display()))?;
        let saved_path =
            std::path::PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&saved)));
        Pair::enter(ns)?;
        let out = f();
        crate::sys::enter_netns(&saved_path).map_err(|e| format!("back to this thread's namespace: {e}"))?;
        Ok(out)
    }

    /// Move this thread into namespace `ns` for good (a thread of its own).
    pub fn enter(ns: &str) -> Result<(), String> {
        let path = std::path::PathBuf::from(format!("/var/run/netns/{ns}"));
        crate::sys::enter_netns(&path).map_err(|e| format!("enter network namespace {ns}: {e}"))
    }

    /// A command run inside the server's namespace (`ip netns exec`).
    pub fn in_server(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.server_ns, program]);
        c
    }

    /// A command run inside the client's namespace.
    pub fn in_client(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.client_ns, program]);
        c
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end inside it, and with it the pair.
        let _ = ip(&["netns", "del", &self.server_ns]);
        let _ = ip(&["netns", "del", &self.client_ns]);
    }
}
