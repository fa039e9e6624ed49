//! Client authentication: which exchange a client goes through (`auth_type`,
//! or the first matching `auth_hba_file` rule), then md5 or SCRAM-SHA-256
//! against the stored secret (or trust), over the login's read buffer.

use bytes::BytesMut;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{fatal, LoginError};
use std::net::IpAddr;

use crate::auth::hba::{self, Verdict};
use crate::auth::{md5, scram::ScramServer, Method, ScramVerifier, Secret, UserAuth};
use crate::config::Config;
use crate::protocol::frame::{cstr, make_room, read_i32, split_frame};
use crate::protocol::{encode, fe, SqlState};
use crate::tls::Stream;
use postgres_protocol::authentication::sasl::{SCRAM_SHA_256, SCRAM_SHA_256_PLUS};

/// Largest authentication message accepted from a client.
const MAX_AUTH_MESSAGE: usize = 10_000;

/// The client's end of the exchange: its socket, the login's read buffer,
/// and messages queued for it (flushed with the next request).
pub struct Exchange<'a> {
    /// The client socket.
    pub stream: &'a mut Stream,
    /// Bytes read and not yet used.
    pub buf: &'a mut BytesMut,
    /// Messages to send.
    pub out: &'a mut BytesMut,
    /// Channel binding data of the client's TLS connection: with it,
    /// SCRAM-SHA-256-PLUS is offered.
    pub end_point: Option<&'a [u8]>,
    /// What a user with no SCRAM secret is challenged with under SCRAM
    /// (one stored as an md5 hash): an exchange no password passes, as
    /// PostgreSQL runs, so that it fails as a wrong password does. Made
    /// only then, from the process's key and the users' iteration count.
    pub mock: (&'a [u8; 32], u32),
}

impl Exchange<'_> {
    /// Sends what is queued and reads the client's answer.
    async fn ask(&mut self) -> Result<bytes::Bytes, LoginError> {
        self.stream.write_all(self.out).await?;
        self.out.clear();
        read_password(self.stream, self.buf).await
    }
}

fn failed(user: &str) -> LoginError {
    fatal(
        SqlState::INVALID_PASSWORD,
        format!("password authentication failed for user \"{user}\""),
    )
}

/// The exchange a client goes through: `auth_type`'s, or with `hba` the
/// first rule of `auth_hba_file` matching it, decided before anything
/// about the user is looked up, as PostgreSQL does (a refused client costs
/// no `auth_query`). Refusals are PostgreSQL's 28000 in its words.
pub fn method(
    cfg: &Config,
    addr: IpAddr,
    tls: bool,
    database: &str,
    user: &str,
) -> Result<Method, LoginError> {
    if let Some(m) = cfg.pgmux.auth_type.method() {
        return Ok(m);
    }
    let client = hba::Client {
        addr,
        tls,
        database,
        user,
    };
    // Validation requires the file with `hba`; without rules nobody is let in.
    let verdict = cfg
        .hba
        .as_ref()
        .map_or(Verdict::Refuse(None), |rules| rules.decide(&client));
    match verdict {
        Verdict::Allow(m, line) => {
            tracing::debug!(line, ?m, "auth_hba_file rule matched");
            Ok(m)
        }
        Verdict::Refuse(line) => {
            tracing::debug!(?line, %addr, database, user, "refused by auth_hba_file");
            Err(fatal(
                SqlState::INVALID_AUTHORIZATION,
                hba::refusal(&client, line.is_some()),
            ))
        }
    }
}

/// Runs the chosen authentication exchange. Returns the ClientKey a
/// SCRAM proof revealed (for pass-through to the server).
pub async fn authenticate(
    ex: &mut Exchange<'_>,
    method: Method,
    user: &str,
    auth: &UserAuth,
) -> Result<Option<[u8; 32]>, LoginError> {
    match method {
        Method::Trust => Ok(None),
        // As in PostgreSQL, md5 falls back to SCRAM for users stored as a SCRAM verifier.
        Method::Md5 if !matches!(auth.secret, Secret::Scram(_)) => {
            md5_exchange(ex, user, auth).await
        }
        Method::Md5 | Method::ScramSha256 => scram_exchange(ex, user, auth).await.map(Some),
    }
}

async fn md5_exchange(
    ex: &mut Exchange<'_>,
    user: &str,
    auth: &UserAuth,
) -> Result<Option<[u8; 32]>, LoginError> {
    let mut salt = [0u8; 4];
    rand::rng().fill_bytes(&mut salt);
    encode::auth_md5(ex.out, salt);
    let answer = ex.ask().await?;
    let answer = cstr(&answer).map(|(a, _)| a).unwrap_or(&answer);
    match md5::verify(&auth.secret, user, salt, answer) {
        Some(true) => Ok(None),
        _ => Err(failed(user)),
    }
}

async fn scram_exchange(
    ex: &mut Exchange<'_>,
    user: &str,
    auth: &UserAuth,
) -> Result<[u8; 32], LoginError> {
    let mock;
    let verifier = match &auth.scram {
        Some(v) => v,
        None => {
            tracing::info!(
                user,
                "SCRAM login of a user stored as an md5 hash: it cannot pass"
            );
            mock = ScramVerifier::mock(user, ex.mock.0, ex.mock.1);
            &mock
        }
    };
    // PostgreSQL lists the bound mechanism first.
    let offered: &[&str] = match ex.end_point {
        Some(_) => &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256],
        None => &[SCRAM_SHA_256],
    };
    encode::auth_sasl(ex.out, offered);
    let initial = ex.ask().await?;
    let (plus, data) = sasl_initial_data(&initial, offered)?;
    let (server, first) =
        ScramServer::start(verifier, data, ex.end_point, plus).map_err(|_| failed(user))?;
    encode::auth_sasl_continue(ex.out, first.as_bytes());
    let fin = ex.ask().await?;
    let (last, client_key) = server.finish(&fin).map_err(|_| failed(user))?;
    encode::auth_sasl_final(ex.out, last.as_bytes());
    Ok(client_key)
}

/// The client-first-message inside a SASLInitialResponse body, and whether
/// the client chose SCRAM-SHA-256-PLUS (from the mechanisms `offered`).
fn sasl_initial_data<'b>(body: &'b [u8], offered: &[&str]) -> Result<(bool, &'b [u8]), LoginError> {
    let malformed = |what: &str| {
        fatal(
            SqlState::PROTOCOL_VIOLATION,
            format!("malformed SASL message: {what}"),
        )
    };
    let (mechanism, rest) = cstr(body).ok_or_else(|| malformed("no mechanism"))?;
    if !offered.iter().any(|m| m.as_bytes() == mechanism) {
        return Err(malformed("unsupported mechanism"));
    }
    let (len, data) = read_i32(rest).ok_or_else(|| malformed("no length"))?;
    if len < 0 || len as usize != data.len() {
        return Err(malformed("bad length"));
    }
    Ok((mechanism == SCRAM_SHA_256_PLUS.as_bytes(), data))
}

/// Reads one tagged message of the authentication exchange: must be `p`.
async fn read_password(
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Result<bytes::Bytes, LoginError> {
    loop {
        match split_frame(buf, MAX_AUTH_MESSAGE) {
            Ok(Some(f)) if f.tag() == fe::PASSWORD => return Ok(f.raw().slice(5..)),
            Ok(Some(f)) => {
                return Err(fatal(
                    SqlState::PROTOCOL_VIOLATION,
                    format!(
                        "expected password response, got message type {:?}",
                        f.tag() as char
                    ),
                ))
            }
            Ok(None) => {}
            Err(e) => return Err(fatal(SqlState::PROTOCOL_VIOLATION, e.to_string())),
        }
        make_room(buf, 64, 512);
        if stream.read_buf(buf).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
}
