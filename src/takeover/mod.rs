//! Handing the listening sockets to a successor: the running process
//! serves `takeover_socket`; `pgmux run --takeover` connects, receives the
//! client and metrics listening sockets (SCM_RIGHTS), starts accepting on
//! them and says so; the old process then stops accepting and drains as on
//! SIGTERM. The sockets never close, so no queued connection is lost and
//! the port never refuses.

pub mod access;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// The byte a successor sends once it accepts on the sockets it received.
const READY: u8 = b'K';

/// A message of one byte (`byte`) with room for `fds` descriptors of
/// control data in `control`, which it points into: both must outlive it.
fn message(
    byte: &mut [u8; 1],
    iov: &mut libc::iovec,
    control: &mut Vec<u8>,
    fds: usize,
) -> libc::msghdr {
    let bytes = (fds * std::mem::size_of::<RawFd>()) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(bytes) } as usize;
    control.resize(space, 0);
    *iov = libc::iovec {
        iov_base: byte.as_mut_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    // SAFETY: a zeroed msghdr is a valid empty message; the pointers set
    // below point into `iov` and `control`, which the caller keeps alive
    // for as long as it uses the message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    msg
}

/// An empty iovec, filled in by [`message`].
fn no_iov() -> libc::iovec {
    libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }
}

/// Sends `fds` with a one-byte count.
fn send_fds(sock: &UnixStream, fds: &[RawFd]) -> io::Result<()> {
    let mut count = [fds.len() as u8];
    let (mut iov, mut control) = (no_iov(), Vec::new());
    let msg = message(&mut count, &mut iov, &mut control, fds.len());
    let bytes = std::mem::size_of_val(fds) as u32;
    // SAFETY: the control buffer is CMSG_SPACE(bytes) long, room for one
    // header and the descriptors; `msg` points into live buffers.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() {
            return Err(io::Error::other("no room for the descriptors"));
        }
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(bytes) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg) as *mut RawFd, fds.len());
        if libc::sendmsg(sock.as_raw_fd(), &msg, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives up to `max` descriptors sent by [`send_fds`].
fn recv_fds(sock: &UnixStream, max: usize) -> io::Result<Vec<OwnedFd>> {
    let mut count = [0u8; 1];
    let (mut iov, mut control) = (no_iov(), Vec::new());
    let mut msg = message(&mut count, &mut iov, &mut control, max);
    let mut out = Vec::new();
    // SAFETY: `msg` points into live buffers; the kernel writes at most
    // msg_controllen bytes of control data, and each descriptor read from
    // it is new to this process and owned by nothing else.
    unsafe {
        if libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) <= 0 {
            return Err(io::Error::other("the running process sent no sockets"));
        }
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg) as *const RawFd;
                let n = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                for i in 0..n {
                    out.push(OwnedFd::from_raw_fd(*data.add(i)));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if out.len() != usize::from(count[0]) {
        return Err(io::Error::other(
            "the running process sent an unexpected number of sockets",
        ));
    }
    Ok(out)
}

/// The running side: serves `path` until a successor takes the sockets;
/// returns once it has said it accepts on them (the caller then drains).
/// Refuses to serve it in a directory others could change (see
/// [`access`]); a peer running as another user than pgmux's or root is
/// sent nothing.
pub async fn offer(path: &Path, fds: Vec<RawFd>) -> io::Result<()> {
    access::check_dir(path)?;
    let listener = access::bind_owner_only(path)?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let std = stream.into_std()?;
        // Second line of defence behind the socket's mode: the kernel's
        // record of who connected.
        match access::peer_cred(&std) {
            Ok((uid, _)) if access::peer_allowed(uid) => {}
            Ok((uid, pid)) => {
                tracing::warn!(uid, pid, path = %path.display(), "takeover_socket: refused a connection from another user");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "takeover_socket: peer credentials unreadable; refused");
                continue;
            }
        }
        let fds = fds.clone();
        let handed = tokio::task::spawn_blocking(move || -> io::Result<bool> {
            std.set_nonblocking(false)?;
            std.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
            send_fds(&std, &fds)?;
            let mut ack = [0u8; 1];
            io::Read::read_exact(&mut &std, &mut ack)?;
            Ok(ack[0] == READY)
        })
        .await
        .map_err(io::Error::other)?;
        match handed {
            Ok(true) => {
                tracing::info!(path = %path.display(), "listening sockets handed to a successor; draining");
                return Ok(());
            }
            Ok(false) | Err(_) => {
                tracing::warn!("a takeover attempt failed; still serving");
            }
        }
    }
}

/// A successor's hold on the running process: the sockets it sent, and
/// the connection to tell it when they are in use.
pub struct Taken {
    /// The listening sockets: the client one, then the metrics one if any.
    pub sockets: Vec<std::net::TcpListener>,
    conn: UnixStream,
}

/// The successor's side: takes the running process's listening sockets.
pub fn take(path: &Path) -> io::Result<Taken> {
    let conn = UnixStream::connect(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "no running pgmux at takeover_socket {}: {e}",
                path.display()
            ),
        )
    })?;
    // Whoever serves the socket hands over the sockets this process will
    // accept clients on: it must be pgmux's user or root.
    let (uid, pid) = access::peer_cred(&conn)?;
    if !access::peer_allowed(uid) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "takeover_socket {} is served by uid {uid} (pid {pid}), not pgmux's user or root",
                path.display()
            ),
        ));
    }
    conn.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let sockets = recv_fds(&conn, 4)?
        .into_iter()
        .map(std::net::TcpListener::from)
        .collect();
    Ok(Taken { sockets, conn })
}

impl Taken {
    /// Tells the old process the sockets are in use: it stops accepting.
    pub fn ready(mut self) -> io::Result<()> {
        io::Write::write_all(&mut self.conn, &[READY])
    }
}
