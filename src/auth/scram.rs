//! SCRAM-SHA-256 (RFC 5802/7677) from the server's side, checked against a
//! stored verifier so the client's password never has to be in the config.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use rand::Rng;
use sha2::{Digest, Sha256};

use super::constant_time_eq;

/// A parsed `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ScramVerifier(iterations={}, ********)", self.iterations)
    }
}

impl ScramVerifier {
    /// Parses PostgreSQL's verifier format; `None` if `s` is not one.
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix("SCRAM-SHA-256$")?;
        let (iter_salt, keys) = rest.split_once('$')?;
        let (iterations, salt) = iter_salt.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let v = Self {
            iterations: iterations.parse().ok()?,
            salt: STANDARD.decode(salt).ok()?,
            stored_key: STANDARD.decode(stored).ok()?,
            server_key: STANDARD.decode(server).ok()?,
        };
        (v.stored_key.len() == 32 && v.server_key.len() == 32).then_some(v)
    }
}

/// Why a SCRAM exchange failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    /// The client's message does not follow the protocol.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The proof did not match: wrong password.
    #[error("password authentication failed")]
    BadProof,
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any size");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// The server side of one exchange, after the server-first message.
pub struct ScramServer {
    verifier: ScramVerifier,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl ScramServer {
    /// Takes the client-first message; returns the server-first message to send.
    pub fn start(
        verifier: &ScramVerifier,
        client_first: &[u8],
    ) -> Result<(Self, String), ScramError> {
        let msg =
            std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        // gs2-header: cbind flag, optional authzid, then the bare message.
        let (flag, rest) = msg
            .split_once(',')
            .ok_or(ScramError::Malformed("no gs2 header"))?;
        match flag {
            "n" | "y" => {}
            _ => return Err(ScramError::Malformed("channel binding is not offered")),
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("no gs2 header"))?;
        if !authzid.is_empty() {
            return Err(ScramError::Malformed("authzid is not supported"));
        }
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
            .ok_or(ScramError::Malformed("no client nonce"))?;
        let mut raw = [0u8; 18];
        rand::rng().fill_bytes(&mut raw);
        let nonce = format!("{client_nonce}{}", STANDARD.encode(raw));
        let server_first = format!(
            "r={nonce},s={},i={}",
            STANDARD.encode(&verifier.salt),
            verifier.iterations
        );
        let gs2_header = format!("{flag},,");
        Ok((
            Self {
                verifier: verifier.clone(),
                gs2_header,
                client_first_bare: bare.to_owned(),
                server_first: server_first.clone(),
                nonce,
            },
            server_first,
        ))
    }

    /// Takes the client-final message; returns the server-final message
    /// when the proof is right.
    pub fn finish(self, client_final: &[u8]) -> Result<String, ScramError> {
        let msg =
            std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut attrs = without_proof.split(',');
        let cbind = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed("no channel binding attribute"))?;
        if STANDARD.decode(cbind).ok().as_deref() != Some(self.gs2_header.as_bytes()) {
            return Err(ScramError::Malformed("channel binding does not match"));
        }
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("no nonce"))?;
        if nonce != self.nonce {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        let proof = STANDARD
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        if proof.len() != 32 {
            return Err(ScramError::BadProof);
        }
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let v = &self.verifier;
        let client_signature = hmac(&v.stored_key, &[auth_message.as_bytes()]);
        let client_key: Vec<u8> = proof
            .iter()
            .zip(client_signature.iter())
            .map(|(a, b)| a ^ b)
            .collect();
        let stored = Sha256::digest(&client_key);
        if !constant_time_eq(&stored, &v.stored_key) {
            return Err(ScramError::BadProof);
        }
        let server_signature = hmac(&v.server_key, &[auth_message.as_bytes()]);
        Ok(format!("v={}", STANDARD.encode(server_signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    fn exchange(stored_pw: &[u8], client_pw: &[u8]) -> Result<(), ScramError> {
        let verifier =
            ScramVerifier::parse(&postgres_protocol::password::scram_sha_256(stored_pw)).unwrap();
        let mut client = ScramSha256::new(client_pw, ChannelBinding::unsupported());
        let (server, first) = ScramServer::start(&verifier, client.message())?;
        client.update(first.as_bytes()).unwrap();
        let fin = server.finish(client.message())?;
        client.finish(fin.as_bytes()).unwrap();
        Ok(())
    }

    #[test]
    fn real_client_round_trip() {
        exchange(b"secret", b"secret").unwrap();
        assert_eq!(exchange(b"secret", b"wrong"), Err(ScramError::BadProof));
    }

    #[test]
    fn garbage_is_malformed_not_panic() {
        let verifier =
            ScramVerifier::parse(&postgres_protocol::password::scram_sha_256(b"x")).unwrap();
        for msg in [
            &b""[..],
            b"n",
            b"p=x,,n=,r=a",
            b"n,,",
            b"\xff\xfe",
            b"n,a=b,r=x",
        ] {
            assert!(ScramServer::start(&verifier, msg).is_err());
        }
        let (s, _) = ScramServer::start(&verifier, b"n,,n=,r=abc").unwrap();
        assert!(s.finish(b"c=biws,r=abc,p=AAAA").is_err());
    }
}
