//! What the operator asks of the host once the server is warm: `--lock-memory`
//! (every current and future page locked, so none is swapped out or faulted in on
//! the hot path) and `--rt-priority N` (`SCHED_FIFO` for the pinned hot threads).
//! Each runs after the model is loaded and warmed and before the server says it is
//! ready, and a refusal stops the start with the limit that refused it and the
//! systemd unit line that raises it (`tickinfer doctor` reports both limits).

use crate::sys::{self, CAP_IPC_LOCK, CAP_SYS_NICE};

/// The unit this project ships, named in the messages.
const UNIT: &str = "deploy/systemd/tickinfer.service";

/// Lock every current and future page (`mlockall(MCL_CURRENT | MCL_FUTURE)`).
///
/// A finite `RLIMIT_MEMLOCK` is refused even where the current pages fit: with
/// `MCL_FUTURE`, an allocation past the limit would later fail (and abort), so the
/// limit must be unlimited, or the process must hold `CAP_IPC_LOCK`.
pub(super) fn lock_memory() -> Result<(), String> {
    let limit =
        sys::soft_limit(libc::RLIMIT_MEMLOCK).map_err(|e| format!("--lock-memory: getrlimit: {e}"))?;
    if let (Some(bytes), false) = (limit, sys::has_capability(CAP_IPC_LOCK)) {
        return Err(format!(
            "--lock-memory: the locked-memory limit (RLIMIT_MEMLOCK) is {} KiB; future pages are locked \
             too, so an allocation past a finite limit would fail later: raise it to unlimited \
             (`ulimit -l unlimited`, or `LimitMEMLOCK=infinity` in {UNIT}) or grant CAP_IPC_LOCK",
            bytes / 1024
        ));
    }
    sys::lock_all_memory().map_err(|e| {
        format!(
            "--lock-memory: mlockall failed: {e} (is there memory for every mapped page? \
             `LimitMEMLOCK=infinity` in {UNIT})"
        )
    })?;
    log::info!("memory locked: {} KiB now (VmLck), and every page mapped from here on", locked_kib());
    Ok(())
}

/// Kibibytes locked by this process (`VmLck` of `/proc/self/status`), 0 if unreadable.
fn locked_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    sys::status_field(&status, "VmLck:")
        .and_then(|v| v.trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Run each pinned hot thread under `SCHED_FIFO` at `priority`.
///
/// Threads that are not pinned are refused: a real-time thread that spins without
/// a core of its own takes the CPU from everything else the kernel would put there.
pub(super) fn realtime(threads: &[(Option<libc::pthread_t>, &str)], priority: u8) -> Result<(), String> {
    if threads.iter().all(|(t, _)| t.is_none()) {
        return Err(format!(
            "--rt-priority {priority}: no thread is pinned (--no-pin?); real-time priority is for \
             threads with a core of their own"
        ));
    }
    for (thread, name) in threads {
        let Some(thread) = thread else { continue };
        sys::set_fifo(*thread, i32::from(priority)).map_err(|e| {
            let limit = match sys::soft_limit(libc::RLIMIT_RTPRIO) {
                Ok(Some(n)) => n.to_string(),
                Ok(None) => "unlimited".into(),
                Err(_) => "unknown".into(),
            };
            let cap = if sys::has_capability(CAP_SYS_NICE) { "held" } else { "not held" };
            format!(
                "--rt-priority {priority}: SCHED_FIFO for the {name} refused: {e}; the real-time \
                 priority limit (RLIMIT_RTPRIO) is {limit} and CAP_SYS_NICE is {cap}: \
                 `ulimit -r {priority}`, or `LimitRTPRIO={priority}` in {UNIT}"
            )
        })?;
        log::info!("{name}: SCHED_FIFO priority {priority}");
    }
    Ok(())
}
