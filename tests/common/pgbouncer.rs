//! Debian's PgBouncer, run side by side with pgmux: the reference users
//! know. The test command installs it (apt-get install pgbouncer).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian puts the binary.
pub const BIN: &str = "/usr/sbin/pgbouncer";

/// A running PgBouncer; stopped on drop.
pub struct PgBouncer {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its directory (ini, userlist, log).
    pub dir: PathBuf,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl PgBouncer {
    /// Starts PgBouncer with `ini` (its `[pgbouncer]` section gets
    /// listen_addr, listen_port, pidfile and logfile appended) and
    /// `userlist.txt` contents. PgBouncer refuses to run as root: then it
    /// runs as `postgres`, in a directory that user owns.
    pub fn start(ini: &str, userlist: &str) -> Self {
        Self::start_with_files(ini, userlist, &[])
    }

    /// [`PgBouncer::start`] with more files in its directory (an hba file,
    /// TLS keys), which `{dir}` in `ini` names.
    pub fn start_with_files(ini: &str, userlist: &str, files: &[(&str, &str)]) -> Self {
        let dir = pgmux::cluster::scratch_dir("pgbouncer").unwrap();
        let ini = ini.replace("{dir}", &dir.display().to_string());
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let port = super::free_port();
        let ini = ini.replace(
            "[pgbouncer]",
            &format!(
                "[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\nlogfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\nauth_file = {d}/userlist.txt",
                d = dir.display()
            ),
        );
        std::fs::write(dir.join("pgbouncer.ini"), ini).unwrap();
        std::fs::write(dir.join("userlist.txt"), userlist).unwrap();
        let mut cmd = Command::new("setpriv");
        if is_root() {
            let chown = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(chown.success());
            cmd.args(["--reuid=postgres", "--regid=postgres", "--init-groups"]);
        }
        let child = cmd
            .args(["--pdeathsig=KILL", "--", BIN])
            .arg(dir.join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgbouncer (apt-get install pgbouncer)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let log = std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default();
            assert!(Instant::now() < deadline, "pgbouncer did not start:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port, dir }
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
