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
    /// The iteration count of its key derivation.
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

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

    /// A verifier that no password matches, for a user that does not
    /// exist: its salt depends only on the name and `key` (the same at every
    /// attempt, as a real user's), its iterations are the real users'
    /// (`iterations`), so the exchange does not tell an unknown user from a
    /// wrong password.
    pub fn mock(user: &str, key: &[u8; 32], iterations: u32) -> Self {
        let salt = hmac(key, &[b"mock salt ", user.as_bytes()]);
        let mut keys = [0u8; 64];
        rand::rng().fill_bytes(&mut keys);
        Self {
            iterations,
            salt: salt[..16].to_vec(),
            stored_key: keys[..32].to_vec(),
            server_key: keys[32..].to_vec(),
        }
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
    /// What the client's `c=` must decode to: its gs2 header and, with
    /// channel binding, the binding data.
    cbind: Vec<u8>,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl ScramServer {
    /// Takes the client-first message; returns the server-first message to
    /// send. `offered` is the channel binding data of the client's TLS
    /// connection when SCRAM-SHA-256-PLUS was offered, `plus` whether the
    /// client chose it.
    pub fn start(
        verifier: &ScramVerifier,
        client_first: &[u8],
        offered: Option<&[u8]>,
        plus: bool,
    ) -> Result<(Self, String), ScramError> {
        let msg =
            std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        // gs2-header: cbind flag, optional authzid, then the bare message.
        let (flag, rest) = msg
            .split_once(',')
            .ok_or(ScramError::Malformed("no gs2 header"))?;
        let binding: &[u8] =
            match (flag, offered) {
                ("n", _) if !plus => &[],
                // The client can bind but believes pgmux cannot: it was
                // offered PLUS, so something in between removed it.
                ("y", None) if !plus => &[],
                ("y", Some(_)) => return Err(ScramError::Malformed(
                    "the client supports channel binding, which was offered, and did not use it",
                )),
                ("p=tls-server-end-point", Some(data)) if plus => data,
                (f, _) if f.starts_with("p=") && plus => {
                    return Err(ScramError::Malformed("unsupported channel binding type"))
                }
                _ => {
                    return Err(ScramError::Malformed(
                        "channel binding flag does not match the mechanism",
                    ))
                }
            };
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
        let mut cbind = format!("{flag},,").into_bytes();
        cbind.extend_from_slice(binding);
        Ok((
            Self {
                verifier: verifier.clone(),
                cbind,
                client_first_bare: bare.to_owned(),
                server_first: server_first.clone(),
                nonce,
            },
            server_first,
        ))
    }

    /// Takes the client-final message; returns the server-final message
    /// when the proof is right, and the ClientKey the proof revealed (with
    /// the verifier it is enough to log in to a server that stores the same
    /// verifier: SCRAM pass-through).
    pub fn finish(self, client_final: &[u8]) -> Result<(String, [u8; 32]), ScramError> {
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
        if STANDARD.decode(cbind).ok().as_deref() != Some(self.cbind.as_slice()) {
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
        let key: [u8; 32] = client_key
            .as_slice()
            .try_into()
            .map_err(|_| ScramError::BadProof)?;
        Ok((format!("v={}", STANDARD.encode(server_signature)), key))
    }
}

/// Channel binding on pgmux's side of an exchange with a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientBinding {
    /// Not over TLS, or disabled: `n`.
    None,
    /// pgmux could bind but the server offered no SCRAM-SHA-256-PLUS: `y`,
    /// so a server that did offer it sees the downgrade.
    Unrequested,
    /// SCRAM-SHA-256-PLUS with this `tls-server-end-point` data.
    EndPoint(Vec<u8>),
}

impl ClientBinding {
    fn gs2_header(&self) -> &'static str {
        match self {
            Self::None => "n,,",
            Self::Unrequested => "y,,",
            Self::EndPoint(_) => "p=tls-server-end-point,,",
        }
    }
}

/// The client side of SCRAM-SHA-256 without the password: proves knowledge
/// of the ClientKey recovered from a client's own SCRAM login, toward a
/// server holding the same verifier (same salt and iterations).
pub struct ScramPassthrough {
    verifier: ScramVerifier,
    client_key: [u8; 32],
    binding: ClientBinding,
    client_first_bare: String,
    expected_server_signature: Option<[u8; 32]>,
}

impl ScramPassthrough {
    /// Starts an exchange.
    pub fn new(verifier: ScramVerifier, client_key: [u8; 32], binding: ClientBinding) -> Self {
        let mut raw = [0u8; 18];
        rand::rng().fill_bytes(&mut raw);
        Self {
            verifier,
            client_key,
            binding,
            client_first_bare: format!("n=,r={}", STANDARD.encode(raw)),
            expected_server_signature: None,
        }
    }

    /// The client-first message.
    pub fn client_first(&self) -> String {
        format!("{}{}", self.binding.gs2_header(), self.client_first_bare)
    }

    /// Answers the server-first message with the client-final message.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<String, ScramError> {
        let sf =
            std::str::from_utf8(server_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let attr = |k: &str| sf.split(',').find_map(|a| a.strip_prefix(k));
        let nonce = attr("r=").ok_or(ScramError::Malformed("no nonce"))?;
        let ours = self
            .client_first_bare
            .rsplit_once("r=")
            .map(|(_, n)| n)
            .unwrap_or_default();
        if !nonce.starts_with(ours) {
            return Err(ScramError::Malformed("server nonce does not extend ours"));
        }
        let salt = attr("s=").and_then(|s| STANDARD.decode(s).ok());
        let iterations = attr("i=").and_then(|i| i.parse::<u32>().ok());
        if salt.as_deref() != Some(self.verifier.salt.as_slice())
            || iterations != Some(self.verifier.iterations)
        {
            return Err(ScramError::Malformed(
                "the server's SCRAM secret differs from the one pgmux looked up",
            ));
        }
        let mut cbind = self.binding.gs2_header().as_bytes().to_vec();
        if let ClientBinding::EndPoint(data) = &self.binding {
            cbind.extend_from_slice(data);
        }
        let without_proof = format!("c={},r={nonce}", STANDARD.encode(cbind));
        let auth_message = format!("{},{sf},{without_proof}", self.client_first_bare);
        let signature = hmac(&self.verifier.stored_key, &[auth_message.as_bytes()]);
        let proof: Vec<u8> = self
            .client_key
            .iter()
            .zip(signature.iter())
            .map(|(a, b)| a ^ b)
            .collect();
        self.expected_server_signature =
            Some(hmac(&self.verifier.server_key, &[auth_message.as_bytes()]));
        Ok(format!("{without_proof},p={}", STANDARD.encode(proof)))
    }

    /// Checks the server-final message: the server knew the verifier too.
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let sf =
            std::str::from_utf8(server_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let got = sf.strip_prefix("v=").and_then(|v| STANDARD.decode(v).ok());
        match (got, self.expected_server_signature) {
            (Some(g), Some(e)) if constant_time_eq(&g, &e) => Ok(()),
            _ => Err(ScramError::BadProof),
        }
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
        let (server, first) = ScramServer::start(&verifier, client.message(), None, false)?;
        client.update(first.as_bytes()).unwrap();
        let (fin, _) = server.finish(client.message())?;
        client.finish(fin.as_bytes()).unwrap();
        Ok(())
    }

    /// A verifier for "pw", and the ClientKey pgmux learns from a client's
    /// SCRAM login with it.
    fn learned_client_key() -> (ScramVerifier, [u8; 32]) {
        let verifier =
            ScramVerifier::parse(&postgres_protocol::password::scram_sha_256(b"pw")).unwrap();
        let mut client = ScramSha256::new(b"pw", ChannelBinding::unsupported());
        let (server, first) = ScramServer::start(&verifier, client.message(), None, false).unwrap();
        client.update(first.as_bytes()).unwrap();
        let (_, client_key) = server.finish(client.message()).unwrap();
        (verifier, client_key)
    }

    #[test]
    fn passthrough_logs_in_with_the_recovered_client_key() {
        // A client logs in to pgmux; pgmux learns its ClientKey.
        let (verifier, client_key) = learned_client_key();
        // pgmux logs in to a server holding the same verifier.
        let mut pass = ScramPassthrough::new(verifier.clone(), client_key, ClientBinding::None);
        let (backend, first) =
            ScramServer::start(&verifier, pass.client_first().as_bytes(), None, false).unwrap();
        let fin = pass.client_final(first.as_bytes()).unwrap();
        let (server_final, _) = backend.finish(fin.as_bytes()).unwrap();
        pass.verify_server_final(server_final.as_bytes()).unwrap();
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
            assert!(ScramServer::start(&verifier, msg, None, false).is_err());
        }
        let (s, _) = ScramServer::start(&verifier, b"n,,n=,r=abc", None, false).unwrap();
        assert!(s.finish(b"c=biws,r=abc,p=AAAA").is_err());
    }

    #[test]
    fn channel_binding_with_a_real_client() {
        let verifier =
            ScramVerifier::parse(&postgres_protocol::password::scram_sha_256(b"pw")).unwrap();
        let data = b"certificate hash".to_vec();
        let bound = |client_data: &[u8], offered: Option<&[u8]>, plus: bool| {
            let mut client = ScramSha256::new(
                b"pw",
                ChannelBinding::tls_server_end_point(client_data.to_vec()),
            );
            let (server, first) = ScramServer::start(&verifier, client.message(), offered, plus)?;
            client.update(first.as_bytes()).unwrap();
            server.finish(client.message()).map(|_| ())
        };
        bound(&data, Some(&data), true).unwrap();
        // Another certificate in between: the binding differs.
        assert!(bound(b"other", Some(&data), true).is_err());
        // PLUS chosen but pgmux offered none, or p= with the plain mechanism.
        assert!(bound(&data, None, true).is_err());
        assert!(bound(&data, Some(&data), false).is_err());
        // A client that can bind but saw no PLUS offer, when one was made.
        let client = ScramSha256::new(b"pw", ChannelBinding::unrequested());
        assert!(ScramServer::start(&verifier, client.message(), Some(&data), false).is_err());
        assert!(ScramServer::start(&verifier, client.message(), None, false).is_ok());
    }

    #[test]
    fn passthrough_binds_to_the_channel() {
        let (verifier, client_key) = learned_client_key();
        let data = b"hash".to_vec();
        let mut pass = ScramPassthrough::new(
            verifier.clone(),
            client_key,
            ClientBinding::EndPoint(data.clone()),
        );
        let (backend, first) =
            ScramServer::start(&verifier, pass.client_first().as_bytes(), Some(&data), true)
                .unwrap();
        let fin = pass.client_final(first.as_bytes()).unwrap();
        let (server_final, _) = backend.finish(fin.as_bytes()).unwrap();
        pass.verify_server_final(server_final.as_bytes()).unwrap();
    }
}
