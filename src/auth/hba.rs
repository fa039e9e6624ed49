//! Client rules in PgBouncer's dialect of `pg_hba.conf` (`auth_hba_file`),
//! sans I/O: [`parse`] reads the text (an `@file` include is read through
//! the caller's closure) and [`Hba::decide`] picks the first rule matching
//! a client, as PgBouncer's `hba.c` and PostgreSQL do.
//!
//! The dialect is PgBouncer's, not PostgreSQL's: line types `local`,
//! `host`, `hostssl`, `hostnossl`; a database or user column of names,
//! quoted names, `all` and `@file`, with `sameuser` and `replication` for
//! the database; an address that is `all`, a CIDR, or an address and a mask
//! in two columns; methods `trust`, `reject`, `md5`, `password`,
//! `scram-sha-256`, `cert`, `peer`, `ldap`, and no options after them. No
//! line continuation. Where PgBouncer skips a line it cannot read (with a
//! warning in its log), pgmux refuses the whole file, so that a typo never
//! lets in a client the rule was meant to keep out.

mod parse;

use std::net::IpAddr;

use super::Method;

pub use parse::{parse, ReadInclude};

/// What is wrong with one line, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}:{line}: {message}")]
pub struct HbaError {
    /// The file (the rules file or an included one).
    pub path: String,
    /// Its line, from 1.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// The rules of one file, in order. `local` lines are checked and then
/// dropped: pgmux listens on TCP only, so they can never match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hba {
    rules: Vec<Rule>,
    /// Lines read differently than PgBouncer would (with their place).
    pub warnings: Vec<String>,
}

/// One `host`, `hostssl` or `hostnossl` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    line: usize,
    tls: TlsNeed,
    databases: Names,
    users: Names,
    address: Address,
    action: Action,
}

/// What the line type says about TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsNeed {
    /// `host`
    Either,
    /// `hostssl`
    Required,
    /// `hostnossl`
    Refused,
}

/// A database or user column.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Names {
    all: bool,
    /// `sameuser`: the database named like the user.
    same_user: bool,
    names: Vec<String>,
}

/// A client address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Address {
    All,
    V4 { net: u32, mask: u32 },
    V6 { net: u128, mask: u128 },
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Allow(Method),
    Reject,
}

/// A client as the rules see it.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    /// Its address.
    pub addr: IpAddr,
    /// Whether it speaks TLS.
    pub tls: bool,
    /// The database it asked for.
    pub database: &'a str,
    /// The user it logs in as.
    pub user: &'a str,
}

/// What the rules say about a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Authenticate with this method (rule at this line).
    Allow(Method, usize),
    /// Refused: by a `reject` rule at this line, or (`None`) by no rule.
    Refuse(Option<usize>),
}

impl Hba {
    /// The first rule matching `client` decides; none refuses, as in
    /// PostgreSQL and PgBouncer.
    pub fn decide(&self, client: &Client<'_>) -> Verdict {
        let addr = match client.addr {
            // A v4 client on a dual-stack socket is still a v4 client.
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client.addr, IpAddr::V4),
            v4 => v4,
        };
        let rule = self.rules.iter().find(|r| {
            r.tls.admits(client.tls)
                && r.address.contains(addr)
                && r.databases.matches(client.database, client.user)
                && r.users.matches(client.user, "")
        });
        match rule {
            Some(r) => match r.action {
                Action::Allow(m) => Verdict::Allow(m, r.line),
                Action::Reject => Verdict::Refuse(Some(r.line)),
            },
            None => Verdict::Refuse(None),
        }
    }

    /// Whether some rule lets clients in without a password.
    pub fn has_trust(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.action == Action::Allow(Method::Trust))
    }
}

/// PostgreSQL's FATAL message for a refused client (SQLSTATE 28000).
pub fn refusal(client: &Client<'_>, by_rule: bool) -> String {
    let encryption = if client.tls {
        "SSL encryption"
    } else {
        "no encryption"
    };
    let (host, user, db) = (client.addr, client.user, client.database);
    let who = format!("host \"{host}\", user \"{user}\", database \"{db}\", {encryption}");
    if by_rule {
        format!("pg_hba.conf rejects connection for {who}")
    } else {
        format!("no pg_hba.conf entry for {who}")
    }
}

// === impl matching ===

impl TlsNeed {
    fn admits(self, tls: bool) -> bool {
        match self {
            Self::Either => true,
            Self::Required => tls,
            Self::Refused => !tls,
        }
    }
}

impl Address {
    fn contains(self, addr: IpAddr) -> bool {
        match (self, addr) {
            (Self::All, _) => true,
            (Self::V4 { net, mask }, IpAddr::V4(a)) => u32::from(a) & mask == net,
            (Self::V6 { net, mask }, IpAddr::V6(a)) => u128::from(a) & mask == net,
            _ => false,
        }
    }
}

impl Names {
    /// `same` is what `sameuser` compares with (the user, for the database
    /// column).
    fn matches(&self, name: &str, same: &str) -> bool {
        self.all || (self.same_user && name == same) || self.names.iter().any(|n| n == name)
    }
}

#[cfg(test)]
mod tests;
