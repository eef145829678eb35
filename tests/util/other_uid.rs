//! Running the `tickinfer` binary as another uid, from wherever the checkout lives.
//!
//! The other uid must reach what it runs: a checkout under a directory only its owner
//! can enter (mode 0700, as `mktemp -d` or `/root` in a container) hides the cargo-built
//! binary from it. So the binary is copied once into a temporary directory that every
//! uid can enter, and the copy is checked to run as that uid before any test relies on it.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The uid tests act as: the conventional `nobody`.
pub const NOBODY: u32 = 65534;

/// The copy of the binary (its directory kept for the whole test process), or why there is none.
static COPY: OnceLock<Result<(tempfile::TempDir, PathBuf), String>> = OnceLock::new();

/// A copy of the `tickinfer` binary that `uid` can run, or why the test must skip:
/// not root (cannot switch uids), or `uid` cannot reach the temporary directory.
pub fn binary_for(uid: u32) -> Result<PathBuf, String> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the uid checks need root (to run a client as another uid)".into());
    }
    let copy = COPY.get_or_init(|| {
        let dir = tempfile::Builder::new().prefix("tickinfer-uid-").tempdir().map_err(|e| e.to_string())?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        let bin = dir.path().join("tickinfer");
        std::fs::copy(env!("CARGO_BIN_EXE_tickinfer"), &bin).map_err(|e| e.to_string())?;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
        Ok((dir, bin))
    });
    let bin = copy.as_ref().map_err(|e| format!("cannot copy the binary for another uid: {e}"))?.1.clone();
    let out = as_uid(Command::new(&bin).arg("--version"), uid)
        .map_err(|e| format!("uid {uid} cannot run {}: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "uid {uid} cannot run {} (the temporary directory is not reachable for it): {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(bin)
}

/// Whether `uid` can enter `dir` (every directory on its path searchable for it).
pub fn can_enter(dir: &Path, uid: u32) -> bool {
    as_uid(Command::new("test").arg("-x").arg(dir), uid).is_ok_and(|o| o.status.success())
}

/// Run `cmd` as `uid` (its group the same number), collecting its output.
pub fn as_uid(cmd: &mut Command, uid: u32) -> std::io::Result<Output> {
    cmd.uid(uid).gid(uid).output()
}
