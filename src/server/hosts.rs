//! Choosing a server among a database's hosts, as libpq does: each host in
//! turn (or in a random order), its name resolved again for every new
//! connection, each address tried within `server_connect_timeout`, and the
//! logged-in server kept only if its role suits `target_session_attrs`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpSocket;
use tokio_rustls::TlsConnector;

use super::connect::login;
use super::ServerTarget;
use super::{ServerConn, ServerError};
use crate::config::{HostPort, LoadBalanceHosts, TargetSessionAttrs, TcpOptions};

/// How pgmux opens server connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Limit on one attempt (one address: TCP, TLS and login).
    pub timeout: Duration,
    /// Largest message accepted from the server.
    pub max_message_size: usize,
    /// Keepalive and user timeout of the socket.
    pub tcp: TcpOptions,
}

/// What a server is, as far as `target_session_attrs` cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Role {
    /// In hot standby (recovery).
    pub standby: bool,
    /// Its sessions are read-only (a standby, or
    /// `default_transaction_read_only` on).
    pub read_only: bool,
}

impl Role {
    fn describe(self) -> &'static str {
        match (self.standby, self.read_only) {
            (true, _) => "a standby",
            (false, true) => "a read-only primary",
            (false, false) => "a read-write primary",
        }
    }
}

/// Whether a server of `role` may serve a pool with these attributes
/// (`prefer-standby` takes anything; standbys are preferred by the search).
pub fn accepts(attrs: TargetSessionAttrs, role: Role) -> bool {
    match attrs {
        TargetSessionAttrs::Any | TargetSessionAttrs::PreferStandby => true,
        TargetSessionAttrs::ReadWrite => !role.read_only,
        TargetSessionAttrs::ReadOnly => role.read_only,
        TargetSessionAttrs::Primary => !role.standby,
        TargetSessionAttrs::Standby => role.standby,
    }
}

/// Whether a connection in use still suits the pool, judged only by hot
/// standby: `default_transaction_read_only` can be a client's own `SET`,
/// so it counts only when a connection is opened.
pub fn still_fits(attrs: TargetSessionAttrs, standby: bool) -> bool {
    match attrs {
        TargetSessionAttrs::ReadWrite | TargetSessionAttrs::Primary => !standby,
        TargetSessionAttrs::Standby => standby,
        _ => true,
    }
}

/// How bad a failure to open a connection is, which decides what waiting
/// clients are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    /// No host answered within the timeout: clients are told now.
    Unreachable,
    /// The server refused for a reason retrying will not fix (password,
    /// unknown database, TLS settings): clients are told now.
    Permanent,
    /// A host refused, restarted, was still starting, or had the wrong
    /// role (a failover under way): clients keep waiting while the pool
    /// retries.
    Transient,
}

/// SQLSTATEs a server sends while it cannot take connections for a while:
/// starting up or shutting down (57P03), shut down (57P01), crashed (57P02),
/// out of connection slots (53300: another application or pooler holds
/// them; clients wait for one to free, as PgBouncer's do, instead of
/// failing at once).
const PASSING_CODES: &[&str] = &["57P01", "57P02", "57P03", "53300"];

impl ServerError {
    /// How bad this failure to open a connection is.
    pub fn failure(&self) -> Failure {
        use std::io::ErrorKind as K;
        match self {
            Self::Timeout => Failure::Unreachable,
            Self::Io(e) => match e.kind() {
                K::TimedOut | K::HostUnreachable | K::NetworkUnreachable => Failure::Unreachable,
                _ => Failure::Transient,
            },
            Self::Server { code, .. } if PASSING_CODES.contains(&code.as_str()) => {
                Failure::Transient
            }
            Self::Server { .. } | Self::Auth(_) | Self::Tls(_) => Failure::Permanent,
            Self::Protocol(_) | Self::Role(_) => Failure::Transient,
            Self::Hosts(all) => all
                .iter()
                .map(|(_, e)| e.failure())
                .max()
                .unwrap_or(Failure::Unreachable),
        }
    }

    /// The SQLSTATE a client should see for it, when the server sent one.
    pub fn code(&self) -> Option<String> {
        match self {
            Self::Server { code, .. } => Some(code.clone()),
            Self::Hosts(all) if self.failure() == Failure::Permanent => all
                .iter()
                .find(|(_, e)| e.failure() == Failure::Permanent)
                .and_then(|(_, e)| e.code()),
            _ => None,
        }
    }
}

/// The addresses of `host`, resolved now (a literal address needs no lookup).
pub async fn resolve(host: &HostPort) -> Result<Vec<SocketAddr>, ServerError> {
    if let Ok(ip) = host.host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, host.port)]);
    }
    let found = tokio::net::lookup_host((host.host.as_str(), host.port))
        .await
        .map_err(|e| {
            ServerError::Io(std::io::Error::new(
                e.kind(),
                format!("cannot resolve {}: {e}", host.host),
            ))
        })?;
    let mut addrs: Vec<SocketAddr> = found.collect();
    addrs.dedup();
    Ok(addrs)
}

/// Opens a connection to the first host (in order, or randomly) whose
/// server suits `target_session_attrs`. For `prefer-standby` every host is
/// tried for a standby first, the first other server kept as a fallback.
pub async fn open(
    t: &ServerTarget,
    tls: Option<&TlsConnector>,
    opts: &ConnectOptions,
) -> Result<ServerConn, ServerError> {
    let mut order: Vec<&HostPort> = t.hosts.iter().collect();
    if t.load_balance == LoadBalanceHosts::Random {
        use rand::seq::SliceRandom;
        order.shuffle(&mut rand::rng());
    }
    let prefer_standby = t.target_session_attrs == TargetSessionAttrs::PreferStandby;
    let mut fallback = None;
    let mut failed = Vec::new();
    for host in order {
        let addrs = match resolve(host).await {
            Ok(a) => a,
            Err(e) => {
                failed.push((host.clone(), e));
                continue;
            }
        };
        for addr in addrs {
            let mut conn = match attempt(t, host, addr, tls, opts).await {
                Ok(c) => c,
                Err(e) => {
                    failed.push((host.clone(), e));
                    continue;
                }
            };
            let role = match role_of(&mut conn, t.target_session_attrs, opts).await {
                Ok(r) => r,
                Err(e) => {
                    failed.push((host.clone(), e));
                    continue;
                }
            };
            if prefer_standby && !role.standby {
                fallback.get_or_insert(conn);
                continue;
            }
            if accepts(t.target_session_attrs, role) {
                return Ok(conn);
            }
            let why = format!(
                "{addr} is {} (target_session_attrs = {})",
                role.describe(),
                attrs_name(t.target_session_attrs)
            );
            failed.push((host.clone(), ServerError::Role(why)));
        }
    }
    if let Some(conn) = fallback {
        return Ok(conn);
    }
    Err(match failed.len() {
        1 => failed.pop().map(|(_, e)| e).unwrap_or(ServerError::Timeout),
        _ => ServerError::Hosts(failed),
    })
}

fn attrs_name(a: TargetSessionAttrs) -> &'static str {
    match a {
        TargetSessionAttrs::Any => "any",
        TargetSessionAttrs::ReadWrite => "read-write",
        TargetSessionAttrs::ReadOnly => "read-only",
        TargetSessionAttrs::Primary => "primary",
        TargetSessionAttrs::Standby => "standby",
        TargetSessionAttrs::PreferStandby => "prefer-standby",
    }
}

/// One address: TCP with the configured keepalive, then TLS and login,
/// all within the timeout.
async fn attempt(
    t: &ServerTarget,
    host: &HostPort,
    addr: SocketAddr,
    tls: Option<&TlsConnector>,
    opts: &ConnectOptions,
) -> Result<ServerConn, ServerError> {
    let work = async {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        opts.tcp.apply(socket2::SockRef::from(&socket));
        let tcp = socket.connect(addr).await?;
        login(t, &host.host, tcp, tls, opts.max_message_size).await
    };
    tokio::time::timeout(opts.timeout, work)
        .await
        .unwrap_or(Err(ServerError::Timeout))
}

/// The server's role: from what it reported at login (PostgreSQL 14 and
/// later report `in_hot_standby` and `default_transaction_read_only`), or
/// asked when it did not say and the pool cares.
async fn role_of(
    conn: &mut ServerConn,
    attrs: TargetSessionAttrs,
    opts: &ConnectOptions,
) -> Result<Role, ServerError> {
    if let Some(role) = conn.reported_role() {
        return Ok(role);
    }
    if attrs == TargetSessionAttrs::Any {
        return Ok(Role {
            standby: false,
            read_only: false,
        });
    }
    ask_role(conn, opts.max_message_size).await
}

/// Asks the server its role (servers that do not report it, and a check
/// after a read-only error).
pub async fn ask_role(conn: &mut ServerConn, max: usize) -> Result<Role, ServerError> {
    let mut rows = Vec::new();
    let sql = "SELECT pg_catalog.pg_is_in_recovery()::text, \
               pg_catalog.current_setting('default_transaction_read_only')";
    conn.run_internal_rows(sql, max, &mut rows).await?;
    let row = rows
        .first()
        .ok_or_else(|| ServerError::Protocol("the role query returned no row".into()))?;
    let on = |i: usize| matches!(row.get(i).and_then(|v| v.as_deref()), Some("true" | "on"));
    let standby = on(0);
    Ok(Role {
        standby,
        read_only: standby || on(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_meaning_of_target_session_attrs() {
        let primary = Role {
            standby: false,
            read_only: false,
        };
        let ro_primary = Role {
            standby: false,
            read_only: true,
        };
        let standby = Role {
            standby: true,
            read_only: true,
        };
        use TargetSessionAttrs as T;
        let table = [
            (T::Any, [true, true, true]),
            (T::ReadWrite, [true, false, false]),
            (T::ReadOnly, [false, true, true]),
            (T::Primary, [true, true, false]),
            (T::Standby, [false, false, true]),
            (T::PreferStandby, [true, true, true]),
        ];
        for (attrs, want) in table {
            let got = [primary, ro_primary, standby].map(|r| accepts(attrs, r));
            assert_eq!(got, want, "{attrs:?}");
        }
    }

    #[test]
    fn failures_are_classified() {
        let refused = ServerError::Io(std::io::ErrorKind::ConnectionRefused.into());
        assert_eq!(refused.failure(), Failure::Transient);
        assert_eq!(ServerError::Timeout.failure(), Failure::Unreachable);
        let starting = ServerError::Server {
            code: "57P03".into(),
            message: "the database system is starting up".into(),
        };
        assert_eq!(starting.failure(), Failure::Transient);
        let full = ServerError::Server {
            code: "53300".into(),
            message: "sorry, too many clients already".into(),
        };
        assert_eq!(full.failure(), Failure::Transient);
        let password = ServerError::Server {
            code: "28P01".into(),
            message: "password authentication failed".into(),
        };
        assert_eq!(password.failure(), Failure::Permanent);
        let host = |h: &str| HostPort {
            host: h.into(),
            port: 5432,
        };
        let both = ServerError::Hosts(vec![
            (host("a"), ServerError::Timeout),
            (host("b"), password),
        ]);
        assert_eq!(both.failure(), Failure::Permanent);
        assert_eq!(both.code().as_deref(), Some("28P01"));
        let failover = ServerError::Hosts(vec![
            (host("a"), refused),
            (host("b"), ServerError::Role("standby".into())),
        ]);
        assert_eq!(failover.failure(), Failure::Transient);
    }
}
