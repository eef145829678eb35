//! Raw libc calls, each behind the one `syscall!` macro that turns `-1` into
//! `io::Error::last_os_error()`. Private to the crate: the public layer is
//! `transport` and `server`.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;
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
