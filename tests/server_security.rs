//! Socket-file safety and peer credentials: mode 0600 by default, configurable
//! mode; SO_PEERCRED allowlist; never following a symlink; refusing a live
//! server's path; replacing a stale socket; never replacing a non-socket.
mod util;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use tickinfer::wire::Status;
use util::server::{Client, Server};

fn mode_of(path: &std::path::Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn socket_mode_default_and_configured() {
    let server = Server::start(&[]);
    assert_eq!(mode_of(&server.socket), 0o600);
    assert_eq!(mode_of(&tickinfer::control::control_path(&server.socket)), 0o600);
    let quota_hint = "consider --max-connections-per-uid";
    assert!(!server.log().contains(quota_hint), "owner-only: no quota hint\n{}", server.log());
    let server = Server::start(&["--socket-mode", "660"]);
    assert_eq!(mode_of(&server.socket), 0o660);
    // Others may connect now, and any one uid could hold every slot: the log says so.
    assert!(server.log().contains(quota_hint), "{}", server.log());
    let server = Server::start(&["--socket-mode", "660", "--max-connections-per-uid", "8"]);
    assert!(!server.log().contains(quota_hint), "{}", server.log());
    // A group we belong to (our own primary group) is applied to the socket file.
    // SAFETY: getgid cannot fail.
    let gid = unsafe { libc::getgid() };
    let server = Server::start(&["--socket-mode", "660", "--socket-group", &gid.to_string()]);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::symlink_metadata(&server.socket).unwrap().gid(), gid);
    assert_eq!(mode_of(&server.socket), 0o660);
}

#[test]
fn peer_credential_allowlist() {
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let other = (uid + 4242).to_string();
    let server = Server::start(&["--allow-uid", &other]);
    let err = Client::connect(&server.socket).err().expect("a uid not on the list is refused");
    assert!(err.to_string().contains(&format!("status {}", Status::PermissionDenied.code())), "{err}");
    assert!(server.log().contains("refusing connection"), "{}", server.log());

    let server = Server::start(&["--allow-uid", &other, "--allow-gid", &gid.to_string()]);
    Client::connect(&server.socket).expect("admitted by gid");
    let server = Server::start(&["--allow-uid", &uid.to_string()]);
    Client::connect(&server.socket).expect("admitted by uid");
}

fn refuses_to_start(server: &mut Server, needle: &str) {
    let status = server.wait(Duration::from_secs(30));
    assert!(!status.success(), "server started:\n{}", server.log());
    assert!(server.log().contains(needle), "`{needle}` not in:\n{}", server.log());
}

#[test]
fn never_follows_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target-file");
    std::fs::write(&target, "keep me").unwrap();
    let socket = dir.path().join("tickinfer.sock");
    std::os::unix::fs::symlink(&target, &socket).unwrap();
    let mut server = Server::spawn_at(dir, socket, &[]);
    refuses_to_start(&mut server, "symbolic link");
    assert_eq!(std::fs::read_to_string(server.dir.path().join("target-file")).unwrap(), "keep me");
}

#[test]
fn refuses_a_live_servers_path_and_a_regular_file() {
    let live = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut second = Server::spawn_at(dir, live.socket.clone(), &[]);
    refuses_to_start(&mut second, "already listening");
    Client::connect(&live.socket).expect("the live server is untouched");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tickinfer.sock");
    std::fs::write(&path, "not a socket").unwrap();
    let mut server = Server::spawn_at(dir, path.clone(), &[]);
    refuses_to_start(&mut server, "not a socket");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
}

#[test]
fn replaces_a_stale_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tickinfer.sock");
    // A socket file nobody listens on: what a crashed server leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let server = Server::spawn_at(dir, path, &[]);
    server.wait_ready();
    assert!(server.log().contains("replacing stale socket"), "{}", server.log());
    Client::connect(&server.socket).unwrap();
}
