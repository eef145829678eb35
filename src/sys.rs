//! Raw libc calls, each behind the one `syscall!` macro that turns `-1` into
//! `io::Error::last_os_error()`. Private to the crate: the public layer is
//! `transport` and `server`.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Call a libc function; `-1` becomes the `errno` error.
macro_rules! syscall {
    ($fn: ident ( $($arg: expr),* $(,)? ) ) => {{
        #[allow(unused_unsafe)]
        // SAFETY: each call site passes valid pointers/fds for the duration of the call (see callers).
        let res = unsafe { libc::$fn($($arg, )*) };
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// The peer's credentials of a connected Unix socket (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

pub fn peer_cred(fd: RawFd) -> io::Result<PeerCred> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    syscall!(getsockopt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_PEERCRED,
        (&mut cred as *mut libc::ucred).cast(),
        &mut len
    ))?;
    Ok(PeerCred { pid: cred.pid, uid: cred.uid, gid: cred.gid })
}

/// The effective uid of this process.
pub fn geteuid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// Set the process umask, returning the previous one.
pub fn umask(mask: u32) -> u32 {
    // SAFETY: umask cannot fail and touches no memory.
    unsafe { libc::umask(mask as libc::mode_t) as u32 }
}

/// `chmod` without following a symlink at the last component is not possible
/// on Linux; callers check with `lstat` that the path is the socket they bound.
pub fn chmod(path: &Path, mode: u32) -> io::Result<()> {
    let c = cpath(path)?;
    syscall!(chmod(c.as_ptr(), mode as libc::mode_t)).map(drop)
}

/// `lchown(path, -1, gid)`: change the group, never through a symlink.
pub fn chgrp(path: &Path, gid: u32) -> io::Result<()> {
    let c = cpath(path)?;
    syscall!(lchown(c.as_ptr(), u32::MAX, gid)).map(drop)
}

/// Group id of a group name (or a number given as text).
pub fn group_id(name: &str) -> io::Result<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let c =
        CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in group name"))?;
    // SAFETY: getgrnam reads a NUL-terminated string; the returned pointer is only read immediately.
    let grp = unsafe { libc::getgrnam(c.as_ptr()) };
    if grp.is_null() {
        return Err(io::Error::new(io::ErrorKind::NotFound, format!("no group named `{name}`")));
    }
    // SAFETY: non-null result of getgrnam points at a valid struct group.
    Ok(unsafe { (*grp).gr_gid })
}

/// Ignore SIGPIPE: writes to a closed peer return EPIPE instead of killing us.
pub fn ignore_sigpipe() {
    // SAFETY: installing SIG_IGN for SIGPIPE is async-signal-safe and process-wide by design.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// `sendmsg` of `bytes` with `fds` attached as one `SCM_RIGHTS` message (on the
/// first byte sent). Returns the bytes sent; the descriptors go with any byte.
pub fn send_with_fds(sock: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    let fd_bytes = std::mem::size_of_val(fds) as u32;
    // SAFETY: CMSG_SPACE is pure arithmetic.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)]; // u64: cmsghdr alignment
    let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points at `space` bytes, enough for one header and `fds`.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast::<RawFd>(), fds.len());
    }
    loop {
        match syscall!(sendmsg(sock, &msg, libc::MSG_NOSIGNAL)) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r.map(|n| n as usize),
        }
    }
}

/// `recvmsg` into `buf`, taking ownership of any `SCM_RIGHTS` descriptors that
/// came with the bytes (appended to `fds`, close-on-exec). `Ok(0)`: EOF.
pub fn recv_with_fds(sock: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    const MAX_FDS: usize = 4;
    // SAFETY: CMSG_SPACE is pure arithmetic.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut control = [0u64; 16];
    debug_assert!(space <= std::mem::size_of_val(&control));
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let n = loop {
        match syscall!(recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC)) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => break r? as usize,
        }
    };
    // SAFETY: the kernel filled msg_control with well-formed headers up to msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let count =
                    ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    // Each descriptor is new to this process and owned by nobody else.
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "more descriptors than expected (MSG_CTRUNC)",
        ));
    }
    Ok(n)
}

/// A non-blocking, close-on-exec eventfd (counter 0).
pub fn eventfd() -> io::Result<OwnedFd> {
    let fd = syscall!(eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))?;
    // SAFETY: a descriptor eventfd just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Add one to an eventfd's counter (wakes its poller). A full counter (EAGAIN)
/// already means "ring pending", so it is not an error.
pub fn eventfd_ring(fd: RawFd) -> io::Result<()> {
    let one = 1u64;
    match syscall!(write(fd, (&one as *const u64).cast(), 8)) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        r => r.map(drop),
    }
}

/// A new descriptor of the file open at `fd`, read-only, from an inode made
/// owner-read-only first: a process given it cannot write, punch, resize or seal the
/// file, nor reopen it writable through `/proc/self/fd` (only root can). The caller's
/// own descriptors keep their access.
pub fn reopen_read_only(fd: RawFd) -> io::Result<OwnedFd> {
    syscall!(fchmod(fd, 0o400))?;
    let path = cpath(Path::new(&format!("/proc/self/fd/{fd}")))?;
    let ro = syscall!(open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC))
        .map_err(|e| io::Error::new(e.kind(), format!("reopening a region read-only through /proc: {e}")))?;
    // SAFETY: a descriptor open just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(ro) })
}

/// Give back the pages of `len` bytes from `offset` of the file at `fd`
/// (`fallocate(PUNCH_HOLE)`; the size stays).
pub fn punch_hole(fd: RawFd, offset: u64, len: u64) -> io::Result<()> {
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    syscall!(fallocate(fd, mode, offset as libc::off_t, len as libc::off_t)).map(drop)
}

/// The system's page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf reads a constant.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

/// Of the pages of the shared mapping `[base, base + len)`, how many are not in
/// memory, and how many there are (`mincore`: reads the page cache, faults nothing in).
pub fn pages_not_resident(base: *mut u8, len: usize) -> io::Result<(usize, usize)> {
    let pages = len.div_ceil(page_size());
    let mut vec = vec![0u8; pages];
    syscall!(mincore(base.cast(), len, vec.as_mut_ptr()))?;
    Ok((vec.iter().filter(|&&v| v & 1 == 0).count(), pages))
}

/// Fault every page of the mapping `[base, base + len)` in now (`MADV_POPULATE_WRITE`
/// or `_READ`, Linux 5.14): best effort, a kernel without it faults them on first use.
pub fn populate(base: *mut u8, len: usize, write: bool) {
    const MADV_POPULATE_READ: libc::c_int = 22;
    const MADV_POPULATE_WRITE: libc::c_int = 23;
    let advice = if write { MADV_POPULATE_WRITE } else { MADV_POPULATE_READ };
    let _ = syscall!(madvise(base.cast(), len, advice));
}

/// `FUTEX_WAKE` every waiter on the shared (not process-private) futex word at `word`.
pub fn futex_wake(word: *const u32) {
    // SAFETY: FUTEX_WAKE only uses the address as a key; it never dereferences into our memory
    // beyond the kernel's own checked access. A bad address is EFAULT, not UB.
    unsafe { libc::syscall(libc::SYS_futex, word, libc::FUTEX_WAKE, i32::MAX, 0usize, 0usize, 0u32) };
}

/// `FUTEX_WAIT` on the shared futex word at `word` while it holds `expected`, at most `timeout`.
pub fn futex_wait(word: *const u32, expected: u32, timeout: std::time::Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: the kernel reads the word with its own checked access (EFAULT if unmapped) and the
    // timespec lives for the call. Spurious returns (EINTR, EAGAIN, timeout) are fine: callers re-check.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word,
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            0usize,
            0u32,
        )
    };
}

/// Whether the peer of a connected socket hung up (or the socket failed), without blocking.
/// Readable bytes alone are not a hang-up.
pub fn hung_up(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN | libc::POLLRDHUP, revents: 0 };
    match syscall!(poll(&mut pfd, 1, 0)) {
        Ok(0) => false,
        Ok(_) => pfd.revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR | libc::POLLNVAL) != 0,
        Err(_) => false,
    }
}

/// Fork; the child runs `child` and exits with its status without returning.
///
/// The child of a threaded process may only do async-signal-safe work: `child` must not
/// allocate, lock or print (atomics on shared mappings, `sched_setaffinity` and plain
/// loops are fine). The caller reaps it with [`wait_child`].
pub fn fork_child(child: impl FnOnce() -> i32) -> io::Result<libc::pid_t> {
    let pid = syscall!(fork())?;
    if pid == 0 {
        let code = child();
        // SAFETY: _exit ends the child at once, running no atexit handlers or destructors that
        // belong to the parent's state.
        unsafe { libc::_exit(code) };
    }
    Ok(pid)
}

/// Wait for a child from [`fork_child`]; its exit code (-1 if it did not exit normally).
pub fn wait_child(pid: libc::pid_t) -> io::Result<i32> {
    let mut status = 0;
    loop {
        match syscall!(waitpid(pid, &mut status, 0)) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => {
                r?;
                return Ok(if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 });
            }
        }
    }
}

/// Pin the calling thread to `core` with no allocation (usable in a forked child).
pub fn pin_to_core(core: usize) -> bool {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it for core < CPU_SETSIZE (checked).
    unsafe {
        if core >= libc::CPU_SETSIZE as usize {
            return false;
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Let the calling thread run on `cores` only (none valid: left as it is).
pub fn run_on_cores(cores: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it for core < CPU_SETSIZE (filtered).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let mut any = false;
    for &c in cores.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
        // SAFETY: as above.
        unsafe { libc::CPU_SET(c, &mut set) };
        any = true;
    }
    if !any {
        return Ok(());
    }
    syscall!(sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)).map(|_| ())
}

/// CPUs online (`sysconf(_SC_NPROCESSORS_ONLN)`), at least 1.
pub fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    n.max(1) as usize
}

/// CPU time this process has used, user + system, every thread (`getrusage(RUSAGE_SELF)`), seconds.
pub fn cpu_seconds() -> f64 {
    // SAFETY: rusage is plain data; all zeros is a valid value, filled by the call.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if syscall!(getrusage(libc::RUSAGE_SELF, &mut usage)).is_err() {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Lower the calling thread's scheduling priority to `nice` (Linux: per thread).
pub fn set_thread_nice(nice: i32) -> io::Result<()> {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t;
    syscall!(setpriority(libc::PRIO_PROCESS, tid, nice)).map(|_| ())
}

/// A resource limit's soft value; `None` is unlimited (`RLIM_INFINITY`).
pub fn soft_limit(resource: libc::__rlimit_resource_t) -> io::Result<Option<u64>> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    syscall!(getrlimit(resource, &mut lim))?;
    Ok((lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur))
}

/// `CAP_IPC_LOCK`: locking memory regardless of `RLIMIT_MEMLOCK`.
pub const CAP_IPC_LOCK: u32 = 14;
/// `CAP_SYS_NICE`: real-time scheduling regardless of `RLIMIT_RTPRIO`.
pub const CAP_SYS_NICE: u32 = 23;

/// A field of a `/proc/PID/status` text, trimmed (`"VmLck:"` → `"1024 kB"`).
pub fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|l| l.strip_prefix(key)).map(str::trim)
}

/// The effective capability mask (`CapEff`) of a `/proc/PID/status` text; 0 if absent.
pub fn effective_caps(status: &str) -> u64 {
    status_field(status, "CapEff:").and_then(|h| u64::from_str_radix(h, 16).ok()).unwrap_or(0)
}

/// Whether this process's effective capability set holds capability number `cap`
/// ([`CAP_IPC_LOCK`], [`CAP_SYS_NICE`]); `false` when `/proc/self/status` cannot be read.
pub fn has_capability(cap: u32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    effective_caps(&status) & (1u64 << cap) != 0
}

/// Lock every current and future page of the process in memory (`mlockall`).
pub fn lock_all_memory() -> io::Result<()> {
    syscall!(mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE)).map(drop)
}

/// Run `thread` under `SCHED_FIFO` at `priority` (1..=99).
pub fn set_fifo(thread: libc::pthread_t, priority: i32) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: priority };
    // SAFETY: `thread` is a live thread of this process (callers hold its handle or are it);
    // `param` outlives the call.
    let rc = unsafe { libc::pthread_setschedparam(thread, libc::SCHED_FIFO, &param) };
    // pthread functions return the error number instead of setting errno.
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// The calling thread's pthread handle.
pub fn current_thread() -> libc::pthread_t {
    // SAFETY: pthread_self cannot fail and touches no memory.
    unsafe { libc::pthread_self() }
}

/// Whether `fd` is a listening Unix stream socket (what socket activation must hand over).
pub fn is_listening_unix_stream(fd: RawFd) -> io::Result<bool> {
    let opt = |name: libc::c_int| -> io::Result<libc::c_int> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        syscall!(getsockopt(fd, libc::SOL_SOCKET, name, (&mut v as *mut libc::c_int).cast(), &mut len))?;
        Ok(v)
    };
    Ok(opt(libc::SO_DOMAIN)? == libc::AF_UNIX
        && opt(libc::SO_TYPE)? == libc::SOCK_STREAM
        && opt(libc::SO_ACCEPTCONN)? != 0)
}

/// `SO_BUSY_POLL`: a blocking read or poll of this socket busy-polls the device queue for
/// up to `usec` µs before sleeping. Raising it past the current value needs CAP_NET_ADMIN
/// (EPERM otherwise).
pub fn set_busy_poll(fd: RawFd, usec: u32) -> io::Result<()> {
    let v = usec.min(i32::MAX as u32) as libc::c_int;
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    syscall!(setsockopt(fd, libc::SOL_SOCKET, libc::SO_BUSY_POLL, (&v as *const libc::c_int).cast(), len))
        .map(drop)
}

/// The `SO_BUSY_POLL` value of a socket (µs).
pub fn busy_poll(fd: RawFd) -> io::Result<u32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    syscall!(getsockopt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_BUSY_POLL,
        (&mut v as *mut libc::c_int).cast(),
        &mut len
    ))?;
    Ok(v.max(0) as u32)
}

/// Move the calling thread into the network namespace whose file is `ns` (e.g.
/// `/var/run/netns/NAME`, or a saved `/proc/thread-self/ns/net`): sockets it creates
/// from now on live there. Needs CAP_SYS_ADMIN.
pub fn enter_netns(ns: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(ns)?;
    syscall!(setns(f.as_raw_fd(), libc::CLONE_NEWNET)).map(drop)
}

/// Wait until `fd` is readable (and, with `writable`, writable) or `timeout` passes
/// (`None`: no limit); `Interrupted` counts as a spurious return.
pub fn wait_fd(fd: RawFd, writable: bool, timeout: Option<std::time::Duration>) -> io::Result<()> {
    let events = libc::POLLIN | if writable { libc::POLLOUT } else { 0 };
    let mut pfd = libc::pollfd { fd, events, revents: 0 };
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    match syscall!(ppoll(&mut pfd, 1, ts_ptr, std::ptr::null())) {
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
        r => r.map(drop),
    }
}

/// Parse a kernel CPU list ("0-3,8,10-11") as in `/sys/devices/system/cpu/isolated`.
pub fn parse_cpu_list(text: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
                    cpus.extend(a..=b);
                }
            }
            None => {
                if let Ok(a) = part.trim().parse() {
                    cpus.push(a);
                }
            }
        }
    }
    cpus
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_lists() {
        assert_eq!(super::parse_cpu_list("0-2,5,7-8\n"), vec![0, 1, 2, 5, 7, 8]);
        assert_eq!(super::parse_cpu_list("\n"), Vec::<usize>::new());
    }

    #[test]
    fn peer_cred_of_a_socketpair_is_us() {
        use std::os::fd::AsRawFd;
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let cred = super::peer_cred(a.as_raw_fd()).unwrap();
        // SAFETY: getuid cannot fail.
        assert_eq!(cred.uid, unsafe { libc::getuid() });
        assert_eq!(cred.pid as u32, std::process::id());
    }
}
