//! Client authentication, sans I/O: the stored secret forms, SCRAM-SHA-256
//! server exchange, MD5 verification, and the `auth_hba_file` rules that
//! choose among them (`hba.rs`). The session drives these with the
//! client's messages; nothing here touches a socket.

pub mod cache;
pub mod hba;
pub mod md5;
pub mod scram;

use std::fmt;

pub use cache::AuthCache;
pub use scram::ScramVerifier;

/// An authentication exchange pgmux runs with a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// None: the client is let in.
    Trust,
    /// MD5 challenge (SCRAM for a user stored as a SCRAM verifier, as in
    /// PostgreSQL).
    Md5,
    /// SCRAM-SHA-256.
    ScramSha256,
}

/// How one user is authenticated: a configured user, or one `auth_query`
/// found on the server.
#[derive(Debug)]
pub struct UserAuth {
    /// The secret as stored.
    pub secret: Secret,
    /// Verifier used for SCRAM logins (derived once for plaintext passwords).
    pub scram: Option<ScramVerifier>,
}

impl UserAuth {
    /// Derives what logins need from a stored secret.
    pub fn new(secret: Secret) -> Self {
        let scram = secret.scram_verifier();
        Self { secret, scram }
    }
}

/// A user's password as written in the config.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// The password itself.
    Plain(String),
    /// `md5` + hex(md5(password + username)).
    Md5(String),
    /// A SCRAM-SHA-256 verifier: enough to check a client, not to log in as it.
    Scram(ScramVerifier),
    /// A verifier plus the ClientKey a client's SCRAM login revealed: enough
    /// to log in to a server storing the same verifier (auth_query users).
    ScramKeys(ScramVerifier, [u8; 32]),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print secrets, not even in debug logs.
        let kind = match self {
            Self::Plain(_) => "Plain",
            Self::Md5(_) => "Md5",
            Self::Scram(_) => "Scram",
            Self::ScramKeys(..) => "ScramKeys",
        };
        write!(f, "Secret::{kind}(********)")
    }
}

impl Secret {
    /// Recognizes the stored form.
    pub fn parse(s: &str) -> Self {
        if let Some(v) = ScramVerifier::parse(s) {
            return Self::Scram(v);
        }
        if s.len() == 35 && s.starts_with("md5") && s[3..].bytes().all(|b| b.is_ascii_hexdigit()) {
            return Self::Md5(s.to_owned());
        }
        Self::Plain(s.to_owned())
    }

    /// Whether pgmux can log in to a server with this secret.
    pub fn can_log_in_to_server(&self) -> bool {
        !matches!(self, Self::Scram(_))
    }

    /// The SCRAM verifier clients are checked against; for a plaintext
    /// password one is derived (with a fresh salt) once per user.
    pub fn scram_verifier(&self) -> Option<ScramVerifier> {
        match self {
            Self::Plain(p) => {
                let v = postgres_protocol::password::scram_sha_256(p.as_bytes());
                ScramVerifier::parse(&v)
            }
            Self::Scram(v) | Self::ScramKeys(v, _) => Some(v.clone()),
            Self::Md5(_) => None,
        }
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_secret_forms() {
        assert!(matches!(Secret::parse("hunter2"), Secret::Plain(_)));
        assert!(matches!(
            Secret::parse("md5d4d2d2e0b6a8f1c1a7c1a1b1c1d1e1f1"),
            Secret::Md5(_)
        ));
        let v = postgres_protocol::password::scram_sha_256(b"pw");
        assert!(matches!(Secret::parse(&v), Secret::Scram(_)));
        assert!(!format!("{:?}", Secret::parse("hunter2")).contains("hunter2"));
    }
}
