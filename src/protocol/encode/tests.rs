//! Every encoder's output read back by the other side's parser: what pgmux
//! sends clients through postgres-protocol's backend parser (what
//! tokio-postgres reads with) where it needs nothing more, else pgwire's;
//! what it sends servers through pgwire's frontend decoders. pgwire's
//! decoders trust their input, which is fine for bytes pgmux wrote.

use bytes::{Buf, BytesMut};
use pgwire::messages::data::{DataRow, RowDescription};
use pgwire::messages::extendedquery::{Bind, Close, Describe, Execute, Parse, Sync};
use pgwire::messages::response::{ErrorResponse, GssEncResponse, SslResponse};
use pgwire::messages::simplequery::Query;
use pgwire::messages::startup::{
    Authentication, NegotiateProtocolVersion, PasswordMessageFamily, SecretKey, SslRequest, Startup,
};
use pgwire::messages::terminate::Terminate;
use pgwire::messages::{cancel::CancelRequest, copy::CopyFail, DecodeContext, Message};
use postgres_protocol::message::backend;

use super::*;
use crate::protocol::frame::split_frame;

/// Takes one message off the front of `out` with pgwire's decoder.
pub(super) fn decode<M: Message>(out: &mut BytesMut) -> M {
    M::decode(out, &DecodeContext::default())
        .expect("decodes")
        .expect("complete")
}

/// Takes one message off the front of `out` with postgres-protocol's
/// backend parser.
fn backend(out: &mut BytesMut) -> backend::Message {
    backend::Message::parse(out)
        .expect("parses")
        .expect("complete")
}

fn done(out: &BytesMut) {
    assert!(!out.has_remaining(), "{} bytes left over", out.len());
}

#[test]
fn client_messages_read_back() {
    let mut out = BytesMut::new();
    auth_ok(&mut out);
    auth_md5(&mut out, [1, 2, 3, 4]);
    auth_sasl_continue(&mut out, b"r=abc,s=c2FsdA==,i=4096");
    auth_sasl_final(&mut out, b"v=proof");
    parameter_status(&mut out, "TimeZone", "Europe/Paris");
    backend_key_data(&mut out, 7, -9);
    ready_for_query(&mut out, TxStatus::Failed);
    command_complete(&mut out, "DEALLOCATE");
    out.extend_from_slice(&parse_complete());
    out.extend_from_slice(&close_complete());
    assert!(matches!(
        backend(&mut out),
        backend::Message::AuthenticationOk
    ));
    let backend::Message::AuthenticationMd5Password(b) = backend(&mut out) else {
        panic!("not AuthenticationMd5Password")
    };
    assert_eq!(b.salt(), [1, 2, 3, 4]);
    let backend::Message::AuthenticationSaslContinue(b) = backend(&mut out) else {
        panic!("not AuthenticationSaslContinue")
    };
    assert_eq!(b.data(), b"r=abc,s=c2FsdA==,i=4096");
    let backend::Message::AuthenticationSaslFinal(b) = backend(&mut out) else {
        panic!("not AuthenticationSaslFinal")
    };
    assert_eq!(b.data(), b"v=proof");
    let backend::Message::ParameterStatus(b) = backend(&mut out) else {
        panic!("not ParameterStatus")
    };
    assert_eq!(b.name().unwrap(), "TimeZone");
    assert_eq!(b.value().unwrap(), "Europe/Paris");
    let backend::Message::BackendKeyData(b) = backend(&mut out) else {
        panic!("not BackendKeyData")
    };
    assert_eq!((b.process_id(), b.secret_key()), (7, -9));
    let backend::Message::ReadyForQuery(b) = backend(&mut out) else {
        panic!("not ReadyForQuery")
    };
    assert_eq!(b.status(), b'E');
    let backend::Message::CommandComplete(b) = backend(&mut out) else {
        panic!("not CommandComplete")
    };
    assert_eq!(b.tag().unwrap(), "DEALLOCATE");
    assert!(matches!(backend(&mut out), backend::Message::ParseComplete));
    assert!(matches!(backend(&mut out), backend::Message::CloseComplete));
    done(&out);

    auth_sasl(&mut out, &["SCRAM-SHA-256"]);
    negotiate_protocol_version(&mut out, PROTOCOL_3_0, &["_pq_.x\0y".to_owned()]);
    row_description(&mut out, &[("name", 25), ("n", 20)]);
    match decode(&mut out) {
        Authentication::SASL(m) => assert_eq!(m, ["SCRAM-SHA-256"]),
        m => panic!("{m:?}"),
    }
    let v: NegotiateProtocolVersion = decode(&mut out);
    assert_eq!(v.newest_minor_protocol, 196_608);
    assert_eq!(v.unsupported_options, ["_pq_.xy"]);
    let t: RowDescription = decode(&mut out);
    let cols: Vec<_> = t
        .fields
        .iter()
        .map(|f| (f.name.as_str(), f.type_id))
        .collect();
    assert_eq!(cols, [("name", 25), ("n", 20)]);
    done(&out);
}

#[test]
fn data_rows_read_back_and_are_checked() {
    let mut out = BytesMut::new();
    data_row(&mut out, &[Some("x".into()), None, Some(String::new())]).unwrap();
    let row: DataRow = decode(&mut out.clone());
    assert_eq!(row.field_count, 3);
    assert_eq!(&row.data[..], b"\0\0\0\x01x\xff\xff\xff\xff\0\0\0\0");
    let backend::Message::DataRow(b) = backend(&mut out) else {
        panic!("not DataRow")
    };
    assert_eq!(b.buffer(), &row.data[..]);
    // More values than an i16 counts: an error, nothing written.
    let many = vec![None; 1 << 15];
    assert_eq!(
        data_row(&mut out, &many),
        Err(EncodeError::TooMany {
            message: "DataRow",
            count: 1 << 15
        })
    );
    assert!(out.is_empty());
    data_row(&mut out, &many[1..]).unwrap();
}

#[test]
fn errors_read_back_as_written_before() {
    let mut out = BytesMut::new();
    write_error(&mut out, Severity::Fatal, "08P01", "bad\0 message");
    let expected = b"E\0\0\0\x27SFATAL\0VFATAL\0C08P01\0Mbad message\0\0".to_vec();
    assert_eq!(&out[..], &expected[..]);
    write_error_fields(&mut out, Severity::Error, "42P05", "m", Some("d"));
    let e: ErrorResponse = decode(&mut out.split_to(expected.len()));
    assert_eq!(e.fields[3], (b'M', "bad message".to_owned()));
    let e: ErrorResponse = decode(&mut out);
    let fields: Vec<_> = e.fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(
        fields,
        [
            (b'S', "ERROR"),
            (b'V', "ERROR"),
            (b'C', "42P05"),
            (b'M', "m"),
            (b'D', "d")
        ]
    );
    done(&out);
    // What pgmux reads from a server reads what it writes, too.
    write_error(&mut out, Severity::Error, "57P01", "bye");
    let f = split_frame(&mut out, 1024).unwrap().unwrap();
    let read = crate::protocol::ErrorFields::parse(f.body()).unwrap();
    assert_eq!(
        (read.severity, read.code, read.message),
        (&b"ERROR"[..], &b"57P01"[..], &b"bye"[..])
    );
}

#[test]
fn encryption_answers_are_single_bytes() {
    assert_eq!((SSL_ACCEPTED, ENCRYPTION_REFUSED), (&b"S"[..], &b"N"[..]));
    let ssl = |b: &[u8]| SslResponse::decode(&mut BytesMut::from(b), &DecodeContext::default());
    assert_eq!(ssl(SSL_ACCEPTED).unwrap(), Some(SslResponse::Accept));
    assert_eq!(ssl(ENCRYPTION_REFUSED).unwrap(), Some(SslResponse::Refuse));
    let gss = GssEncResponse::decode(
        &mut BytesMut::from(ENCRYPTION_REFUSED),
        &DecodeContext::default(),
    );
    assert_eq!(gss.unwrap(), Some(GssEncResponse::Refuse));
}

#[test]
fn server_messages_read_back() {
    let mut out = BytesMut::new();
    startup(&mut out, &[("user", "app"), ("database", "db")]).unwrap();
    ssl_request(&mut out);
    cancel_request(&mut out, 7, -9);
    let s: Startup = decode(&mut out);
    assert_eq!((s.protocol_number_major, s.protocol_number_minor), (3, 0));
    assert_eq!(s.parameters["user"], "app");
    assert_eq!(s.parameters["database"], "db");
    let _: SslRequest = decode(&mut out);
    let c: CancelRequest = decode(&mut out);
    assert_eq!(c.pid, 7);
    assert!(
        c.secret_key.eq_value(&SecretKey::I32(-9)),
        "{:?}",
        c.secret_key
    );
    done(&out);

    password(&mut out, b"md5abc").unwrap();
    sasl_initial_response(&mut out, "SCRAM-SHA-256", b"n,,n=,r=x").unwrap();
    sasl_response(&mut out, b"c=biws,r=xy,p=z").unwrap();
    let p = decode::<PasswordMessageFamily>(&mut out)
        .into_password()
        .unwrap();
    assert_eq!(p.password, "md5abc");
    let i = decode::<PasswordMessageFamily>(&mut out)
        .into_sasl_initial_response()
        .unwrap();
    assert_eq!(i.auth_method, "SCRAM-SHA-256");
    assert_eq!(i.data.as_deref(), Some(&b"n,,n=,r=x"[..]));
    let r = decode::<PasswordMessageFamily>(&mut out)
        .into_sasl_response()
        .unwrap();
    assert_eq!(&r.data[..], b"c=biws,r=xy,p=z");
    done(&out);

    query(&mut out, "select 1").unwrap();
    close_statement(&mut out, b"pgmux_1");
    describe_statement(&mut out, b"pgmux_2");
    sync(&mut out);
    copy_fail(&mut out, "gone");
    failing_parse(&mut out);
    out.extend_from_slice(terminate());
    assert_eq!(decode::<Query>(&mut out).query, "select 1");
    let c: Close = decode(&mut out);
    assert_eq!((c.target_type, c.name.as_deref()), (b'S', Some("pgmux_1")));
    let d: Describe = decode(&mut out);
    assert_eq!((d.target_type, d.name.as_deref()), (b'S', Some("pgmux_2")));
    let _: Sync = decode(&mut out);
    assert_eq!(decode::<CopyFail>(&mut out).message, "gone");
    let p: Parse = decode(&mut out);
    assert_eq!(p.name, None);
    assert!(p.query.starts_with("pgmux: "), "{}", p.query);
    let _: Terminate = decode(&mut out);
    done(&out);

    query_with_params(&mut out, "select $1", &["alice"]).unwrap();
    let p: Parse = decode(&mut out);
    assert_eq!((p.name, p.query.as_str()), (None, "select $1"));
    let b: Bind = decode(&mut out);
    assert_eq!(b.parameters, [Some(bytes::Bytes::from_static(b"alice"))]);
    let e: Execute = decode(&mut out);
    assert_eq!((e.name, e.max_rows), (None, 0));
    let _: Sync = decode(&mut out);
    done(&out);
}

#[test]
fn a_refused_message_leaves_the_buffer_as_it_was() {
    let mut out = BytesMut::from(&b"before"[..]);
    assert!(query(&mut out, "a\0b").is_err());
    assert!(startup(&mut out, &[("user", "a\0b")]).is_err());
    assert_eq!(&out[..], b"before");
}

#[test]
fn encoded_messages_split_back() {
    let mut out = BytesMut::new();
    query(&mut out, "select 1").unwrap();
    parse_raw(&mut out, b"s1", b"select $1", &[0, 1, 0, 0, 0, 23]).unwrap();
    close_statement(&mut out, b"s1");
    ready_for_query(&mut out, TxStatus::Idle);
    write_error(&mut out, Severity::Error, "XX000", "a\0b");
    row_description(&mut out, &[("a", 25), ("b", 1700)]);
    data_row(&mut out, &[Some("x".into()), None]).unwrap();
    out.extend_from_slice(&parse_complete());
    let tags: Vec<u8> = std::iter::from_fn(|| split_frame(&mut out, 1 << 20).unwrap())
        .map(|f| f.tag())
        .collect();
    assert_eq!(tags, b"QPCZETD1");
}

#[test]
fn same_bytes_as_the_protocol_says() {
    let mut out = BytesMut::new();
    ready_for_query(&mut out, TxStatus::InTransaction);
    assert_eq!(&out[..], b"Z\0\0\0\x05T");
    assert_eq!(&parse_complete()[..], b"1\0\0\0\x04");
    assert_eq!(&close_complete()[..], b"3\0\0\0\x04");
    assert_eq!(terminate(), b"X\0\0\0\x04");
    out.clear();
    backend_key_data(&mut out, 7, 9);
    assert_eq!(&out[..], b"K\0\0\0\x0c\0\0\0\x07\0\0\0\x09");
    out.clear();
    auth_ok(&mut out);
    assert_eq!(&out[..], b"R\0\0\0\x08\0\0\0\0");
}

#[test]
fn error_position_moved_and_other_fields_kept() {
    let body = b"SERROR\0C42601\0Msyntax error\0P28\0\0";
    let mut out = BytesMut::new();
    error_shifted(&mut out, body, |at| at - 6);
    let mut expected = BytesMut::new();
    expected.extend_from_slice(b"E");
    let fields = b"SERROR\0C42601\0Msyntax error\0P22\0\0";
    expected.extend_from_slice(&(fields.len() as i32 + 4).to_be_bytes());
    expected.extend_from_slice(fields);
    assert_eq!(out, expected);
    // Bytes that do not read as fields pass as they came.
    for body in [&b""[..], b"SERROR", b"P12\0", b"Pxx\0\0"] {
        let mut out = BytesMut::new();
        error_shifted(&mut out, body, |at| at + 1);
        assert_eq!(&out[5..], body, "{body:?}");
        assert_eq!(out[0], b'E');
    }
}
