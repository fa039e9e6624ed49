//! Two network namespaces joined by two veth pairs, for partition tests:
//! pgmux and its clients in `a`, PostgreSQL in `b`. Path 1 is
//! 10.213.0.1 (a) - 10.213.0.2 (b), path 2 is 10.214.0.1 - 10.214.0.2.
//! Every address lives inside these namespaces; they are deleted on drop.

use std::process::Command;

/// The server's address on path 1 (the one a test cuts).
pub const CUT_ADDR: &str = "10.213.0.2";
/// The server's address on path 2 (left alone).
pub const HEALTHY_ADDR: &str = "10.214.0.2";

/// The namespaces of one test.
pub struct Netns {
    /// pgmux and clients.
    pub a: String,
    /// PostgreSQL.
    pub b: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Removes namespaces left by test processes that are gone.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix("pgmux-") else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if !pid.is_empty() && !std::path::Path::new("/proc").join(pid).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

impl Netns {
    /// Creates the namespaces and links, or says why it cannot.
    pub fn create(tag: &str) -> Result<Self, String> {
        remove_stale();
        let pid = std::process::id();
        let ns = Self {
            a: format!("pgmux-{pid}-{tag}-a"),
            b: format!("pgmux-{pid}-{tag}-b"),
        };
        let (a, b) = (ns.a.as_str(), ns.b.as_str());
        ip(&["netns", "add", a])?;
        ip(&["netns", "add", b])?;
        for (n, net) in [("1", "10.213.0"), ("2", "10.214.0")] {
            let (da, db) = (format!("va{n}"), format!("vb{n}"));
            ip(&[
                "-n", a, "link", "add", &da, "type", "veth", "peer", "name", &db, "netns", b,
            ])?;
            ip(&["-n", a, "addr", "add", &format!("{net}.1/24"), "dev", &da])?;
            ip(&["-n", b, "addr", "add", &format!("{net}.2/24"), "dev", &db])?;
            ip(&["-n", a, "link", "set", &da, "up"])?;
            ip(&["-n", b, "link", "set", &db, "up"])?;
        }
        ip(&["-n", a, "link", "set", "lo", "up"])?;
        ip(&["-n", b, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Moves the calling thread into namespace `a`.
    pub fn enter_a(&self) {
        enter(&self.a);
    }

    /// A runtime whose threads all live in namespace `a`.
    pub fn runtime_a(&self) -> tokio::runtime::Runtime {
        runtime_in(&self.a)
    }

    /// Cuts path 1 on the server's side (packets to it vanish: no reset,
    /// no error), or restores it.
    pub fn set_path1(&self, up: bool) {
        ip(&[
            "-n",
            &self.b,
            "link",
            "set",
            "vb1",
            if up { "up" } else { "down" },
        ])
        .expect("set link");
    }
}

/// A runtime whose threads all live in a named network namespace.
pub fn runtime_in(name: &str) -> tokio::runtime::Runtime {
    let name = name.to_owned();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || enter(&name))
        .build()
        .expect("runtime")
}

/// One network namespace with only its loopback, deleted on drop.
pub struct Single {
    /// Its name (for `ip netns exec`).
    pub name: String,
}

impl Single {
    /// Creates it, or says why it cannot.
    pub fn create(tag: &str) -> Result<Self, String> {
        remove_stale();
        let name = format!("pgmux-{}-{tag}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Sets a sysctl inside the namespace (`net.*` keys are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) {
        let ok = Command::new("ip")
            .args(["netns", "exec", &self.name, "sysctl", "-q", "-w"])
            .arg(format!("{key}={value}"))
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "sysctl {key}={value}");
    }

    /// Moves the calling thread into it.
    pub fn enter(&self) {
        enter(&self.name);
    }

    /// A command run inside it.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for Single {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Moves the calling thread into a named network namespace.
fn enter(name: &str) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/run/netns/{name}")).expect("open netns");
    // SAFETY: setns on a valid namespace fd changes only this thread's
    // network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
    }
}
