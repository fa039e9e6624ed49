//! Beyond one process: two pgmux processes sharing a port with
//! SO_REUSEPORT, each replaced in turn under `pgbench -C`, and the one-command
//! takeover of a running process's sockets, both without a failed
//! connection; the health endpoint a load balancer reads.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::Single;
use common::*;
use pgmux::app::Proxy;
use pgmux::cluster::{Cluster, ClusterOptions};
use pgmux::config::Config;

/// A pgmux process; killed on drop.
struct Process(Child);

impl Process {
    /// `pgmux run` (plus `extra` arguments) with this config, through
    /// `wrap` (e.g. `ip netns exec NS`) when given.
    fn start(config: &Path, extra: &[&str], wrap: Option<&Single>) -> Self {
        let bin = env!("CARGO_BIN_EXE_pgmux");
        let mut cmd = match wrap {
            Some(ns) => ns.command(bin),
            None => Command::new(bin),
        };
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Self(cmd.spawn().expect("start pgmux"))
    }

    /// SIGTERM, then waits (bounded) for the process to end.
    fn stop(mut self) -> Duration {
        let t = Instant::now();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        self.wait_exit(Duration::from_secs(30));
        t.elapsed()
    }

    fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes a config serving `name` on `listen` (plus `[pgmux]` lines).
fn write_config(dir: &Path, name: &str, listen: &str, server: &str, extra: &str) -> PathBuf {
    let path = dir.join(format!("pgmux-{}.toml", listen.replace([':', '.'], "_")));
    std::fs::write(
        &path,
        format!(
            r#"
[pgmux]
listen = "{listen}"
default_pool_size = 8
{extra}
[databases.{name}]
{server}
[users.{name}]
password = "{PASSWORD}"
"#
        ),
    )
    .unwrap();
    path
}

/// Waits until `addr` accepts TCP connections.
fn wait_listening(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The failures pgbench reports: failed transactions and aborted clients.
fn pgbench_failures(ok: bool, out: &str) -> String {
    let failed = out
        .lines()
        .find(|l| l.contains("number of failed transactions"))
        .unwrap_or("");
    let aborted = out.lines().filter(|l| l.contains("aborted")).count();
    format!("exit ok: {ok}; {failed}; aborted lines: {aborted}")
}

#[test]
fn reuseport_pair_replaced_in_turn_under_connect_per_transaction() {
    let ns = match Single::create("reuse") {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("skipped: this machine cannot create network namespaces: {e}");
            return;
        }
    };
    // The kernel moves connections queued on a closing listener to the
    // other listeners of its SO_REUSEPORT group (Linux 5.14+).
    // PGMUX_MIGRATE_REQ=0 measures pgmux's own drain alone (and only
    // reports what pgbench saw).
    let migrate = std::env::var("PGMUX_MIGRATE_REQ").unwrap_or_else(|_| "1".into());
    ns.sysctl("net.ipv4.tcp_migrate_req", &migrate);
    let cluster = Cluster::start(&ClusterOptions {
        netns: Some(ns.name.clone()),
        ..Default::default()
    })
    .expect("PostgreSQL in the namespace");
    let name = "t_reuseport";
    let rt = common::netns::runtime_in(&ns.name);
    rt.block_on(create_db(&cluster, name));
    let dir = pgmux::cluster::scratch_dir("reuseport").unwrap();
    let cfg = write_config(
        &dir,
        name,
        "127.0.0.1:6432",
        &format!("host = \"127.0.0.1\"\nport = {}", cluster.port()),
        "so_reuseport = true\nshutdown_timeout = \"10s\"",
    );
    ns.enter();
    let mut pair = [
        Process::start(&cfg, &[], Some(&ns)),
        Process::start(&cfg, &[], Some(&ns)),
    ];
    wait_listening("127.0.0.1:6432");
    std::thread::sleep(Duration::from_millis(300));
    let script = dir.join("select.sql");
    std::fs::write(&script, "SELECT 1;\n").unwrap();
    let bench = {
        let mut cmd = ns.command(cluster.bin_dir().join("pgbench"));
        cmd.args(["-n", "-C", "-c", "40", "-j", "2", "-T", "14", "-f"])
            .arg(&script)
            .args(["-h", "127.0.0.1", "-p", "6432", "-U", name, name])
            .env("PGPASSWORD", PASSWORD);
        std::thread::spawn(move || run(&mut cmd))
    };
    // Four replacements while the load runs: each process in turn gets
    // SIGTERM and a successor takes its place.
    let mut drains = Vec::new();
    for round in 0..4 {
        std::thread::sleep(Duration::from_millis(2500));
        let i = round % 2;
        let old = std::mem::replace(&mut pair[i], Process::start(&cfg, &[], Some(&ns)));
        std::thread::sleep(Duration::from_millis(300));
        drains.push(old.stop());
    }
    let (ok, out) = bench.join().unwrap();
    let verdict = pgbench_failures(ok, &out);
    eprintln!("reuseport (tcp_migrate_req={migrate}): drains took {drains:?}; {verdict}");
    if migrate == "0" {
        return;
    }
    assert!(ok, "pgbench: {out}");
    assert!(
        out.contains("number of failed transactions: 0 "),
        "no failed transaction: {out}"
    );
    assert!(!out.contains("aborted"), "no client aborted: {out}");
}

#[test]
fn takeover_under_connect_per_transaction() {
    let c = cluster();
    let name = "t_takeover";
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(create_db(c, name));
    let dir = pgmux::cluster::scratch_dir("takeover").unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let metrics = free_port();
    let cfg = write_config(
        &dir,
        name,
        &listen,
        &format!("port = {}", c.port()),
        &format!(
            "takeover_socket = \"{}\"\nshutdown_timeout = \"10s\"\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"",
            dir.join("takeover.sock").display()
        ),
    );
    let mut old = Process::start(&cfg, &[], None);
    wait_listening(&listen);
    let script = dir.join("select.sql");
    std::fs::write(&script, "SELECT 1;\n").unwrap();
    let url = format!("host=127.0.0.1 port={port} user={name} dbname={name}");
    let bench = {
        let script = script.clone();
        std::thread::spawn(move || {
            pgbench(
                &[
                    "-n",
                    "-C",
                    "-c",
                    "40",
                    "-j",
                    "2",
                    "-T",
                    "8",
                    "-f",
                    script.to_str().unwrap(),
                ],
                &url,
            )
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    let started = Instant::now();
    let new = Process::start(&cfg, &["--takeover"], None);
    assert!(
        old.wait_exit(Duration::from_secs(20)),
        "the old process drains and exits after the takeover"
    );
    let handover = started.elapsed();
    let (ok, out) = bench.join().unwrap();
    eprintln!(
        "takeover: old process gone {handover:?} after the new one started; {}",
        pgbench_failures(ok, &out)
    );
    assert!(ok, "pgbench: {out}");
    assert!(out.contains("number of failed transactions: 0 "), "{out}");
    assert!(!out.contains("aborted"), "no client aborted: {out}");
    // The new process serves, and says it is ready.
    let (status, _) = rt.block_on(http_get(([127, 0, 0, 1], metrics).into(), "/health/ready"));
    assert!(status.contains("200"), "{status}");
    drop(new);
}

/// Connects to a Unix socket as `nobody` and tries to receive descriptors:
/// `EACCES` when it may not connect, `FDS n` with what it got otherwise;
/// `None` when there is no way to run as another user here.
fn take_as_nobody(sock: &Path) -> Option<String> {
    const SCRIPT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("EACCES"); sys.exit(0)
s.settimeout(10)
msg, anc, flags, addr = s.recvmsg(16, socket.CMSG_SPACE(16 * 4))
fds = sum(len(d) // 4 for (l, t, d) in anc if l == socket.SOL_SOCKET and t == socket.SCM_RIGHTS)
print("FDS", fds)
"#;
    if pgmux::takeover::access::euid() != 0 {
        return None;
    }
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .args(["/usr/bin/env", "python3", "-c", SCRIPT])
        .arg(sock)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .output()
        .ok()?;
    // 127: env found no python3.
    if out.status.code() == Some(127) {
        return None;
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn takeover_socket_is_owner_only_and_refuses_other_users() {
    use std::os::unix::fs::PermissionsExt;
    let dir = pgmux::cluster::scratch_dir("takeover_peer").unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let sock = dir.join("takeover.sock");
    // No server is needed: nothing here logs in.
    let cfg = write_config(
        &dir,
        "t_takeover_peer",
        &listen,
        &format!("port = {}", free_port()),
        &format!(
            "takeover_socket = \"{}\"\nshutdown_timeout = \"1s\"",
            sock.display()
        ),
    );
    let mut old = Process::start(&cfg, &[], None);
    wait_listening(&listen);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "no takeover socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "takeover_socket mode {mode:o}");
    match take_as_nobody(&sock) {
        Some(first) => {
            assert_eq!(first, "EACCES", "another user may not connect");
            // The second line of defence: with the mode opened up, the
            // peer's credentials still keep the sockets from it.
            std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
            assert_eq!(take_as_nobody(&sock).as_deref(), Some("FDS 0"));
        }
        None => eprintln!("not root, or no setpriv/python3: the other-user part is skipped"),
    }
    assert!(matches!(old.0.try_wait(), Ok(None)), "pgmux still runs");
    std::net::TcpStream::connect(&listen).expect("pgmux still serves");
    // pgmux's own user still takes over.
    let _new = Process::start(&cfg, &["--takeover"], None);
    assert!(
        old.wait_exit(Duration::from_secs(20)),
        "a successor of pgmux's own user takes over"
    );
    wait_listening(&listen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoint_says_live_and_ready_until_draining() {
    let name = "t_health";
    create_db(cluster(), name).await;
    let mut cfg: Config = config(cluster(), name, 2, "");
    cfg.metrics = Some(pgmux::config::MetricsSection {
        listen: "127.0.0.1:0".into(),
    });
    let p = Proxy::start(cfg).await.unwrap();
    let m = p.metrics_addr().unwrap();
    assert!(http_get(m, "/health/live").await.0.contains("200"));
    assert!(
        http_get(m, "/health/ready").await.0.contains("200"),
        "ready: the server is reachable"
    );
    p.context()
        .advance_shutdown(pgmux::shutdown::Phase::Draining);
    assert!(http_get(m, "/health/ready").await.0.contains("503"));
    assert!(http_get(m, "/health/live").await.0.contains("200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_to_the_other_instance_reaches_the_query() {
    let name = "t_peers";
    create_db(cluster(), name).await;
    let (pa, pb) = (free_port(), free_port());
    let peers = format!(
        "[peers.1]\nhost = \"127.0.0.1\"\nport = {pa}\n[peers.2]\nhost = \"127.0.0.1\"\nport = {pb}\n"
    );
    let instance = |id: u16, port: u16| {
        let text = format!(
            "[pgmux]\nlisten = \"127.0.0.1:{port}\"\npeer_id = {id}\n[databases.{name}]\nport = {}\n[users.{name}]\npassword = \"{PASSWORD}\"\n{peers}",
            cluster().port()
        );
        Config::parse(&text).expect("config")
    };
    let a = Proxy::start(instance(1, pa)).await.unwrap();
    let b = Proxy::start(instance(2, pb)).await.unwrap();
    let mut client = raw::Raw::connect(pa, name, PASSWORD, name).await;
    let (pid, secret) = client.key;
    assert_eq!(pid >> 16, 1, "the key carries its instance's peer id");
    client.query("SELECT pg_sleep(20)").flush().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The cancel reaches the other instance, as a load balancer may send it.
    pgmux::cancel::send_cancel(("127.0.0.1", pb), pid, secret).await;
    let replies = tokio::time::timeout(Duration::from_secs(5), client.until_ready())
        .await
        .expect("the query ends soon after the cancel");
    assert_eq!(raw::error_code(&replies).as_deref(), Some("57014"));
    // A wrong secret cancels nothing, whichever instance gets it.
    client.query("SELECT pg_sleep(0.5)").flush().await;
    pgmux::cancel::send_cancel(("127.0.0.1", pb), pid, secret ^ 1).await;
    let replies = client.until_ready().await;
    assert_eq!(raw::error_code(&replies), None);
    drop((a, b));
}
