//! Admin commands: parsing and execution against the running instance.

use super::show::{self, Show};
use super::Reply;
use crate::context::Context;
use crate::pool::Pool;
use crate::shutdown::Phase;

/// A parsed admin command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// SHOW POOLS, STATS, CLIENTS, ... (PgBouncer's columns and types).
    Show(Show),
    /// PAUSE [db]: new transactions wait until RESUME; answers once every
    /// server is released, and closes them.
    Pause(Option<String>),
    /// WAIT_CLOSE [db]: answers once servers left by RECONNECT or a
    /// reload are closed.
    WaitClose(Option<String>),
    /// DISABLE db: new clients of the database are refused (57P03).
    Disable(String),
    /// ENABLE db: ends a DISABLE.
    Enable(String),
    /// RESUME [db]
    Resume(Option<String>),
    /// RELOAD: re-read the config file.
    Reload,
    /// RECONNECT [db]: replace server connections as they become free.
    Reconnect(Option<String>),
    /// KILL db: disconnect the database's clients and close its servers.
    Kill(String),
    /// SHUTDOWN: graceful shutdown, as SIGTERM.
    Shutdown,
}

impl Command {
    /// Parses one command (case-insensitive, optional trailing semicolon).
    pub fn parse(sql: &str) -> Result<Self, String> {
        let text = sql.trim().trim_end_matches(';').trim();
        let words: Vec<&str> = text.split_whitespace().collect();
        let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
        let upper: Vec<&str> = upper.iter().map(String::as_str).collect();
        let arg = words.get(1).map(|w| w.trim_matches('"').to_owned());
        Ok(match upper.as_slice() {
            ["SHOW", what] => match Show::parse(what) {
                Some(s) => Self::Show(s),
                None => return Err(format!("unknown SHOW command: {text:?}; try SHOW HELP")),
            },
            ["PAUSE"] | ["PAUSE", _] => Self::Pause(arg),
            ["RESUME"] | ["RESUME", _] => Self::Resume(arg),
            ["WAIT_CLOSE"] | ["WAIT_CLOSE", _] => Self::WaitClose(arg),
            ["DISABLE", _] => Self::Disable(arg.unwrap_or_default()),
            ["ENABLE", _] => Self::Enable(arg.unwrap_or_default()),
            ["RELOAD"] => Self::Reload,
            ["RECONNECT"] | ["RECONNECT", _] => Self::Reconnect(arg),
            ["KILL", _] => Self::Kill(arg.unwrap_or_default()),
            ["SHUTDOWN"] => Self::Shutdown,
            _ => return Err(format!("unknown admin command: {text:?}; try SHOW HELP, SHOW POOLS, PAUSE, RESUME, WAIT_CLOSE, ENABLE, DISABLE, RELOAD, RECONNECT, KILL or SHUTDOWN")),
        })
    }

    /// Runs the command.
    pub fn execute(&self, ctx: &Context) -> Result<Reply, String> {
        Ok(match self {
            Self::Show(what) => Reply::Rows(show::table(*what, ctx)),
            Self::Pause(db) => {
                let targets = pools(ctx, db.as_deref())?;
                for p in &targets {
                    p.set_paused(true);
                }
                Reply::Until(targets, super::Until::Released, "PAUSE")
            }
            Self::WaitClose(db) => Reply::Until(
                pools(ctx, db.as_deref())?,
                super::Until::OldClosed,
                "WAIT_CLOSE",
            ),
            Self::Disable(db) | Self::Enable(db) => {
                pools(ctx, Some(db))?;
                let disable = matches!(self, Self::Disable(_));
                ctx.pools.set_disabled(db, disable);
                Reply::Done(if disable { "DISABLE" } else { "ENABLE" })
            }
            Self::Resume(db) => {
                for p in pools(ctx, db.as_deref())? {
                    p.set_paused(false);
                }
                Reply::Done("RESUME")
            }
            Self::Reload => Reply::Lines("RELOAD", crate::reload::reload(ctx)?),
            Self::Reconnect(db) => {
                for p in pools(ctx, db.as_deref())? {
                    p.reconnect();
                }
                Reply::Done("RECONNECT")
            }
            Self::Kill(db) => {
                let targets = pools(ctx, Some(db))?;
                for c in ctx.clients.all().into_iter().filter(|c| &c.database == db) {
                    c.kill();
                }
                for p in targets {
                    p.reconnect();
                }
                Reply::Done("KILL")
            }
            Self::Shutdown => {
                ctx.advance_shutdown(Phase::Draining);
                Reply::Done("SHUTDOWN")
            }
        })
    }
}

fn pools(ctx: &Context, db: Option<&str>) -> Result<Vec<Pool>, String> {
    if let Some(d) = db {
        if !ctx.config().databases.contains_key(d) {
            return Err(format!("no such database: {d}"));
        }
    }
    Ok(ctx.pools.matching(db))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(
            Command::parse("show pools;").unwrap(),
            Command::Show(Show::Pools)
        );
        assert_eq!(
            Command::parse("PAUSE blog").unwrap(),
            Command::Pause(Some("blog".into()))
        );
        assert_eq!(Command::parse("resume").unwrap(), Command::Resume(None));
        assert!(Command::parse("DROP TABLE x").is_err());
        assert!(Command::parse("KILL").is_err());
    }
}
