//! Who may reach `takeover_socket`: whoever connects to it is handed the
//! listening sockets, so it is created owner-only, in a directory no other
//! user can change, and each peer's credentials are checked as well.
//!
//! The directory rule: the socket's directory must exist, be owned by
//! pgmux's effective user or root, and be writable by no one else unless
//! it is sticky (as `/tmp` is: others may add files there but not remove
//! or rename pgmux's). Otherwise another user could put their own socket
//! at the path, or move pgmux's away; pgmux then refuses to serve the
//! takeover socket at all.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// pgmux's effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether a peer running as `uid` may take the sockets: pgmux's own
/// user, or root (which could take them anyway).
pub fn peer_allowed(uid: u32) -> bool {
    uid == euid() || uid == 0
}

/// The user id and process id of the other end of a Unix socket, as the
/// kernel recorded them when it connected (SO_PEERCRED).
pub fn peer_cred(sock: &impl AsRawFd) -> io::Result<(u32, i32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a ucred and `len` its size, as SO_PEERCRED needs;
    // the kernel writes at most `len` bytes into it.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((cred.uid, cred.pid))
}

/// The directory rule (see the module's doc) for a directory owned by
/// `owner` with `mode`, when pgmux runs as `euid`.
fn dir_rule(owner: u32, mode: u32, euid: u32) -> Result<(), String> {
    if owner != euid && owner != 0 {
        return Err(format!(
            "is owned by uid {owner}, neither pgmux's user ({euid}) nor root"
        ));
    }
    let sticky = mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky {
        return Err(format!(
            "is writable by group or others (mode {:04o}) and not sticky",
            mode & 0o7777
        ));
    }
    Ok(())
}

/// The directory `path` is created in.
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Checks the directory `path` will be created in against the rule.
pub fn check_dir(path: &Path) -> io::Result<()> {
    let dir = parent_of(path);
    let refuse = |why: String| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "takeover_socket {}: directory {} {why}; not serving the takeover socket",
                path.display(),
                dir.display()
            ),
        )
    };
    let meta = std::fs::metadata(dir).map_err(|e| refuse(format!("cannot be read: {e}")))?;
    if !meta.is_dir() {
        return Err(refuse("is not a directory".into()));
    }
    dir_rule(meta.uid(), meta.mode(), euid()).map_err(refuse)
}

/// Creates the listening socket at `path`, mode 0600 from the start: it
/// is bound inside a fresh directory only pgmux's user can enter, made
/// owner-only there, and only then renamed into place, so it is never
/// reachable with a looser mode. Changing the umask instead would affect
/// every thread of the process. A socket left at `path` by an earlier run
/// is replaced; anything else there is not.
pub fn bind_owner_only(path: &Path) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "takeover_socket {} exists and is not a socket; not replacing it",
                    path.display()
                ),
            ));
        }
        _ => {}
    }
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("takeover_socket {} names no file", path.display()),
        )
    })?;
    let private: PathBuf = parent_of(path).join(format!(
        ".{}.{}.new",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let bound = bind_inside(&private, path);
    // The private directory is empty once the socket has moved out (or
    // binding failed); a failure to remove it loses nothing.
    let _ = std::fs::remove_file(private.join("s"));
    let _ = std::fs::remove_dir(&private);
    bound
}

/// Binds in `private`, sets the mode, moves the socket to `path`.
fn bind_inside(private: &Path, path: &Path) -> io::Result<UnixListener> {
    let inner = private.join("s");
    let listener = UnixListener::bind(&inner)?;
    std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&inner, path)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_rule() {
        let me = 1000;
        assert!(dir_rule(me, 0o40700, me).is_ok());
        assert!(dir_rule(me, 0o40755, me).is_ok());
        assert!(dir_rule(0, 0o40755, me).is_ok(), "root's directory");
        assert!(dir_rule(0, 0o41777, me).is_ok(), "sticky, as /tmp");
        assert!(dir_rule(me, 0o40775, me).is_err(), "group-writable");
        assert!(dir_rule(me, 0o40777, me).is_err(), "world-writable");
        assert!(dir_rule(1001, 0o40700, me).is_err(), "another user's");
        assert!(
            dir_rule(1001, 0o41777, me).is_err(),
            "another user's, sticky"
        );
    }

    #[test]
    fn socket_is_owner_only_and_replaces_only_a_socket() {
        let dir =
            std::env::temp_dir().join(format!("pgmux-takeover-access-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        let path = dir.join("t.sock");
        let first = bind_owner_only(&path).expect("bind");
        let mode = std::fs::metadata(&path)
            .expect("the socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(first);
        // A socket left behind by an earlier run is replaced.
        let _again = bind_owner_only(&path).expect("bind over an old socket");
        let file = dir.join("not-a-socket");
        std::fs::write(&file, "x").expect("write");
        assert!(bind_owner_only(&file).is_err());
        assert_eq!(std::fs::read(&file).expect("kept"), b"x");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
