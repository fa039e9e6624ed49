//! The admin console: a virtual database `pgmux` that `[admin] users` reach
//! with psql on the normal port. Simple query protocol only; every answer is
//! an ordinary result set, with PgBouncer's column names where a column means
//! the same thing, so existing scripts keep working.

pub mod client;
mod commands;
mod show;

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use crate::config::{ADMIN_DATABASE, PGBOUNCER_DATABASE};
pub use commands::Command;
pub use show::{totals_by_database, Kind, Show};

use crate::context::Context;
use crate::protocol::encode::{write_error, EncodeError, Severity};
use crate::protocol::frame::{cstr, split_frame};
use crate::protocol::{encode, fe, SqlState, TxStatus};
use crate::tls::Stream;

/// The server_version the admin console reports.
pub const SERVER_VERSION: &str = "15.0 (pgmux admin)";

/// Whether a client asking for `database` reaches the admin console.
pub fn is_console(database: &str, configured: bool) -> bool {
    database == ADMIN_DATABASE || (database == PGBOUNCER_DATABASE && !configured)
}

/// Largest admin command accepted.
const MAX_COMMAND: usize = 64 * 1024;

/// A result set: typed columns and text rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Column names and types.
    pub columns: Vec<(&'static str, Kind)>,
    /// Rows of values in text form (`None` is NULL).
    pub rows: Vec<Vec<Option<String>>>,
}

impl Table {
    /// A table with these columns and rows.
    pub fn new(columns: &[(&'static str, Kind)], rows: Vec<Vec<Option<String>>>) -> Self {
        Self {
            columns: columns.to_vec(),
            rows,
        }
    }
}

/// What a command answers.
#[derive(Clone)]
pub enum Reply {
    /// Rows, with the command tag `SHOW`.
    Rows(Table),
    /// Just a command tag.
    Done(&'static str),
    /// Rows of text lines under one column, then a tag (RELOAD's changes).
    Lines(&'static str, Vec<String>),
    /// The tag once the pools reach a state (PAUSE, WAIT_CLOSE wait).
    Until(Vec<crate::pool::Pool>, Until, &'static str),
}

/// What a waiting command waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Every server released by its client (then idle ones are closed).
    Released,
    /// Every server of an older generation closed.
    OldClosed,
}

/// Waits until `pools` reach the state, polling (admin commands are rare).
async fn wait_until(pools: &[crate::pool::Pool], until: Until) {
    loop {
        let done = match until {
            Until::Released => pools.iter().all(|p| p.snapshot().servers_active == 0),
            Until::OldClosed => pools.iter().all(|p| p.old_servers() == 0),
        };
        if done {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    if until == Until::Released {
        for p in pools {
            p.close_idle();
        }
    }
}

/// Writes the ParameterStatus set of the admin console after AuthenticationOk.
pub fn welcome(out: &mut BytesMut) {
    encode::auth_ok(out);
    for (k, v) in [
        ("server_version", SERVER_VERSION),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", "pgmux"),
    ] {
        encode::parameter_status(out, k, v);
    }
    encode::backend_key_data(out, 0, 0);
    encode::ready_for_query(out, TxStatus::Idle);
}

fn write_table(out: &mut BytesMut, t: &Table) -> Result<(), EncodeError> {
    let columns: Vec<(&str, u32)> = t.columns.iter().map(|(n, k)| (*n, k.oid())).collect();
    encode::row_description(out, &columns);
    for row in &t.rows {
        encode::data_row(out, row)?;
    }
    Ok(())
}

fn write_reply(out: &mut BytesMut, reply: &Reply) -> Result<(), EncodeError> {
    match reply {
        Reply::Until(_, _, tag) => encode::command_complete(out, tag),
        Reply::Rows(t) => {
            write_table(out, t)?;
            encode::command_complete(out, "SHOW");
        }
        Reply::Done(tag) => encode::command_complete(out, tag),
        Reply::Lines(tag, lines) => {
            let rows = lines.iter().map(|l| vec![Some(l.clone())]).collect();
            let t = Table::new(&[("change", Kind::Text)], rows);
            write_table(out, &t)?;
            encode::command_complete(out, tag);
        }
    }
    Ok(())
}

/// Serves one admin console session.
pub async fn run(mut stream: Stream, ctx: Arc<Context>, user: String, mut buf: BytesMut) {
    tracing::info!(%user, "admin console session");
    // stats_users may look, not act.
    let read_only = !ctx.config().admin.users.contains(&user);
    let mut out = BytesMut::new();
    loop {
        let frame = match split_frame(&mut buf, MAX_COMMAND) {
            Ok(Some(f)) => f,
            Ok(None) => match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
            Err(e) => {
                write_error(
                    &mut out,
                    Severity::Fatal,
                    SqlState::PROTOCOL_VIOLATION.0,
                    &e.to_string(),
                );
                let _ = stream.write_all(&out).await;
                return;
            }
        };
        match frame.tag() {
            fe::TERMINATE => return,
            fe::QUERY => {
                let sql = cstr(frame.body()).map(|(s, _)| String::from_utf8_lossy(s).into_owned());
                match sql.as_deref().map(Command::parse) {
                    Some(Ok(cmd)) if read_only && !matches!(cmd, Command::Show(_)) => write_error(
                        &mut out,
                        Severity::Error,
                        SqlState::INSUFFICIENT_PRIVILEGE.0,
                        &format!("permission denied: {user} is a stats user and may only SHOW"),
                    ),
                    Some(Ok(cmd)) => match cmd.execute(&ctx) {
                        Ok(reply) => {
                            if let Reply::Until(pools, until, _) = &reply {
                                wait_until(pools, *until).await;
                            }
                            // The error answers the command alone, without the rows
                            // written before it.
                            let mark = out.len();
                            if let Err(e) = write_reply(&mut out, &reply) {
                                out.truncate(mark);
                                let code = SqlState::PROGRAM_LIMIT_EXCEEDED.0;
                                write_error(&mut out, Severity::Error, code, &e.to_string());
                            }
                        }
                        Err(msg) => {
                            write_error(&mut out, Severity::Error, SqlState::SYSTEM_ERROR.0, &msg)
                        }
                    },
                    Some(Err(msg)) => {
                        write_error(&mut out, Severity::Error, SqlState::SYNTAX_ERROR.0, &msg)
                    }
                    None => write_error(
                        &mut out,
                        Severity::Error,
                        SqlState::PROTOCOL_VIOLATION.0,
                        "malformed Query",
                    ),
                }
                encode::ready_for_query(&mut out, TxStatus::Idle);
            }
            fe::SYNC => {
                write_error(
                    &mut out,
                    Severity::Error,
                    SqlState::FEATURE_NOT_SUPPORTED.0,
                    "the admin console supports the simple query protocol only",
                );
                encode::ready_for_query(&mut out, TxStatus::Idle);
            }
            _ => {}
        }
        if stream.write_all(&out).await.is_err() {
            return;
        }
        out.clear();
    }
}
