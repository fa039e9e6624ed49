//! A throwaway PostgreSQL cluster for the demo, the tests and the
//! benchmarks: `initdb` into a temporary directory, a free port on
//! 127.0.0.1, SCRAM authentication, stopped when dropped.
//!
//! PostgreSQL refuses to run as root, so when pgmux runs as root the server
//! runs as the `postgres` user in a directory that user owns. The server is
//! started with a parent-death signal from a thread that never exits, so it
//! goes away with the process even when no destructor runs (test binaries).
//! Every directory it (or a test) makes lives under one per-process
//! [`scratch_dir`] root, which a small watcher process removes once this
//! process has exited, after a panic or a kill too.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// The superuser created by `initdb`.
pub const SUPERUSER: &str = "postgres";
/// Its password (the cluster listens on loopback only).
pub const SUPERUSER_PASSWORD: &str = "pgmux-cluster-superuser";

/// Settings of a throwaway cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// `max_connections`.
    pub max_connections: u32,
    /// Extra `postgresql.conf` lines.
    pub extra_conf: Vec<String>,
    /// Files written into the data directory (name, contents), readable
    /// only by the server (certificates and keys for `ssl = on`).
    pub data_files: Vec<(String, String)>,
    /// Replaces `pg_hba.conf` (e.g. `hostssl` lines only).
    pub hba: Option<String>,
    /// The port (default: a free one on 127.0.0.1); two clusters on
    /// different addresses may share one.
    pub port: Option<u16>,
    /// Runs the server inside this network namespace (`ip netns exec`);
    /// set `listen_addresses` in `extra_conf` to addresses it has. The
    /// harness reaches it through its Unix socket.
    pub netns: Option<String>,
    /// The server binaries (`initdb`, `pg_ctl`, `postgres`): another
    /// PostgreSQL version's (default: [`find_bin_dir`]).
    pub bin_dir: Option<PathBuf>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            max_connections: 100,
            extra_conf: Vec::new(),
            data_files: Vec::new(),
            hba: None,
            port: None,
            netns: None,
            bin_dir: None,
        }
    }
}

/// A running throwaway PostgreSQL.
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    /// Client programs (`pg_isready`, `psql`, `pgbench`): the installed
    /// PostgreSQL's, which talk to every version (a server fetched for
    /// another version may come without them).
    tools: PathBuf,
    port: u16,
    child: Mutex<Option<Child>>,
    run_as: Option<String>,
    netns: Option<String>,
}

/// Finds the PostgreSQL server binaries: `$PG_BIN`, the newest
/// `/usr/lib/postgresql/*/bin`, or `initdb` on `PATH`.
pub fn find_bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("PG_BIN") {
        return Ok(PathBuf::from(p));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    if let Some(dir) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|d| d.join("initdb").exists())
    {
        return Ok(dir);
    }
    bail!(
        "PostgreSQL server binaries not found: install them (Debian: apt-get install postgresql) \
         or point PG_BIN at the directory holding initdb and postgres"
    )
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn id_of(user: &str, flag: &str) -> anyhow::Result<u32> {
    let out = Command::new("id").arg(flag).arg(user).output()?;
    if !out.status.success() {
        bail!("running as root needs a '{user}' user to run PostgreSQL (apt-get install postgresql creates it)");
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Spawns children from one thread that lives as long as the process, so
/// that their parent-death signal fires only when the process ends.
fn spawn_detached(cmd: Command) -> anyhow::Result<Child> {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("pg-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // Keep the thread (the children's parent) alive for good.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn thread");
        Mutex::new(tx)
    });
    let (rtx, rrx) = mpsc::channel();
    tx.lock()
        .map_err(|_| anyhow::anyhow!("spawner poisoned"))?
        .send((cmd, rtx))?;
    Ok(rrx.recv()??)
}

/// Removes what the watcher could not: roots of processes that are gone
/// (a machine restarted before the watcher ran, say).
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("pgmux-")) else {
            continue;
        };
        if pid.bytes().all(|b| b.is_ascii_digit()) && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Waits for the process (`$1`) to exit, then for the clusters under the
/// root (`$2`) to finish shutting down (bounded), then removes the root.
const WATCHER: &str = r#"while kill -0 "$1" 2>/dev/null; do sleep 0.5; done
i=0
while [ $i -lt 60 ] && ls "$2"/*/data/postmaster.pid >/dev/null 2>&1; do sleep 0.5; i=$((i+1)); done
rm -rf "$2""#;

/// This process's scratch root, created (with its watcher) on first use.
fn scratch_root() -> anyhow::Result<&'static Path> {
    static ROOT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let root = ROOT.get_or_init(|| {
        remove_stale_dirs();
        let root = std::env::temp_dir().join(format!("pgmux-{}", std::process::id()));
        std::fs::create_dir_all(&root).map_err(|e| format!("creating {root:?}: {e}"))?;
        Command::new("setsid")
            .args(["sh", "-c", WATCHER, "pgmux-scratch-watcher"])
            .arg(std::process::id().to_string())
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting the scratch watcher: {e}"))?;
        Ok(root)
    });
    root.as_deref().map_err(|e| anyhow::anyhow!("{e}"))
}

/// A new directory `name` (made unique) under this process's scratch root,
/// removed with the root once the process has exited.
pub fn scratch_dir(name: &str) -> anyhow::Result<PathBuf> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = scratch_root()?.join(format!("{name}-{n}"));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

impl Cluster {
    /// Initializes and starts a new cluster.
    pub fn start(opts: &ClusterOptions) -> anyhow::Result<Self> {
        let bin = match &opts.bin_dir {
            Some(b) => b.clone(),
            None => find_bin_dir()?,
        };
        let run_as = is_root().then(|| SUPERUSER.to_string());
        let dir = scratch_dir("pg")?;
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, SUPERUSER_PASSWORD)?;
        if let Some(u) = &run_as {
            let (uid, gid) = (id_of(u, "-u")?, id_of(u, "-g")?);
            for p in [&dir, &pwfile] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid))?;
            }
        }
        let data = dir.join("data");
        let mut initdb = Self::command(&run_as, &bin.join("initdb"));
        initdb.args(["-D"]).arg(&data).args([
            "-U",
            SUPERUSER,
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        initdb.arg(format!("--pwfile={}", pwfile.display()));
        let out = initdb.output().context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut conf = vec![
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("max_connections = {}", opts.max_connections),
            format!("unix_socket_directories = '{}'", dir.display()),
            "fsync = off".into(),
            "synchronous_commit = off".into(),
            "full_page_writes = off".into(),
            "shared_buffers = 32MB".into(),
            "log_min_messages = fatal".into(),
        ];
        conf.extend(opts.extra_conf.iter().cloned());
        let mut files = opts.data_files.clone();
        if let Some(hba) = &opts.hba {
            files.push(("pg_hba.conf".into(), hba.clone()));
        }
        for (name, contents) in &files {
            let path = data.join(name);
            std::fs::write(&path, contents)?;
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            if run_as.is_some() {
                let (uid, gid) = (id_of(SUPERUSER, "-u")?, id_of(SUPERUSER, "-g")?);
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
            }
        }
        let conf_path = data.join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&conf_path).unwrap_or_default();
        text.push_str(&conf.join("\n"));
        text.push('\n');
        std::fs::write(&conf_path, text)?;
        let tools = find_bin_dir().unwrap_or_else(|_| bin.clone());
        let cluster = Self {
            dir,
            bin,
            tools,
            port: match opts.port {
                Some(p) => p,
                None => free_port()?,
            },
            child: Mutex::new(None),
            run_as,
            netns: opts.netns.clone(),
        };
        cluster.launch()?;
        Ok(cluster)
    }

    /// A streaming standby of `primary` (`pg_basebackup -R -X stream -c
    /// fast` over the primary's Unix socket), started on its own port.
    pub fn standby_of(primary: &Cluster) -> anyhow::Result<Self> {
        let dir = scratch_dir("pg")?;
        if let Some(u) = &primary.run_as {
            std::os::unix::fs::chown(&dir, Some(id_of(u, "-u")?), Some(id_of(u, "-g")?))?;
        }
        let data = dir.join("data");
        let mut backup = Self::command(&primary.run_as, &primary.tools.join("pg_basebackup"));
        backup
            .arg("-h")
            .arg(&primary.dir)
            .args(["-p", &primary.port.to_string(), "-U", SUPERUSER, "-D"])
            .arg(&data)
            .args(["-R", "-X", "stream", "-c", "fast"])
            .env("PGPASSWORD", SUPERUSER_PASSWORD);
        let out = backup.output().context("running pg_basebackup")?;
        if !out.status.success() {
            bail!(
                "pg_basebackup failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // The copy names the primary's socket directory: later lines win.
        let conf_path = data.join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&conf_path)?;
        text.push_str(&format!("unix_socket_directories = '{}'\n", dir.display()));
        std::fs::write(&conf_path, text)?;
        let cluster = Self {
            dir,
            bin: primary.bin.clone(),
            tools: primary.tools.clone(),
            port: free_port()?,
            child: Mutex::new(None),
            run_as: primary.run_as.clone(),
            netns: primary.netns.clone(),
        };
        cluster.launch()?;
        Ok(cluster)
    }

    /// Runs `pg_ctl` on this cluster's data directory (as the server's user).
    fn pg_ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut cmd = Self::command(&self.run_as, &self.bin.join("pg_ctl"));
        cmd.arg("-D").arg(self.data_dir()).args(args);
        let out = cmd.output().context("running pg_ctl")?;
        if !out.status.success() {
            bail!(
                "pg_ctl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Crashes the server as a lost instance would: `pg_ctl stop -m
    /// immediate` (no checkpoint, backends killed).
    pub fn crash(&self) -> anyhow::Result<()> {
        self.pg_ctl(&["stop", "-m", "immediate", "-w"])?;
        if let Ok(mut guard) = self.child.lock() {
            if let Some(mut child) = guard.take() {
                let _ = child.wait();
            }
        }
        Ok(())
    }

    /// Promotes a standby to primary and waits until it accepts writes.
    pub fn promote(&self) -> anyhow::Result<()> {
        self.pg_ctl(&["promote", "-w"])
    }

    fn command(run_as: &Option<String>, program: &Path) -> Command {
        Self::command_in(None, run_as, program)
    }

    /// [`Cluster::command`], inside a network namespace when one is named.
    fn command_in(netns: Option<&str>, run_as: &Option<String>, program: &Path) -> Command {
        if let Some(ns) = netns {
            let inner = Self::command(run_as, program);
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(inner.get_program());
            c.args(inner.get_args());
            return c;
        }
        match run_as {
            Some(u) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={u}"))
                    .arg(format!("--regid={u}"))
                    .arg("--init-groups")
                    .arg("--pdeathsig=INT")
                    .arg("--")
                    .arg(program);
                c
            }
            None => {
                let mut c = Command::new("setpriv");
                c.arg("--pdeathsig=INT").arg("--").arg(program);
                c
            }
        }
    }

    fn launch(&self) -> anyhow::Result<()> {
        let program = self.bin.join("postgres");
        let mut cmd = Self::command_in(self.netns.as_deref(), &self.run_as, &program);
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("server.log"))?);
        let child = spawn_detached(cmd).context("starting postgres")?;
        *self.child.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            // The Unix socket: reachable whatever network namespace the
            // server is in.
            let ok = Command::new(self.tools.join("pg_isready"))
                .arg("-q")
                .arg("-h")
                .arg(&self.dir)
                .args(["-p", &self.port.to_string()])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        bail!("PostgreSQL did not start within 60s:\n{log}")
    }

    /// The port the server listens on (host 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (its parent holds the unix socket).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The directory holding the client programs (pgbench, psql, ...).
    pub fn bin_dir(&self) -> &Path {
        &self.tools
    }

    /// A libpq/tokio-postgres connection string for the superuser.
    pub fn superuser_url(&self, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={SUPERUSER} password={SUPERUSER_PASSWORD} dbname={dbname}",
            self.port
        )
    }

    /// A connection string for the superuser over the Unix socket.
    pub fn socket_url(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user={SUPERUSER} password={SUPERUSER_PASSWORD} dbname={dbname}",
            self.dir.display(),
            self.port
        )
    }

    /// Stops the server (fast shutdown) and waits for it.
    pub fn stop(&self) {
        let Ok(mut guard) = self.child.lock() else {
            return;
        };
        if let Some(mut child) = guard.take() {
            let _ = Command::new("kill")
                .arg("-INT")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops and starts the server on the same port, as a restart would.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.stop();
        self.launch()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
