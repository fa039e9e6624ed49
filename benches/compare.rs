//! End-to-end comparison of pgmux with PgBouncer (and PostgreSQL directly)
//! under pgbench, all measured in the same run on this machine.
//!
//! `cargo bench --bench compare` (add `-- --quick` for a short run). It
//! starts a throwaway PostgreSQL (max_connections = 40), pgmux and Debian's
//! PgBouncer (installed with apt-get when missing) with the same pool (20,
//! transaction mode, md5 auth), runs pgbench against each in turn (A B A B),
//! and writes `docs/benchmarks.md` (and `docs/benchmarks.png` when
//! matplotlib is available).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pgmux::cluster::{Cluster, ClusterOptions, SUPERUSER_PASSWORD};

const USER: &str = "bench";
const PASSWORD: &str = "bench-secret";
const POOL: u32 = 20;

struct Target {
    name: &'static str,
    port: u16,
    child: Option<Child>,
}

impl Target {
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// CPU time (user + system) of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / clock_ticks()
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Resident memory of a process in KiB (`VmRSS`).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("nothing listening on {port}")
}

fn ensure_pgbouncer() -> anyhow::Result<PathBuf> {
    for p in ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"] {
        if Path::new(p).exists() {
            return Ok(p.into());
        }
    }
    eprintln!("installing pgbouncer with apt-get");
    let ok = Command::new("sh")
        .args([
            "-c",
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer",
        ])
        .status()?
        .success();
    if !ok {
        bail!("could not install pgbouncer");
    }
    Ok("/usr/sbin/pgbouncer".into())
}

fn start_pgmux(dir: &Path, pg_port: u16) -> anyhow::Result<Target> {
    std::fs::create_dir_all(dir)?;
    let port = free_port();
    let cfg = dir.join("pgmux.toml");
    std::fs::write(
        &cfg,
        format!(
            "[pgmux]\nlisten = \"127.0.0.1:{port}\"\npool_mode = \"transaction\"\ndefault_pool_size = {POOL}\n\
             max_client_conn = 20000\nauth_type = \"md5\"\nquery_wait_timeout = \"120s\"\n\
             workers = 1\n\
             [databases.bench]\nport = {pg_port}\n[users.{USER}]\npassword = \"{PASSWORD}\"\n"
        ),
    )?;
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 65536; exec {} run --config {}",
            env!("CARGO_BIN_EXE_pgmux"),
            cfg.display()
        ))
        .env("RUST_LOG", "warn")
        .stderr(std::fs::File::create(dir.join("pgmux.log"))?)
        .spawn()?;
    wait_port(port)?;
    Ok(Target {
        name: "pgmux",
        port,
        child: Some(child),
    })
}

fn start_pgbouncer(dir: &Path, pg_port: u16) -> anyhow::Result<Target> {
    let bin = ensure_pgbouncer()?;
    let port = free_port();
    let d = dir.join("pgbouncer");
    std::fs::create_dir_all(&d)?;
    std::fs::write(
        d.join("userlist.txt"),
        format!("\"{USER}\" \"{PASSWORD}\"\n"),
    )?;
    std::fs::write(
        d.join("pgbouncer.ini"),
        format!(
            "[databases]\nbench = host=127.0.0.1 port={pg_port} dbname=bench\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
             listen_port = {port}\nauth_type = md5\nauth_file = {d}/userlist.txt\npool_mode = transaction\n\
             default_pool_size = {POOL}\nmax_client_conn = 20000\nlogfile = {d}/pgbouncer.log\n\
             unix_socket_dir =\nignore_startup_parameters = extra_float_digits\nquery_wait_timeout = 120\n",
            d = d.display()
        ),
    )?;
    let run_as = if is_root() {
        Command::new("chown")
            .args(["-R", "postgres"])
            .arg(&d)
            .status()?;
        "setpriv --reuid=postgres --regid=postgres --init-groups -- ".to_string()
    } else {
        String::new()
    };
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 65536; exec {run_as}{} {}/pgbouncer.ini",
            bin.display(),
            d.display()
        ))
        .stderr(Stdio::null())
        .spawn()?;
    wait_port(port)?;
    Ok(Target {
        name: "pgbouncer",
        port,
        child: Some(child),
    })
}

#[derive(Clone, Debug, Default)]
struct Run {
    tps: f64,
    latency_ms: f64,
    failed: bool,
    cpu_us_per_tx: f64,
    rss_kib: u64,
    note: String,
}

fn pgbench(bin: &Path, port: u16, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin.join("pgbench"))
        .args(args)
        .arg(format!(
            "host=127.0.0.1 port={port} user={USER} dbname=bench"
        ))
        .env("PGPASSWORD", PASSWORD)
        .output()
        .expect("pgbench runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn field(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
}

fn measure(bin: &Path, t: &Target, args: &[&str]) -> Run {
    let pid = t.pid();
    let cpu0 = pid.map(cpu_seconds).unwrap_or(0.0);
    let (ok, text) = pgbench(bin, t.port, args);
    let cpu1 = pid.map(cpu_seconds).unwrap_or(0.0);
    let tps = field(&text, "tps =").unwrap_or(0.0);
    let processed = text
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|r| r.split('/').next()?.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    let failed_line = text
        .lines()
        .find(|l| l.starts_with("number of failed transactions: "));
    let failed = !ok || failed_line.is_some_and(|l| !l.contains(": 0 ")) || processed == 0.0;
    let note = if failed {
        text.lines()
            .filter(|l| l.contains("error") || l.contains("ERROR"))
            .take(1)
            .collect::<String>()
    } else {
        String::new()
    };
    Run {
        tps,
        latency_ms: field(&text, "latency average =").unwrap_or(0.0),
        failed,
        cpu_us_per_tx: if processed > 0.0 {
            (cpu1 - cpu0) * 1e6 / processed
        } else {
            0.0
        },
        rss_kib: pid.map(rss_kib).unwrap_or(0),
        note,
    }
}

/// Opens `n` logged-in idle connections (md5) and returns them.
fn idle_clients(port: u16, n: usize) -> Vec<TcpStream> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            break;
        };
        let mut pkt = bytes::BytesMut::new();
        pgmux::protocol::encode::startup(&mut pkt, &[("user", USER), ("database", "bench")]);
        if s.write_all(&pkt).is_err() {
            break;
        }
        let mut buf = vec![0u8; 4096];
        let mut got = bytes::BytesMut::new();
        let logged_in = 'login: loop {
            while let Ok(Some(f)) = pgmux::protocol::frame::split_frame(&mut got, 1 << 16) {
                match f.tag() {
                    b'R' if f.body().get(..4) == Some(&[0, 0, 0, 5]) => {
                        let salt: [u8; 4] = f.body()[4..8].try_into().unwrap();
                        let stored = pgmux::auth::md5::stored_hash(USER, PASSWORD);
                        let mut answer =
                            pgmux::auth::md5::salted_answer(&stored, salt).into_bytes();
                        answer.push(0);
                        let mut msg = bytes::BytesMut::new();
                        pgmux::protocol::encode::password(&mut msg, &answer);
                        let _ = s.write_all(&msg);
                    }
                    b'Z' => break 'login true,
                    b'E' => break 'login false,
                    _ => {}
                }
            }
            match s.read(&mut buf) {
                Ok(k) if k > 0 => got.extend_from_slice(&buf[..k]),
                _ => break false,
            }
        };
        if !logged_in {
            break;
        }
        v.push(s);
    }
    v
}

/// Prepares `n` distinct named statements on one pgmux connection and
/// returns (n, RSS before KiB, RSS after KiB).
fn statement_memory(t: &Target, n: usize) -> Option<(usize, u64, u64)> {
    let pid = t.pid()?;
    let mut conns = idle_clients(t.port, 1);
    let mut s = conns.pop()?;
    let before = rss_kib(pid);
    let mut out = bytes::BytesMut::new();
    let mut buf = vec![0u8; 65536];
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        out.clear();
        for i in chunk {
            let q = format!("SELECT {i} AS n, 'statement number {i}'::text AS label");
            pgmux::protocol::encode::parse(
                &mut out,
                format!("s{i}").as_bytes(),
                q.as_bytes(),
                &[0, 0],
            );
        }
        pgmux::protocol::encode::empty(&mut out, b'S');
        s.write_all(&out).ok()?;
        // Read until ReadyForQuery.
        let mut got = bytes::BytesMut::new();
        'batch: loop {
            let k = s.read(&mut buf).ok()?;
            if k == 0 {
                return None;
            }
            got.extend_from_slice(&buf[..k]);
            while let Ok(Some(f)) = pgmux::protocol::frame::split_frame(&mut got, 1 << 20) {
                if f.tag() == b'Z' {
                    break 'batch;
                }
            }
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    Some((n, before, rss_kib(pid)))
}

fn raise_own_fd_limit() {
    let _ = Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            "--nofile=65536:65536",
        ])
        .status();
}

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let secs = if quick { "3" } else { "10" };
    let rounds = if quick { 1 } else { 2 };
    let clients: &[&str] = if quick {
        &["16", "128"]
    } else {
        &["16", "128", "512"]
    };
    let idle_n = if quick { 2000 } else { 10_000 };
    raise_own_fd_limit();
    eprintln!("starting PostgreSQL (max_connections = 40)");
    let cluster = Cluster::start(&ClusterOptions {
        max_connections: 40,
        ..Default::default()
    })?;
    let bin = cluster.bin_dir().to_path_buf();
    let psql = |sql: &str| {
        Command::new(bin.join("psql"))
            .args(["-X", "-q", "-c", sql])
            .arg(cluster.superuser_url("postgres"))
            .env("PGPASSWORD", SUPERUSER_PASSWORD)
            .status()
    };
    psql(&format!("CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'"))?;
    psql(&format!("CREATE DATABASE bench OWNER {USER}"))?;
    let direct = Target {
        name: "postgres",
        port: cluster.port(),
        child: None,
    };
    let (ok, text) = pgbench(&bin, direct.port, &["-i", "-q", "-s", "10"]);
    if !ok {
        bail!("pgbench -i failed: {text}");
    }
    let dir = std::env::temp_dir().join(format!("pgmux-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let pgmux = start_pgmux(&dir, cluster.port()).context("starting pgmux")?;
    let bouncer = start_pgbouncer(&dir, cluster.port()).context("starting pgbouncer")?;
    let mut rows = Vec::new();
    // PGMUX_BENCH_ONLY=select-only, tpcb-like or statements narrows the run.
    let only = std::env::var("PGMUX_BENCH_ONLY").ok();
    // Statement memory on a fresh instance of its own, so nothing else the
    // process did (or freed) blurs the difference.
    let statement_count = if quick { 2000 } else { 10_000 };
    let statements = {
        let fresh = start_pgmux(&dir.join("statements"), cluster.port())?;
        statement_memory(&fresh, statement_count)
    };
    eprintln!("prepared statements (n, RSS KiB before, after): {statements:?}");
    if only.as_deref() == Some("statements") {
        return Ok(());
    }
    let idle_only = only.as_deref() == Some("idle");
    for script in ["select-only", "tpcb-like"]
        .into_iter()
        .filter(|s| !idle_only && only.as_deref().is_none_or(|o| o == *s))
    {
        for mode in ["simple", "extended", "prepared"] {
            for c in clients {
                let args = [
                    "-n", "-b", script, "-M", mode, "-c", c, "-j", "2", "-T", secs,
                ];
                let mut results: Vec<(Run, Run)> = Vec::new();
                for _ in 0..rounds {
                    let a = measure(&bin, &pgmux, &args);
                    let b = measure(&bin, &bouncer, &args);
                    results.push((a, b));
                }
                let direct_run = None;
                eprintln!(
                    "{script} {mode} c={c}: pgmux {:.0} tps, pgbouncer {:.0} tps",
                    results.iter().map(|r| r.0.tps).sum::<f64>() / results.len() as f64,
                    results.iter().map(|r| r.1.tps).sum::<f64>() / results.len() as f64,
                );
                rows.push((script, mode, *c, results, direct_run));
            }
        }
    }
    if idle_only {
        for t in [&pgmux, &bouncer] {
            let pid = t.pid().unwrap_or(0);
            let before = rss_kib(pid);
            let conns = idle_clients(t.port, idle_n);
            std::thread::sleep(Duration::from_millis(500));
            eprintln!(
                "{}: {} idle clients, RSS {before} -> {} KiB",
                t.name,
                conns.len(),
                rss_kib(pid)
            );
        }
        return Ok(());
    }
    // Burst: a new connection per transaction.
    let burst_args = [
        "-n", "-S", "-C", "-M", "simple", "-c", "200", "-j", "2", "-T", secs,
    ];
    let burst = (
        measure(&bin, &pgmux, &burst_args),
        measure(&bin, &bouncer, &burst_args),
    );
    // Idle clients.
    let mut idle = Vec::new();
    for t in [&pgmux, &bouncer] {
        let pid = t.pid().unwrap_or(0);
        let before = rss_kib(pid);
        let conns = idle_clients(t.port, idle_n);
        std::thread::sleep(Duration::from_millis(500));
        let after = rss_kib(pid);
        idle.push((t.name, conns.len(), before, after));
        drop(conns);
        std::thread::sleep(Duration::from_millis(500));
    }
    // PostgreSQL directly, once both poolers are gone and their server
    // connections with them (40 slots would not fit both pools and 16 clients).
    drop(pgmux);
    drop(bouncer);
    std::thread::sleep(Duration::from_secs(2));
    for row in rows.iter_mut().filter(|r| r.2 == "16") {
        let args = [
            "-n", "-b", row.0, "-M", row.1, "-c", "16", "-j", "2", "-T", secs,
        ];
        let d = measure(&bin, &direct, &args);
        eprintln!("{} {} c=16: direct {:.0} tps", row.0, row.1, d.tps);
        row.4 = Some(d);
    }
    let mut report = render(&rows, &burst, &idle, quick);
    if let Some((n, before, after)) = statements {
        let _ = writeln!(
            report,
            "## Memory per prepared statement

One client prepared {n} distinct statements through pgmux \
             (registry entry, client name, and the server's LRU set of at most 256): RSS {:.1} → {:.1} MiB, \
             {:.0} bytes per statement, {:.1} MiB per 10,000.\n",
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            after.saturating_sub(before) as f64 * 1024.0 / n as f64,
            after.saturating_sub(before) as f64 * 10_000.0 / n as f64 / 1024.0
        );
    }
    std::fs::write("docs/benchmarks.md", report)?;
    write_plot_data(&rows, &dir)?;
    eprintln!("wrote docs/benchmarks.md");
    Ok(())
}

type Row<'a> = (&'a str, &'a str, &'a str, Vec<(Run, Run)>, Option<Run>);

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let pgb = Command::new("pgbouncer")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default();
    format!(
        "{cores} cores ({cpu}), PostgreSQL 15, {pgb}, pgmux {}",
        env!("CARGO_PKG_VERSION")
    )
}

fn render(
    rows: &[Row<'_>],
    burst: &(Run, Run),
    idle: &[(&str, usize, u64, u64)],
    quick: bool,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Benchmarks: pgmux against PgBouncer\n");
    let _ = writeln!(
        s,
        "Generated by `cargo bench --bench compare{}` on {}.\n",
        if quick { " -- --quick" } else { "" },
        machine()
    );
    let _ = writeln!(s, "Same PostgreSQL (max_connections 40, pgbench scale 10), same pool (20, transaction mode, md5 auth), pgbench `-j 2`, targets run alternately; the ratio is taken within each round, then averaged. pgmux runs with `workers = 1` (one thread, like PgBouncer: on two cores the proxy shares the CPU with PostgreSQL and pgbench). CPU is the proxy process's user+system time per transaction; RSS is the proxy's resident memory after the run. \"direct\" runs only at 16 clients, after both poolers have stopped (40 slots).\n");
    let _ = writeln!(s, "| script | mode | clients | pgmux tps | PgBouncer tps | ratio | pgmux lat ms | PgBouncer lat ms | pgmux CPU µs/tx | PgBouncer CPU µs/tx | pgmux RSS MiB | PgBouncer RSS MiB | direct tps |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (script, mode, c, results, direct) in rows {
        let n = results.len() as f64;
        let avg = |f: &dyn Fn(&(Run, Run)) -> f64| results.iter().map(f).sum::<f64>() / n;
        let b_failed = results.iter().any(|r| r.1.failed);
        let a_failed = results.iter().any(|r| r.0.failed);
        let ratio = if b_failed {
            "PgBouncer failed".to_string()
        } else {
            format!("{:.2}", avg(&|r| r.0.tps / r.1.tps.max(1.0)))
        };
        let b_tps = if b_failed {
            format!(
                "failed ({})",
                results
                    .iter()
                    .find(|r| r.1.failed)
                    .map(|r| r.1.note.clone())
                    .unwrap_or_default()
            )
        } else {
            format!("{:.0}", avg(&|r| r.1.tps))
        };
        let a_tps = if a_failed {
            "failed".to_string()
        } else {
            format!("{:.0}", avg(&|r| r.0.tps))
        };
        let _ = writeln!(
            s,
            "| {script} | {mode} | {c} | {a_tps} | {b_tps} | {ratio} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            avg(&|r| r.0.latency_ms),
            avg(&|r| r.1.latency_ms),
            avg(&|r| r.0.cpu_us_per_tx),
            avg(&|r| r.1.cpu_us_per_tx),
            avg(&|r| r.0.rss_kib as f64) / 1024.0,
            avg(&|r| r.1.rss_kib as f64) / 1024.0,
            direct.as_ref().map(|d| if d.failed { "failed".into() } else { format!("{:.0}", d.tps) }).unwrap_or_else(|| "–".into())
        );
    }
    let _ = writeln!(
        s,
        "\n## Burst: 200 clients, a new connection per transaction (`pgbench -C -S`)\n"
    );
    let _ = writeln!(
        s,
        "| target | tps | failed | CPU µs/tx |\n|---|---|---|---|"
    );
    for (name, r) in [("pgmux", &burst.0), ("PgBouncer", &burst.1)] {
        let _ = writeln!(
            s,
            "| {name} | {:.0} | {} | {:.1} |",
            r.tps, r.failed, r.cpu_us_per_tx
        );
    }
    let _ = writeln!(
        s,
        "\nRatio pgmux / PgBouncer: {:.2}\n",
        burst.0.tps / burst.1.tps.max(1.0)
    );
    let _ = writeln!(s, "## Idle clients\n\n| target | idle clients | RSS before MiB | RSS after MiB | KiB per client |\n|---|---|---|---|---|");
    for (name, n, before, after) in idle {
        let per = if *n > 0 {
            after.saturating_sub(*before) as f64 / *n as f64
        } else {
            0.0
        };
        let _ = writeln!(
            s,
            "| {name} | {n} | {:.1} | {:.1} | {per:.2} |",
            *before as f64 / 1024.0,
            *after as f64 / 1024.0
        );
    }
    let _ = writeln!(
        s,
        "\n![pgmux/PgBouncer tps ratio per grid point](benchmarks.png)\n"
    );
    s
}

fn write_plot_data(rows: &[Row<'_>], dir: &Path) -> anyhow::Result<()> {
    let mut csv = String::from("label,ratio\n");
    for (script, mode, c, results, _) in rows {
        if results.iter().any(|r| r.1.failed || r.0.failed) {
            continue;
        }
        let ratio = results
            .iter()
            .map(|r| r.0.tps / r.1.tps.max(1.0))
            .sum::<f64>()
            / results.len() as f64;
        let _ = writeln!(
            csv,
            "{} {} c{},{ratio:.3}",
            script.trim_end_matches("-like").trim_end_matches("-only"),
            mode,
            c
        );
    }
    let data = dir.join("ratios.csv");
    std::fs::write(&data, csv)?;
    let script = r##"
import csv, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
rows = list(csv.DictReader(open(sys.argv[1])))
labels = [r["label"] for r in rows]; ratios = [float(r["ratio"]) for r in rows]
fig, ax = plt.subplots(figsize=(10, 4.5))
ax.bar(labels, ratios, color=["#2a7" if r >= 1.25 else "#c84" for r in ratios])
ax.axhline(1.0, color="black", lw=0.8); ax.axhline(1.25, color="gray", ls="--", lw=0.8)
ax.set_ylabel("pgmux tps / PgBouncer tps"); ax.set_title("pgmux vs PgBouncer, same run")
plt.xticks(rotation=60, ha="right", fontsize=8); fig.tight_layout(); fig.savefig(sys.argv[2], dpi=110)
"##;
    let py = dir.join("plot.py");
    std::fs::write(&py, script)?;
    let ok = Command::new("python3")
        .arg(&py)
        .arg(&data)
        .arg("docs/benchmarks.png")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("no chart: pip install matplotlib, then run again");
    }
    Ok(())
}
