//! `tickinfer doctor` against fixture /proc and /sys trees: a tuned host and an
//! untuned one. Every untuned setting is named with its fix; `--strict` fails
//! only when something should be fixed.
mod util;

use std::path::Path;
use std::process::Command;

use tickinfer::doctor::{Host, Level};

fn put(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

const LIMITS_HEADER: &str =
    "Limit                     Soft Limit           Hard Limit           Units     \n";

fn tuned(root: &Path) {
    put(root, "sys/devices/system/cpu/online", "0-7\n");
    put(root, "sys/devices/system/cpu/isolated", "2-5\n");
    put(root, "proc/cmdline", "BOOT_IMAGE=/vmlinuz isolcpus=2-5 nohz_full=2-5 rcu_nocbs=2-5 quiet\n");
    put(root, "sys/devices/system/cpu/smt/active", "0\n");
    for c in 0..8 {
        put(root, &format!("sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor"), "performance\n");
    }
    put(root, "sys/devices/system/cpu/intel_pstate/no_turbo", "1\n");
    put(root, "sys/kernel/mm/transparent_hugepage/enabled", "always [madvise] never\n");
    put(root, "proc/swaps", "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n");
    put(
        root,
        "proc/self/limits",
        &format!("{LIMITS_HEADER}Max locked memory         unlimited            unlimited            bytes     \nMax realtime priority     99                   99                   \n"),
    );
    put(root, "proc/irq/24/smp_affinity_list", "0-1,6-7\n");
    put(root, "proc/irq/25/smp_affinity_list", "6\n");
    put(root, "sys/devices/system/clocksource/clocksource0/current_clocksource", "tsc\n");
    put(root, "proc/cpuinfo", "processor\t: 0\nflags\t\t: fpu tsc constant_tsc nonstop_tsc rdtscp\n");
    put(root, "sys/devices/system/cpu/cpuidle/current_driver", "intel_idle\n");
    put(root, "sys/devices/system/cpu/cpu0/cpuidle/state0/latency", "0\n");
    put(root, "sys/devices/system/cpu/cpu0/cpuidle/state1/latency", "2\n");
    put(root, "sys/devices/system/cpu/cpu0/cpuidle/state2/latency", "100\n");
    put(root, "sys/devices/system/cpu/cpu0/cpuidle/state2/disable", "1\n");
    put(root, "proc/stat", "cpu  1000 0 500 100000 10 0 5 0 0 0\ncpu0 1 2 3\n");
    put(root, "sys/fs/cgroup/cpu.max", "max 100000\n");
}

fn untuned(root: &Path) {
    put(root, "sys/devices/system/cpu/online", "0-1\n");
    put(root, "sys/devices/system/cpu/isolated", "\n");
    put(root, "proc/cmdline", "BOOT_IMAGE=/vmlinuz quiet\n");
    put(root, "sys/devices/system/cpu/smt/active", "1\n");
    put(root, "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor", "powersave\n");
    put(root, "sys/devices/system/cpu/cpu1/cpufreq/scaling_governor", "powersave\n");
    put(root, "sys/kernel/mm/transparent_hugepage/enabled", "[always] madvise never\n");
    put(root, "proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n/swapfile file 1048572 0 -2\n");
    put(
        root,
        "proc/self/limits",
        &format!("{LIMITS_HEADER}Max locked memory         65536                65536                bytes     \nMax realtime priority     0                    0                    \n"),
    );
    put(root, "proc/irq/24/smp_affinity_list", "0-1\n");
    put(root, "sys/devices/system/clocksource/clocksource0/current_clocksource", "hpet\n");
    put(root, "proc/cpuinfo", "processor\t: 0\nflags\t\t: fpu tsc\n");
    put(root, "sys/devices/system/cpu/cpuidle/current_driver", "acpi_idle\n");
    put(root, "sys/devices/system/cpu/cpu0/cpuidle/state3/latency", "150\n");
    put(root, "proc/stat", "cpu  1000 0 500 10000 10 0 5 900 0 0\n");
    put(root, "sys/fs/cgroup/cpu.max", "200000 100000\n");
}

fn levels(root: &Path) -> Vec<(&'static str, Level, String)> {
    Host::new(root)
        .check()
        .into_iter()
        .map(|f| (f.area, f.level, f.found + " | " + f.fix.as_deref().unwrap_or("")))
        .collect()
}

fn doctor(root: &Path, strict: bool) -> (bool, String) {
    let mut args = vec!["doctor", "--root", root.to_str().unwrap()];
    if strict {
        args.push("--strict");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_tickinfer")).args(&args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string())
}

#[test]
fn tuned_host_has_nothing_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    tuned(dir.path());
    let warns: Vec<_> = levels(dir.path()).into_iter().filter(|f| f.1 == Level::Warn).collect();
    assert!(warns.is_empty(), "{warns:#?}");
    let (ok, text) = doctor(dir.path(), true);
    assert!(ok, "--strict on a tuned host:\n{text}");
    assert!(text.contains("0 finding(s) to fix"), "{text}");
    for area in ["isolation", "governor", "irq", "clocksource", "cpuidle", "cgroup", "mlock"] {
        assert!(text.lines().any(|l| l.starts_with("[ ok ]") && l.contains(area)), "{area} not ok:\n{text}");
    }
}

#[test]
fn untuned_host_names_each_problem_and_its_fix() {
    let dir = tempfile::tempdir().unwrap();
    untuned(dir.path());
    let found = levels(dir.path());
    for (area, needle) in [
        ("cores", "inline mode"),
        ("isolation", "isolcpus="),
        ("smt", "echo off"),
        ("governor", "cpupower frequency-set -g performance"),
        ("thp", "echo madvise"),
        ("swap", "swapoff"),
        ("mlock", "ulimit -l unlimited"),
        ("irq", "smp_affinity_list"),
        ("clocksource", "echo tsc"),
        ("tsc", "nonstop_tsc false"),
        ("cpuidle", "150 µs"),
        ("steal", "stolen"),
        ("cgroup", "200000 100000"),
    ] {
        let f = found.iter().find(|f| f.0 == area).unwrap_or_else(|| panic!("no {area} finding"));
        assert_eq!(f.1, Level::Warn, "{area}: {}", f.2);
        assert!(f.2.contains(needle), "{area}: `{needle}` not in `{}`", f.2);
    }
    let (ok, text) = doctor(dir.path(), false);
    assert!(ok, "without --strict doctor exits 0");
    assert!(text.contains("13 finding(s) to fix"), "{text}");
    let (ok, _) = doctor(dir.path(), true);
    assert!(!ok, "--strict exits non-zero when something should be fixed");
}

/// `serve --listen-tcp`: kernel busy polling and each physical NIC (coalescing is read with
/// ethtool only on the live host, so a fixture tree gets the command and the fix).
#[test]
fn tcp_settings_are_named_with_their_fix() {
    let dir = tempfile::tempdir().unwrap();
    tuned(dir.path());
    put(dir.path(), "proc/sys/net/core/busy_read", "0\n");
    put(dir.path(), "proc/sys/net/core/busy_poll", "0\n");
    put(dir.path(), "sys/class/net/eth0/speed", "10000\n");
    put(dir.path(), "sys/class/net/eth0/device/vendor", "0x1924\n");
    put(dir.path(), "sys/class/net/lo/speed", "\n"); // no device: not a NIC
    let found = levels(dir.path());
    let busy = found.iter().find(|f| f.0 == "busy-poll").expect("busy-poll finding");
    assert_eq!(busy.1, Level::Info, "{}", busy.2);
    assert!(busy.2.contains("net.core.busy_read=50") && busy.2.contains("--busy-poll-us"), "{}", busy.2);
    let nics: Vec<_> = found.iter().filter(|f| f.0 == "nic").collect();
    assert_eq!(nics.len(), 1, "{nics:?}");
    assert!(
        nics[0].2.contains("eth0: 10000 Mb/s") && nics[0].2.contains("ethtool -C eth0 adaptive-rx off"),
        "{}",
        nics[0].2
    );
    put(dir.path(), "proc/sys/net/core/busy_read", "50\n");
    put(dir.path(), "proc/sys/net/core/busy_poll", "50\n");
    let busy = levels(dir.path()).into_iter().find(|f| f.0 == "busy-poll").unwrap();
    assert_eq!(busy.1, Level::Ok, "{}", busy.2);
    // Information only: a host not using TCP has nothing more to fix.
    let (ok, text) = doctor(dir.path(), true);
    assert!(ok, "{text}");
}

#[test]
fn this_machine_runs() {
    let (ok, text) = doctor(Path::new("/"), false);
    assert!(ok && text.contains("finding(s) to fix"), "{text}");
}
