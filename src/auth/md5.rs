//! MD5 password authentication (`AuthenticationMD5Password`).

use md5::{Digest, Md5};

use super::{constant_time_eq, Secret};

fn md5_hex(parts: &[&[u8]]) -> String {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    let digest = h.finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// `md5` + hex(md5(password + user)): the form PostgreSQL stores.
pub fn stored_hash(user: &str, password: &str) -> String {
    format!("md5{}", md5_hex(&[password.as_bytes(), user.as_bytes()]))
}

/// Checks a client's PasswordMessage answer to an MD5 challenge with `salt`.
/// Returns `None` when the secret can't be checked this way (a SCRAM verifier).
pub fn verify(secret: &Secret, user: &str, salt: [u8; 4], response: &[u8]) -> Option<bool> {
    let stored = match secret {
        Secret::Plain(p) => stored_hash(user, p),
        Secret::Md5(h) => h.clone(),
        Secret::Scram(_) | Secret::ScramKeys(..) => return None,
    };
    Some(constant_time_eq(
        salted_answer(&stored, salt).as_bytes(),
        response,
    ))
}

/// The answer to an MD5 challenge given the stored `md5<hex>` hash: what a
/// client sends, and what pgmux sends to a server.
pub fn salted_answer(stored: &str, salt: [u8; 4]) -> String {
    let hex = stored.strip_prefix("md5").unwrap_or(stored);
    format!("md5{}", md5_hex(&[hex.as_bytes(), &salt]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_libpq() {
        // libpq's answer is md5(md5(password + user) + salt), as built by postgres-protocol.
        let salt = [1, 2, 3, 4];
        let answer = postgres_protocol::authentication::md5_hash(b"alice", b"pw", salt);
        assert_eq!(
            verify(
                &Secret::Plain("pw".into()),
                "alice",
                salt,
                answer.as_bytes()
            ),
            Some(true)
        );
        let stored = Secret::parse(&stored_hash("alice", "pw"));
        assert_eq!(
            verify(&stored, "alice", salt, answer.as_bytes()),
            Some(true)
        );
        assert_eq!(
            verify(
                &Secret::Plain("no".into()),
                "alice",
                salt,
                answer.as_bytes()
            ),
            Some(false)
        );
    }
}
