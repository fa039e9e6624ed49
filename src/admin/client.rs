//! `pgmux reload`: the admin console's client side, run from the command
//! line against a running instance.

use std::process::ExitCode;

use crate::auth::Secret;
use crate::config::Config;

/// `pgmux reload`: validates the file here, asks the running instance to
/// reload through its admin console, and prints what changed. Exits
/// non-zero unless the instance confirms.
pub async fn cli(path: &std::path::Path, user: Option<&str>) -> anyhow::Result<ExitCode> {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}", e.located(path));
            return Ok(ExitCode::FAILURE);
        }
    };
    let Some(user) = user
        .map(str::to_owned)
        .or_else(|| cfg.admin.users.first().cloned())
    else {
        eprintln!("no admin user: add [admin] users = [\"...\"] to the config or pass --user");
        return Ok(ExitCode::FAILURE);
    };
    let pg = console_config(&cfg, &user)?;
    let client = match pg.connect(tokio_postgres::NoTls).await {
        Ok((client, conn)) => {
            tokio::spawn(conn);
            client
        }
        Err(e) => {
            eprintln!(
                "cannot reach the pgmux instance at {}: {}",
                cfg.pgmux.listen,
                describe(&e)
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    match client.simple_query("RELOAD").await {
        Ok(msgs) => {
            print_changes(&msgs);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("reload failed: {}", describe(&e));
            Ok(ExitCode::FAILURE)
        }
    }
}

/// How to reach the admin console of the instance this config describes:
/// its listen address (loopback for a wildcard), the admin user, and the
/// password from `PGMUX_ADMIN_PASSWORD` or the user's plaintext entry.
fn console_config(cfg: &Config, user: &str) -> anyhow::Result<tokio_postgres::Config> {
    let password = std::env::var("PGMUX_ADMIN_PASSWORD").ok().or_else(|| {
        let secret = cfg.users.get(user).map(|u| Secret::parse(&u.password));
        match secret {
            Some(Secret::Plain(p)) => Some(p),
            _ => None,
        }
    });
    let mut addr = cfg.listen_addr()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let mut pg = tokio_postgres::Config::new();
    pg.host(addr.ip().to_string())
        .port(addr.port())
        .user(user)
        .dbname(super::ADMIN_DATABASE)
        .connect_timeout(std::time::Duration::from_secs(10));
    if let Some(p) = &password {
        pg.password(p);
    }
    Ok(pg)
}

/// Prints RELOAD's answer: one line per change.
fn print_changes(msgs: &[tokio_postgres::SimpleQueryMessage]) {
    let lines: Vec<&str> = msgs
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0),
            _ => None,
        })
        .collect();
    if lines.is_empty() {
        println!("reloaded: no changes");
        return;
    }
    println!("reloaded:");
    for l in lines {
        println!("  {l}");
    }
}

fn describe(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| e.to_string())
}
