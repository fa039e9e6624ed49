//! SCRAM channel binding data of type `tls-server-end-point` (RFC 5929):
//! the hash of the server's certificate, with the hash function of the
//! certificate's own signature (SHA-256 in place of MD5 and SHA-1), as
//! PostgreSQL computes it. The certificate comes from the peer over the
//! network, so it is walked by this module's checked DER reader, which
//! reads only the signature algorithm's identifier.

use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

/// `1.2.840.113549.1.1.x`: RSA signatures; the last arc names the hash.
const RSA_PREFIX: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
/// `1.2.840.10045.4.3.x`: ECDSA with a SHA-2 hash.
const ECDSA_SHA2_PREFIX: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
/// `1.2.840.10045.4.1`: ECDSA with SHA-1.
const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];

/// The hash a certificate is bound with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// The channel binding data for a DER certificate, or `None` when its
/// signature algorithm names no usable hash (Ed25519, RSA-PSS: PostgreSQL
/// does not bind those either) or the DER is malformed.
pub fn tls_server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    Some(match signature_hash(cert)? {
        Hash::Sha224 => Sha224::digest(cert).to_vec(),
        Hash::Sha256 => Sha256::digest(cert).to_vec(),
        Hash::Sha384 => Sha384::digest(cert).to_vec(),
        Hash::Sha512 => Sha512::digest(cert).to_vec(),
    })
}

/// The hash of `Certificate.signatureAlgorithm`.
fn signature_hash(cert: &[u8]) -> Option<Hash> {
    let (body, _) = tlv(cert, 0x30)?;
    let (_tbs, rest) = tlv(body, 0x30)?;
    let (alg, _) = tlv(rest, 0x30)?;
    let (oid, _) = tlv(alg, 0x06)?;
    if let Some(arc) = oid.strip_prefix(RSA_PREFIX) {
        return match arc {
            [4] | [5] | [11] => Some(Hash::Sha256),
            [12] => Some(Hash::Sha384),
            [13] => Some(Hash::Sha512),
            [14] => Some(Hash::Sha224),
            _ => None,
        };
    }
    if oid == ECDSA_SHA1 {
        return Some(Hash::Sha256);
    }
    match oid.strip_prefix(ECDSA_SHA2_PREFIX)? {
        [1] => Some(Hash::Sha224),
        [2] => Some(Hash::Sha256),
        [3] => Some(Hash::Sha384),
        [4] => Some(Hash::Sha512),
        _ => None,
    }
}

/// One DER element of type `tag` at the start of `der`: its content and
/// what follows it. Lengths are checked against what is there.
fn tlv(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = der.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = rest.get(..n)?;
        let len = bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    Some((rest.get(..len)?, &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_follows_the_signature() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der();
        assert_eq!(signature_hash(der), Some(Hash::Sha384));
        assert_eq!(tls_server_end_point(der).unwrap().len(), 48);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(signature_hash(cert.der()), Some(Hash::Sha256));
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(tls_server_end_point(cert.der()), None);
    }

    #[test]
    fn truncated_der_is_none() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().to_vec();
        for n in 0..der.len() {
            assert_eq!(tls_server_end_point(&der[..n]), None);
        }
        assert_eq!(
            tls_server_end_point(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            None
        );
    }
}
