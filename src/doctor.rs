//! `tickinfer doctor`: is this host tuned for low latency, and how to fix what is not.
//!
//! Everything is read from files under a root (`/` by default; tests point it at
//! fixture trees): `/proc` and `/sys`, plus the ONNX Runtime library the server
//! would load. Nothing is changed. Each finding says what was found and, when it
//! costs latency, the fix.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// How a finding bears on latency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Info,
    Warn,
}

#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub area: &'static str,
    pub level: Level,
    pub found: String,
    /// How to fix it (warnings), or how to do better (info).
    pub fix: Option<String>,
}

fn ok(area: &'static str, found: impl Into<String>) -> Finding {
    Finding { area, level: Level::Ok, found: found.into(), fix: None }
}
fn info(area: &'static str, found: impl Into<String>, fix: Option<&str>) -> Finding {
    Finding { area, level: Level::Info, found: found.into(), fix: fix.map(String::from) }
}
fn warn(area: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding { area, level: Level::Warn, found: found.into(), fix: Some(fix.into()) }
}

/// The host as seen under `root`.
pub struct Host {
    root: PathBuf,
}

impl Host {
    pub fn new(root: impl Into<PathBuf>) -> Host {
        Host { root: root.into() }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    fn read(&self, p: &str) -> Option<String> {
        std::fs::read_to_string(self.path(p)).ok().map(|s| s.trim().to_string())
    }

    fn glob(&self, dir: &str, prefix: &str) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.path(dir))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix)))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn cmdline_param(&self, key: &str) -> Option<String> {
        self.read("/proc/cmdline")?
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")).map(String::from))
    }

    /// Run every check.
    pub fn check(&self) -> Vec<Finding> {
        let mut f = Vec::new();
        let online = self
            .read("/sys/devices/system/cpu/online")
            .map(|s| crate::sys::parse_cpu_list(&s))
            .unwrap_or_default();
        let isolated = self
            .read("/sys/devices/system/cpu/isolated")
            .map(|s| crate::sys::parse_cpu_list(&s))
            .unwrap_or_default();
        // The cores the server would pin to by default: isolated first, core 0 last.
        let mut chosen = online.clone();
        chosen.sort_by_key(|c| (!isolated.contains(c), *c == 0, *c));
        chosen.truncate(2);

        // Cores.
        if online.len() >= 3 {
            f.push(ok(
                "cores",
                format!("{} online {online:?}: pipeline mode (I/O + worker + client)", online.len()),
            ));
        } else {
            f.push(warn(
                "cores",
                format!(
                    "{} online {online:?}: inline mode; a spinning server and a spinning client share them",
                    online.len()
                ),
                "use a host with ≥ 3 cores (4+ with isolation) for pipeline mode",
            ));
        }
        // Isolation.
        let (iso, nohz, rcu) = (
            self.cmdline_param("isolcpus"),
            self.cmdline_param("nohz_full"),
            self.cmdline_param("rcu_nocbs"),
        );
        if !isolated.is_empty() && nohz.is_some() && rcu.is_some() {
            f.push(ok(
                "isolation",
                format!(
                    "isolated {isolated:?}, nohz_full={}, rcu_nocbs={}",
                    nohz.unwrap_or_default(),
                    rcu.unwrap_or_default()
                ),
            ));
        } else {
            f.push(warn(
                "isolation",
                format!(
                    "isolated cores {isolated:?}; isolcpus={} nohz_full={} rcu_nocbs={}",
                    iso.as_deref().unwrap_or("-"),
                    nohz.as_deref().unwrap_or("-"),
                    rcu.as_deref().unwrap_or("-")
                ),
                "boot with isolcpus=N,M nohz_full=N,M rcu_nocbs=N,M (the server's cores), then --io-core/--worker-core",
            ));
        }
        // SMT.
        match self.read("/sys/devices/system/cpu/smt/active").as_deref() {
            Some("1") => f.push(warn(
                "smt",
                "SMT active: hyper-threads share a core's caches and ports",
                "echo off > /sys/devices/system/cpu/smt/control (or nosmt on the kernel command line), or keep the siblings of the server's cores idle",
            )),
            Some(_) => f.push(ok("smt", "SMT off")),
            None => f.push(info("smt", "SMT state not reported", None)),
        }
        // Governor and turbo.
        let govs: Vec<String> = self
            .glob("/sys/devices/system/cpu", "cpu")
            .iter()
            .filter_map(|p| std::fs::read_to_string(p.join("cpufreq/scaling_governor")).ok())
            .map(|s| s.trim().to_string())
            .collect();
        if govs.is_empty() {
            f.push(info("governor", "no cpufreq (a VM, or the hypervisor owns frequency)", None));
        } else if govs.iter().all(|g| g == "performance") {
            f.push(ok("governor", "performance on every core"));
        } else {
            let mut g = govs.clone();
            g.dedup();
            f.push(warn("governor", format!("governors {g:?}"), "cpupower frequency-set -g performance"));
        }
        match (
            self.read("/sys/devices/system/cpu/intel_pstate/no_turbo"),
            self.read("/sys/devices/system/cpu/cpufreq/boost"),
        ) {
            (Some(v), _) if v == "1" => f.push(ok("turbo", "turbo off: steady clock")),
            (Some(_), _) | (_, Some(_)) => f.push(info(
                "turbo",
                "turbo on: faster, but the clock varies with load and temperature",
                Some("for the steadiest tail: echo 1 > /sys/devices/system/cpu/intel_pstate/no_turbo"),
            )),
            _ => f.push(info("turbo", "turbo state not reported", None)),
        }
        // Transparent huge pages.
        match self.read("/sys/kernel/mm/transparent_hugepage/enabled") {
            Some(t) if t.contains("[always]") => f.push(warn(
                "thp",
                "transparent huge pages: always (khugepaged compaction can stall the hot path)",
                "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled",
            )),
            Some(t) => f.push(ok("thp", format!("transparent huge pages: {t}"))),
            None => f.push(info("thp", "THP setting not reported", None)),
        }
        // Swap.
        let swaps =
            self.read("/proc/swaps").map(|s| s.lines().skip(1).filter(|l| !l.trim().is_empty()).count());
        match swaps {
            Some(0) => f.push(ok("swap", "no swap")),
            Some(n) => f.push(warn(
                "swap",
                format!("{n} swap device(s) active"),
                "swapoff -a (or lock the server's memory)",
            )),
            None => f.push(info("swap", "/proc/swaps unreadable", None)),
        }
        // mlock and real-time limits.
        if let Some(limits) = self.read("/proc/self/limits") {
            let limit = |name: &str| {
                limits
                    .lines()
                    .find(|l| l.starts_with(name))
                    .map(|l| l[name.len()..].split_whitespace().next().unwrap_or("?").to_string())
            };
            // `tickinfer serve --lock-memory` needs the limit unlimited, or CAP_IPC_LOCK;
            // CAP_IPC_LOCK and CAP_SYS_NICE lift the two limits below.
            use crate::sys::{effective_caps, status_field, CAP_IPC_LOCK, CAP_SYS_NICE};
            let status = self.read("/proc/self/status").unwrap_or_default();
            let caps = effective_caps(&status);
            let (ipc_lock, sys_nice) = (caps & (1 << CAP_IPC_LOCK) != 0, caps & (1 << CAP_SYS_NICE) != 0);
            let locked = status_field(&status, "VmLck:").filter(|v| v.split_whitespace().next() != Some("0"));
            match (limit("Max locked memory").as_deref(), locked) {
                (_, Some(kb)) => f.push(ok("mlock", format!("memory locked: {kb} (--lock-memory)"))),
                (Some("unlimited"), None) => {
                    f.push(ok("mlock", "locked memory: unlimited (tickinfer serve --lock-memory can lock)"))
                }
                (Some(v), None) if ipc_lock => f.push(ok(
                    "mlock",
                    format!("locked memory limit {v} bytes, but CAP_IPC_LOCK is held: --lock-memory can lock"),
                )),
                (Some(v), None) => f.push(warn(
                    "mlock",
                    format!("locked memory limit {v} bytes: pages can be swapped or reclaimed"),
                    "ulimit -l unlimited (systemd: LimitMEMLOCK=infinity), then tickinfer serve --lock-memory",
                )),
                (None, None) => f.push(info("mlock", "limit not reported", None)),
            }
            match limit("Max realtime priority").as_deref() {
                Some("0") | None if sys_nice => f.push(ok(
                    "rtprio",
                    "real-time priority limit 0, but CAP_SYS_NICE is held: --rt-priority can set SCHED_FIFO",
                )),
                Some("0") | None => f.push(info(
                    "rtprio",
                    "real-time priority not allowed (SCHED_FIFO unavailable)",
                    Some(
                        "ulimit -r 50 (systemd: LimitRTPRIO=50), then tickinfer serve --rt-priority 50 \
                         to run the pinned threads SCHED_FIFO",
                    ),
                )),
                Some(v) => f.push(ok("rtprio", format!("real-time priority up to {v}"))),
            }
        }
        // IRQ affinity on the chosen cores.
        let mut on_chosen = Vec::new();
        for irq in self.glob("/proc/irq", "") {
            let Some(n) = irq
                .file_name()
                .and_then(|n| n.to_str())
                .filter(|n| n.parse::<u32>().is_ok())
                .map(String::from)
            else {
                continue;
            };
            if let Ok(list) = std::fs::read_to_string(irq.join("smp_affinity_list")) {
                if crate::sys::parse_cpu_list(&list).iter().any(|c| chosen.contains(c)) {
                    on_chosen.push(n);
                }
            }
        }
        if on_chosen.is_empty() {
            f.push(ok("irq", format!("no IRQ may run on the server's cores {chosen:?}")));
        } else {
            f.push(warn(
                "irq",
                format!("{} IRQs may run on the server's cores {chosen:?} (e.g. {})", on_chosen.len(), on_chosen[..on_chosen.len().min(5)].join(", ")),
                "write housekeeping cores to /proc/irq/*/smp_affinity_list (and IRQBALANCE_BANNED_CPUS for irqbalance)",
            ));
        }
        // Clock.
        match self.read("/sys/devices/system/clocksource/clocksource0/current_clocksource").as_deref() {
            Some("tsc") => f.push(ok("clocksource", "tsc: clock_gettime is a vDSO call (~20 ns)")),
            Some(other) => f.push(warn(
                "clocksource",
                format!("{other}: every timestamp may be a syscall or a slow read"),
                "echo tsc > /sys/devices/system/clocksource/clocksource0/current_clocksource (if the TSC is stable)",
            )),
            None => f.push(info("clocksource", "not reported", None)),
        }
        let flags = self.read("/proc/cpuinfo").and_then(|c| {
            c.lines().find(|l| l.starts_with("flags")).map(|l| l.split(':').nth(1).unwrap_or("").to_string())
        });
        if let Some(flags) = flags {
            let has = |x: &str| flags.split_whitespace().any(|w| w == x);
            if has("constant_tsc") && has("nonstop_tsc") {
                f.push(ok("tsc", "constant_tsc and nonstop_tsc"));
            } else {
                f.push(warn(
                    "tsc",
                    format!("constant_tsc {}, nonstop_tsc {}", has("constant_tsc"), has("nonstop_tsc")),
                    "the TSC may drift with frequency or stop in deep C-states: prefer a host whose CPU reports both",
                ));
            }
        }
        // Idle.
        let driver = self.read("/sys/devices/system/cpu/cpuidle/current_driver");
        let deepest = self
            .glob("/sys/devices/system/cpu/cpu0/cpuidle", "state")
            .iter()
            .filter(|s| std::fs::read_to_string(s.join("disable")).map(|d| d.trim() == "0").unwrap_or(true))
            .filter_map(|s| std::fs::read_to_string(s.join("latency")).ok()?.trim().parse::<u64>().ok())
            .max();
        match (driver.as_deref(), deepest) {
            (Some("haltpoll"), _) => f.push(ok("cpuidle", "haltpoll: the guest polls before halting (cheaper wake-ups)")),
            (Some(d), Some(us)) if us > 10 => f.push(warn(
                "cpuidle",
                format!("{d}: idle states up to {us} µs exit latency are enabled"),
                "use --poll spin on the server's cores, or boot with processor.max_cstate=1 (idle=poll on dedicated hosts)",
            )),
            (Some(d), _) => f.push(ok("cpuidle", format!("{d}: shallow idle states only"))),
            (None, _) => f.push(info(
                "cpuidle",
                "no cpuidle driver (VM without haltpoll: every block costs a VM exit)",
                Some("load cpuidle-haltpoll in the guest, or use --poll spin/adaptive"),
            )),
        }
        // Steal time.
        if let Some(stat) = self.read("/proc/stat") {
            if let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) {
                let v: Vec<u64> = cpu.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
                let total: u64 = v.iter().sum();
                let steal = v.get(7).copied().unwrap_or(0);
                let pct = if total > 0 { 100.0 * steal as f64 / total as f64 } else { 0.0 };
                if pct > 1.0 {
                    f.push(warn(
                        "steal",
                        format!("{pct:.1}% of CPU time stolen by the hypervisor since boot"),
                        "noisy neighbours: ask for dedicated (pinned) vCPUs or a bare-metal host",
                    ));
                } else {
                    f.push(ok("steal", format!("{pct:.2}% CPU time stolen since boot")));
                }
            }
        }
        // cgroup CPU quota.
        match (self.read("/sys/fs/cgroup/cpu.max"), self.read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")) {
            (Some(m), _) if !m.starts_with("max") => f.push(warn(
                "cgroup",
                format!("CPU quota {m} (quota period): spinning threads get throttled"),
                "run without a CPU quota (cpu.max = max), or give whole cores with cpusets",
            )),
            (_, Some(q)) if q != "-1" => f.push(warn(
                "cgroup",
                format!("CPU quota {q} µs per period (cgroup v1)"),
                "run without a CPU quota (cpu.cfs_quota_us = -1)",
            )),
            (Some(_), _) | (_, Some(_)) => f.push(ok("cgroup", "no CPU quota")),
            _ => f.push(info("cgroup", "cgroup CPU settings not found", None)),
        }
        // TCP (`serve --listen-tcp`): kernel busy polling, and the NICs' interrupt coalescing.
        f.extend(self.tcp_findings());
        // ONNX Runtime and execution providers.
        match crate::engine::runtime::find_existing(crate::engine::runtime::Flavor::Cpu)
            .or_else(|| crate::engine::runtime::find_existing(crate::engine::runtime::Flavor::Gpu))
        {
            Some(lib) => {
                let dir = lib.parent().unwrap_or(Path::new("."));
                let mut eps = vec!["cpu"];
                if dir.join("libonnxruntime_providers_cuda.so").exists() {
                    eps.push("cuda");
                }
                if dir.join("libonnxruntime_providers_tensorrt.so").exists() {
                    eps.push("tensorrt");
                }
                f.push(ok(
                    "onnxruntime",
                    format!("{} (execution providers: {})", lib.display(), eps.join(", ")),
                ));
            }
            None => f.push(info(
                "onnxruntime",
                format!("{} not found yet", crate::engine::runtime::ORT_LIB_NAME),
                Some("it is fetched from PyPI on first use (or set TICKINFER_ORT_LIB)"),
            )),
        }
        // GPU.
        if let Some(v) = self.read("/proc/driver/nvidia/version") {
            let line = v.lines().next().unwrap_or_default().to_string();
            f.push(info(
                "gpu",
                format!("NVIDIA driver: {line}"),
                Some("build with --features tensorrt and serve with --provider tensorrt"),
            ));
        } else if self.path("/dev/nvidia0").exists() {
            f.push(info("gpu", "/dev/nvidia0 present", Some("build with --features cuda")));
        } else {
            f.push(info("gpu", "no GPU: the CPU execution provider serves", None));
        }
        f
    }
}

impl Host {
    /// What matters for `--listen-tcp` between two hosts: `net.core.busy_read`/`busy_poll`
    /// (a blocking read or epoll busy-polls the NIC queue instead of sleeping for its
    /// interrupt), and each physical NIC's interrupt coalescing (the NIC holds a packet up
    /// to `rx-usecs` before interrupting). Coalescing is not in /sys: it is read with
    /// `ethtool -c` when the root is `/` and ethtool is installed. Information only when
    /// TCP is not used; warnings name the fix.
    fn tcp_findings(&self) -> Vec<Finding> {
        let mut f = Vec::new();
        let read =
            |k: &str| self.read(&format!("/proc/sys/net/core/{k}")).and_then(|v| v.parse::<u64>().ok());
        match (read("busy_read"), read("busy_poll")) {
            (Some(r), Some(p)) if r > 0 && p > 0 => {
                f.push(ok("busy-poll", format!("net.core.busy_read {r} µs, net.core.busy_poll {p} µs")))
            }
            (Some(r), Some(p)) => f.push(info(
                "busy-poll",
                format!(
                    "net.core.busy_read {r} µs, net.core.busy_poll {p} µs: TCP reads wait for the NIC's \
                     interrupt (for serve --listen-tcp)"
                ),
                Some(
                    "sysctl -w net.core.busy_read=50 net.core.busy_poll=50 (persist in /etc/sysctl.d/), \
                     or serve --busy-poll-us 50 with CAP_NET_ADMIN; `tickinfer bench` measures both ways",
                ),
            )),
            _ => f.push(info("busy-poll", "net.core.busy_read/busy_poll not found", None)),
        }
        let nics: Vec<PathBuf> = self
            .glob("/sys/class/net", "")
            .into_iter()
            .filter(|p| p.join("device").exists()) // physical NICs (not lo, veth, bridges)
            .collect();
        for nic in nics {
            let dev = nic.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            let speed =
                std::fs::read_to_string(nic.join("speed")).map(|s| s.trim().to_string()).unwrap_or_default();
            let defer =
                std::fs::read_to_string(nic.join("napi_defer_hard_irqs")).map(|s| s.trim().to_string());
            let what = format!(
                "{dev}: {} Mb/s{}",
                if speed.is_empty() { "?".into() } else { speed },
                defer.map(|d| format!(", napi_defer_hard_irqs {d}")).unwrap_or_default()
            );
            let fix = format!(
                "ethtool -C {dev} adaptive-rx off rx-usecs 0 tx-usecs 0 (an interrupt per packet: the lowest \
                 latency, more CPU); pin the NIC's IRQs off the hot cores (irq finding)"
            );
            match self.coalescing(&dev) {
                Some((adaptive, usecs)) if adaptive || usecs > 0 => f.push(warn(
                    "nic",
                    format!(
                        "{what}; interrupt coalescing: adaptive-rx {}, rx-usecs {usecs}",
                        if adaptive { "on" } else { "off" }
                    ),
                    fix,
                )),
                Some(_) => f.push(ok("nic", format!("{what}; interrupt coalescing off (rx-usecs 0)"))),
                None => f.push(info(
                    "nic",
                    format!("{what}; interrupt coalescing not read (see `ethtool -c {dev}`)"),
                    Some(&fix),
                )),
            }
        }
        f
    }

    /// `(adaptive-rx, rx-usecs)` from `ethtool -c DEV`, only on the live host (`/`).
    fn coalescing(&self, dev: &str) -> Option<(bool, u64)> {
        if self.root != Path::new("/") {
            return None;
        }
        let out = std::process::Command::new("ethtool").args(["-c", dev]).output().ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let adaptive = text.lines().any(|l| l.starts_with("Adaptive RX:") && l.contains("on"));
        let usecs = text.lines().find_map(|l| l.strip_prefix("rx-usecs:"))?.trim().parse().ok()?;
        Some((adaptive, usecs))
    }
}

/// The report as text.
pub fn render(findings: &[Finding]) -> String {
    let mut out = String::new();
    for x in findings {
        let tag = match x.level {
            Level::Ok => " ok ",
            Level::Info => "info",
            Level::Warn => "WARN",
        };
        out += &format!("[{tag}] {:<12} {}\n", x.area, x.found);
        if let Some(fix) = &x.fix {
            out += &format!("       {:<12} fix: {fix}\n", "");
        }
    }
    let warns = findings.iter().filter(|x| x.level == Level::Warn).count();
    out += &format!("{warns} finding(s) to fix for low latency\n");
    out
}
