//! `pgmux reload`: the admin console's client side, run from the command
//! line against a running instance.

use crate::config::Config;

/// `pgmux reload`: validates the file here, asks the running instance to
/// reload through its admin console, and prints what changed. Exits
/// non-zero unless the instance confirms.
pub async fn cli(
    path: &std::path::Path,
    user: Option<&str>,
) -> anyhow::Result<std::process::ExitCode> {
    use std::process::ExitCode;
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
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
    let password = std::env::var("PGMUX_ADMIN_PASSWORD").ok().or_else(|| {
        cfg.users
            .get(&user)
            .map(|u| crate::auth::Secret::parse(&u.password))
            .and_then(|s| match s {
                crate::auth::Secret::Plain(p) => Some(p),
                _ => None,
            })
    });
    let mut addr = cfg.listen_addr()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let mut pg = tokio_postgres::Config::new();
    pg.host(addr.ip().to_string())
        .port(addr.port())
        .user(&user)
        .dbname(super::ADMIN_DATABASE);
    if let Some(p) = &password {
        pg.password(p);
    }
    pg.connect_timeout(std::time::Duration::from_secs(10));
    let (client, conn) = match pg.connect(tokio_postgres::NoTls).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "cannot reach the pgmux instance at {addr}: {}",
                describe(&e)
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    tokio::spawn(conn);
    match client.simple_query("RELOAD").await {
        Ok(msgs) => {
            let lines: Vec<String> = msgs
                .iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                    _ => None,
                })
                .collect();
            if lines.is_empty() {
                println!("reloaded: no changes");
            } else {
                println!("reloaded:");
                for l in lines {
                    println!("  {l}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("reload failed: {}", describe(&e));
            Ok(ExitCode::FAILURE)
        }
    }
}

fn describe(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| e.to_string())
}
