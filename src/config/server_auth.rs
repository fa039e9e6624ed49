//! What pgmux accepts from a server that asks it to authenticate: libpq's
//! `require_auth` and `channel_binding`, so that a server (or whatever sits
//! between pgmux and it when TLS is not `verify-full`) cannot make pgmux
//! send a password in the clear or skip the proof SCRAM owes the client.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One way a server may authenticate pgmux.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// The password in the clear (`password`).
    Password,
    /// The MD5 challenge (`md5`).
    Md5,
    /// SCRAM-SHA-256, with or without channel binding (`scram-sha-256`).
    Scram,
    /// No authentication at all (`none`).
    None,
}

impl AuthMethod {
    const ALL: [(Self, &'static str); 4] = [
        (Self::Password, "password"),
        (Self::Md5, "md5"),
        (Self::Scram, "scram-sha-256"),
        (Self::None, "none"),
    ];

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// libpq's name of the method.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(m, _)| *m == self)
            .map_or("", |(_, n)| n)
    }
}

/// `server_auth_methods`: libpq's `require_auth` list (`scram-sha-256,md5`,
/// or every method but the negated ones: `!password`). Unset, every method
/// is accepted except a cleartext password over a connection without
/// verified TLS (`verify-ca` or `verify-full`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServerAuthMethods {
    /// The methods written (`None`: the default rule).
    allowed: Option<u8>,
}

impl ServerAuthMethods {
    /// Whether `method` may be used over a connection with (`tls`: TLS with
    /// a checked certificate) or without it.
    pub fn allows(self, method: AuthMethod, tls: bool) -> bool {
        match self.allowed {
            Some(bits) => bits & method.bit() != 0,
            None => method != AuthMethod::Password || tls,
        }
    }

    /// Parses libpq's syntax: a comma list of methods, all negated (`!`)
    /// or none.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (mut plain, mut negated) = (0u8, 0u8);
        for word in s.split(',').map(str::trim) {
            let (neg, name) = match word.strip_prefix('!') {
                Some(n) => (true, n),
                None => (false, word),
            };
            let m = AuthMethod::ALL
                .iter()
                .find(|(_, n)| *n == name)
                .map(|(m, _)| *m)
                .ok_or_else(|| {
                    format!(
                        "unknown authentication method {name:?} (password, md5, scram-sha-256, none; \
                         `!` before each to refuse them)"
                    )
                })?;
            let bits = if neg { &mut negated } else { &mut plain };
            if *bits & m.bit() != 0 {
                return Err(format!("authentication method {name:?} is listed twice"));
            }
            *bits |= m.bit();
        }
        match (plain, negated) {
            (p, 0) => Ok(Self { allowed: Some(p) }),
            (0, n) => Ok(Self {
                allowed: Some(!n & 0x0f),
            }),
            _ => Err("negated and plain authentication methods cannot be mixed".into()),
        }
    }
}

impl fmt::Display for ServerAuthMethods {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(bits) = self.allowed else {
            return f.write_str("default");
        };
        let names: Vec<_> = AuthMethod::ALL
            .iter()
            .filter(|(m, _)| bits & m.bit() != 0)
            .map(|(_, n)| *n)
            .collect();
        f.write_str(&names.join(","))
    }
}

impl<'de> Deserialize<'de> for ServerAuthMethods {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "default" {
            return Ok(Self::default());
        }
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for ServerAuthMethods {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `server_channel_binding`: libpq's `channel_binding`, toward servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelBinding {
    /// Never bind SCRAM to the TLS channel.
    Disable,
    /// Bind when the connection is TLS and the server offers
    /// SCRAM-SHA-256-PLUS.
    #[default]
    Prefer,
    /// Refuse any server that does not authenticate with
    /// SCRAM-SHA-256-PLUS (which needs TLS).
    Require,
}

impl super::Config {
    /// Servers reached over a network without `verify-full`: what sits on
    /// the path could read the traffic or pose as the server. One line per
    /// database, for `pgmux check` and the log.
    pub fn server_tls_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, db) in &self.databases {
            let mode = self.pool(db, None).tls_mode;
            if mode == super::TlsMode::VerifyFull {
                continue;
            }
            let remote: Vec<String> = self
                .hosts(db)
                .unwrap_or_default()
                .into_iter()
                .filter(|h| !on_this_machine(&h.host))
                .map(|h| h.host)
                .collect();
            if !remote.is_empty() {
                out.push(format!(
                    "databases.{name}: server {} is reached over the network with \
                     server_tls_mode {mode:?}: whatever is on the path can read the traffic or \
                     pose as the server; use verify-full with server_tls_ca",
                    remote.join(", ")
                ));
            }
        }
        out
    }
}

/// A Unix socket directory, `localhost` or a loopback address.
fn on_this_machine(host: &str) -> bool {
    host.starts_with('/')
        || host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_syntax() {
        let d = ServerAuthMethods::default();
        assert!(!d.allows(AuthMethod::Password, false));
        assert!(d.allows(AuthMethod::Password, true));
        assert!(d.allows(AuthMethod::None, false));
        let s = ServerAuthMethods::parse("scram-sha-256").unwrap();
        assert!(s.allows(AuthMethod::Scram, false));
        assert!(!s.allows(AuthMethod::Md5, true));
        assert!(!s.allows(AuthMethod::None, true));
        let n = ServerAuthMethods::parse("!password, !none").unwrap();
        assert!(n.allows(AuthMethod::Md5, false));
        assert!(!n.allows(AuthMethod::Password, true));
        assert!(!n.allows(AuthMethod::None, true));
        assert_eq!(n.to_string(), "md5,scram-sha-256");
        let p = ServerAuthMethods::parse("password").unwrap();
        assert!(p.allows(AuthMethod::Password, false));
        for bad in ["md5,!password", "gss", "md5,md5", ""] {
            assert!(ServerAuthMethods::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn remote_servers_without_verify_full_are_named() {
        let cfg = super::super::Config::parse(
            "[databases.a]\nhost = \"10.0.0.5\"\n[databases.b]\nhost = \"127.0.0.1\"\n\
             [databases.c]\nhosts = [\"db.example.com:5432\", \"localhost\"]\n\
             server_tls_mode = \"verify-full\"\nserver_tls_ca = \"/ca.pem\"\n\
             [databases.d]\nhost = \"/run/postgresql\"\n",
        )
        .unwrap();
        let w = cfg.server_tls_warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("databases.a: server 10.0.0.5 "), "{w:?}");
    }
}
