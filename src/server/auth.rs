//! Answering a server's authentication requests, sans I/O, within what
//! `server_auth_methods` and `server_channel_binding` allow (libpq's
//! `require_auth` and `channel_binding`).
//!
//! The server is not trusted to say when authentication is over: one that
//! starts SCRAM must prove it knows the verifier (the server signature of
//! SCRAM's final message) before its AuthenticationOk counts, a cleartext
//! password goes only where the methods allow it (by default only over
//! TLS), and a server may ask only once.

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{
    self, ScramSha256, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};

use super::{ServerError, ServerTarget};
use crate::auth::scram::{ClientBinding, ScramPassthrough};
use crate::auth::Secret;
use crate::config::{AuthMethod, ChannelBinding};
use crate::protocol::auth_code;
use crate::protocol::encode;
use crate::protocol::frame::{cstr, read_i32};
use crate::tls::Stream;

/// A SCRAM exchange with the server in progress.
enum Scram {
    /// With the password.
    Password(ScramSha256),
    /// With a client's recovered ClientKey (auth_query users).
    Passthrough(ScramPassthrough),
}

/// One login's authentication, from the first request to AuthenticationOk.
pub(super) struct ServerAuth<'a> {
    t: &'a ServerTarget,
    /// TLS whose certificate pgmux checked (`verify-ca`, `verify-full`):
    /// only such a channel makes a cleartext password safe by default (an
    /// unchecked one may end at whoever answered).
    tls: bool,
    /// Any TLS: pgmux can bind SCRAM to it.
    encrypted: bool,
    /// `tls-server-end-point` data of the server's certificate.
    end_point: Option<Vec<u8>>,
    /// What the server asked for (it may ask once).
    asked: Option<AuthMethod>,
    scram: Option<Scram>,
    /// The server proved it knows the SCRAM verifier.
    scram_verified: bool,
    /// The exchange was bound to the TLS channel.
    bound: bool,
    /// AuthenticationOk arrived.
    ok: bool,
}

fn auth_err(msg: impl Into<String>) -> ServerError {
    ServerError::Auth(msg.into())
}

fn scram_err(e: impl std::fmt::Display) -> ServerError {
    auth_err(format!("SCRAM: {e}"))
}

impl<'a> ServerAuth<'a> {
    /// Starts with what the connection is: TLS or not, and the server's
    /// certificate for channel binding.
    pub(super) fn new(t: &'a ServerTarget, stream: &Stream) -> Self {
        Self {
            t,
            tls: stream.is_tls() && t.tls_mode >= crate::tls::TlsMode::VerifyCa,
            encrypted: stream.is_tls(),
            end_point: end_point(stream),
            asked: None,
            scram: None,
            scram_verified: false,
            bound: false,
            ok: false,
        }
    }

    /// Answers one Authentication message; returns the bytes to send (may
    /// be empty).
    pub(super) fn step(&mut self, body: &[u8]) -> Result<Vec<u8>, ServerError> {
        let (code, data) =
            read_i32(body).ok_or_else(|| ServerError::malformed("Authentication"))?;
        let mut out = BytesMut::new();
        match code {
            auth_code::OK => self.accept_ok()?,
            auth_code::CLEARTEXT => {
                self.ask(AuthMethod::Password)?;
                match self.password()? {
                    Secret::Plain(p) => encode::password(&mut out, p.as_bytes())?,
                    _ => {
                        return Err(auth_err(
                            "the server asks for a cleartext password and pgmux only has a hash",
                        ))
                    }
                }
            }
            auth_code::MD5 => {
                self.ask(AuthMethod::Md5)?;
                self.md5_answer(data, &mut out)?;
            }
            auth_code::SASL => {
                self.ask(AuthMethod::Scram)?;
                self.sasl_start(data, &mut out)?;
            }
            auth_code::SASL_CONTINUE => {
                let answer = match self.scram_in_progress("SASLContinue")? {
                    Scram::Password(s) => {
                        s.update(data).map_err(scram_err)?;
                        s.message().to_vec()
                    }
                    Scram::Passthrough(s) => s.client_final(data).map_err(scram_err)?.into_bytes(),
                };
                encode::sasl_response(&mut out, &answer)?;
            }
            auth_code::SASL_FINAL => {
                match self.scram_in_progress("SASLFinal")? {
                    Scram::Password(s) => s.finish(data).map_err(scram_err)?,
                    Scram::Passthrough(s) => s.verify_server_final(data).map_err(scram_err)?,
                }
                self.scram_verified = true;
            }
            c => return Err(auth_err(format!("unsupported authentication request {c}"))),
        }
        Ok(out.to_vec())
    }

    /// Checked at ReadyForQuery: the login is over only after
    /// AuthenticationOk.
    pub(super) fn done(&self) -> Result<(), ServerError> {
        if self.ok {
            Ok(())
        } else {
            Err(ServerError::Protocol(
                "the server finished its login without AuthenticationOk".into(),
            ))
        }
    }

    /// AuthenticationOk counts only after what the server started is
    /// finished, and when what was (or was not) asked is allowed.
    fn accept_ok(&mut self) -> Result<(), ServerError> {
        if self.ok {
            return Err(ServerError::Protocol("AuthenticationOk sent twice".into()));
        }
        match self.asked {
            None => self.ask(AuthMethod::None)?,
            Some(AuthMethod::Scram) if !self.scram_verified => {
                return Err(auth_err(
                    "the server said authentication succeeded before proving that it knows the \
                     password (no verified SCRAM server signature)",
                ))
            }
            _ => {}
        }
        if self.t.channel_binding == ChannelBinding::Require && !self.bound {
            return Err(auth_err(
                "server_channel_binding is require and the server did not authenticate with \
                 SCRAM-SHA-256-PLUS",
            ));
        }
        self.ok = true;
        Ok(())
    }

    /// Records what the server asks for, refusing a second request and a
    /// method `server_auth_methods` does not allow.
    fn ask(&mut self, method: AuthMethod) -> Result<(), ServerError> {
        if let Some(first) = self.asked {
            return Err(auth_err(format!(
                "the server asked for {} authentication after {}",
                method.name(),
                first.name()
            )));
        }
        self.asked = Some(method);
        if self.t.channel_binding == ChannelBinding::Require && method != AuthMethod::Scram {
            // Refused before anything is answered: a password or an md5
            // answer sent first would reach whoever is in the middle.
            return Err(auth_err(format!(
                "server_channel_binding is require and the server asked for authentication \
                 method \"{}\" instead of SCRAM",
                method.name()
            )));
        }
        if self.t.auth_methods.allows(method, self.tls) {
            return Ok(());
        }
        let over = if method == AuthMethod::Password && !self.tls {
            " over a connection without verified TLS"
        } else {
            ""
        };
        Err(auth_err(format!(
            "the server asked for authentication method \"{}\"{over}, which server_auth_methods \
             ({}) does not allow",
            method.name(),
            self.t.auth_methods
        )))
    }

    fn scram_in_progress(&mut self, what: &str) -> Result<&mut Scram, ServerError> {
        match &mut self.scram {
            Some(s) if !self.scram_verified => Ok(s),
            _ => Err(ServerError::malformed(what)),
        }
    }

    fn password(&self) -> Result<&'a Secret, ServerError> {
        self.t.password.as_ref().ok_or_else(|| {
            auth_err(format!(
                "the server asks for a password for {:?} and pgmux has none",
                self.t.user
            ))
        })
    }

    /// The answer to AuthenticationMD5Password, from the password or the
    /// stored md5 hash.
    fn md5_answer(&self, data: &[u8], out: &mut BytesMut) -> Result<(), ServerError> {
        let salt: [u8; 4] = data
            .get(..4)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| ServerError::malformed("MD5 salt"))?;
        let stored = match self.password()? {
            Secret::Plain(p) => crate::auth::md5::stored_hash(&self.t.user, p),
            Secret::Md5(h) => h.clone(),
            Secret::Scram(_) | Secret::ScramKeys(..) => {
                return Err(auth_err(
                    "the server asks for MD5 and pgmux only has a SCRAM verifier",
                ))
            }
        };
        let answer = crate::auth::md5::salted_answer(&stored, salt);
        Ok(encode::password(out, answer.as_bytes())?)
    }

    /// How to bind this exchange, given the server's mechanisms.
    fn binding(&self, offered: &[&[u8]]) -> Result<ClientBinding, ServerError> {
        let plus = offered.contains(&SCRAM_SHA_256_PLUS.as_bytes());
        // Over TLS pgmux says it could bind (`y`) whenever it does not,
        // as libpq does: a server that offered PLUS then sees the
        // downgrade, whatever certificate the middle showed.
        let binding = match (self.t.channel_binding, &self.end_point) {
            (ChannelBinding::Disable, _) => ClientBinding::None,
            (_, Some(data)) if plus => ClientBinding::EndPoint(data.clone()),
            _ if self.encrypted => ClientBinding::Unrequested,
            _ => ClientBinding::None,
        };
        match &binding {
            ClientBinding::EndPoint(_) => Ok(binding),
            _ if self.t.channel_binding == ChannelBinding::Require => Err(auth_err(
                "server_channel_binding is require and SCRAM-SHA-256-PLUS is not possible \
                 (it needs TLS, a certificate with a SHA-2 signature, and the server's offer)",
            )),
            _ if offered.contains(&SCRAM_SHA_256.as_bytes()) => Ok(binding),
            _ => Err(auth_err(
                "the server offers no SASL mechanism pgmux supports",
            )),
        }
    }

    /// Starts SCRAM-SHA-256(-PLUS): with the password, or with a client's
    /// recovered ClientKey (pass-through).
    fn sasl_start(&mut self, list: &[u8], out: &mut BytesMut) -> Result<(), ServerError> {
        let binding = self.binding(&mechanisms(list))?;
        self.bound = matches!(binding, ClientBinding::EndPoint(_));
        let mechanism = if self.bound {
            SCRAM_SHA_256_PLUS
        } else {
            SCRAM_SHA_256
        };
        let scram =
            match self.password()? {
                Secret::Plain(p) => {
                    let cb = match binding {
                        ClientBinding::None => sasl::ChannelBinding::unsupported(),
                        ClientBinding::Unrequested => sasl::ChannelBinding::unrequested(),
                        ClientBinding::EndPoint(d) => sasl::ChannelBinding::tls_server_end_point(d),
                    };
                    let s = ScramSha256::new(p.as_bytes(), cb);
                    encode::sasl_initial_response(out, mechanism, s.message())?;
                    Scram::Password(s)
                }
                Secret::ScramKeys(v, key) => {
                    let s = ScramPassthrough::new(v.clone(), *key, binding);
                    encode::sasl_initial_response(out, mechanism, s.client_first().as_bytes())?;
                    Scram::Passthrough(s)
                }
                _ => return Err(auth_err(
                    "the server asks for SCRAM and pgmux has no plaintext password for this role",
                )),
            };
        self.scram = Some(scram);
        Ok(())
    }
}

/// The names of an AuthenticationSASL mechanism list.
fn mechanisms(mut list: &[u8]) -> Vec<&[u8]> {
    let mut names = Vec::new();
    while let Some((m, tail)) = cstr(list) {
        if m.is_empty() {
            break;
        }
        names.push(m);
        list = tail;
    }
    names
}

/// The channel binding data of the server's certificate, on TLS.
fn end_point(stream: &Stream) -> Option<Vec<u8>> {
    let Stream::Tls(tls) = stream else {
        return None;
    };
    let tokio_rustls::TlsStream::Client(c) = tls.as_ref() else {
        return None;
    };
    let cert = c.get_ref().1.peer_certificates()?.first()?;
    crate::tls::end_point::tls_server_end_point(cert)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HostPort, ServerAuthMethods, TargetSessionAttrs};

    fn target(binding: ChannelBinding, methods: &str) -> ServerTarget {
        ServerTarget {
            hosts: vec![HostPort {
                host: "127.0.0.1".into(),
                port: 5432,
            }],
            target_session_attrs: TargetSessionAttrs::Any,
            load_balance: Default::default(),
            dbname: "d".into(),
            user: "u".into(),
            password: Some(Secret::Plain("hunter2".into())),
            tls_mode: crate::tls::TlsMode::Require,
            tls_ca: None,
            tls_negotiation: Default::default(),
            auth_methods: ServerAuthMethods::parse(methods).unwrap(),
            channel_binding: binding,
        }
    }

    fn request(code: i32, data: &[u8]) -> Vec<u8> {
        let mut b = code.to_be_bytes().to_vec();
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn required_binding_answers_nothing_but_scram() {
        let t = target(ChannelBinding::Require, "password,md5,scram-sha-256,none");
        for (code, data) in [(auth_code::CLEARTEXT, &b""[..]), (auth_code::MD5, b"salt")] {
            let mut auth = ServerAuth::new(&t, &Stream::Gone);
            assert!(auth.step(&request(code, data)).is_err(), "{code}");
        }
        let mut auth = ServerAuth::new(&t, &Stream::Gone);
        assert!(auth.step(&request(auth_code::OK, b"")).is_err());
    }

    #[test]
    fn without_binding_data_the_exchange_is_not_bound() {
        let t = target(ChannelBinding::Prefer, "scram-sha-256");
        let mut auth = ServerAuth::new(&t, &Stream::Gone);
        let out = auth
            .step(&request(
                auth_code::SASL,
                b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0",
            ))
            .unwrap();
        // Not over TLS: `n`, and the plain mechanism.
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.contains("SCRAM-SHA-256\0") && text.contains("n,,"),
            "{text}"
        );
        assert!(
            auth.step(&request(auth_code::OK, b"")).is_err(),
            "OK before the proof"
        );
    }
}
