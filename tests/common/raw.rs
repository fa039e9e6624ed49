//! A minimal wire-protocol client for tests that need exact control over
//! the messages sent (pipelines, Flush, unknown names) and the replies seen.

#![allow(dead_code)]

use bytes::{BufMut, BytesMut};
use pgmux::protocol::encode;
use pgmux::protocol::frame::split_frame;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One reply message: tag and body.
pub type Msg = (u8, Vec<u8>);

/// A raw protocol connection.
pub struct Raw {
    stream: TcpStream,
    buf: BytesMut,
    /// Messages to send, built up by the helpers below.
    pub out: BytesMut,
    /// The BackendKeyData the login gave (process id, secret).
    pub key: (i32, i32),
}

impl Raw {
    /// Connects and logs in (trust, cleartext, md5 or SCRAM).
    pub async fn connect(port: u16, user: &str, password: &str, db: &str) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let mut raw = Raw {
            stream,
            buf: BytesMut::new(),
            out: BytesMut::new(),
            key: (0, 0),
        };
        frontend::startup_message([("user", user), ("database", db)], &mut raw.out).unwrap();
        raw.flush().await;
        let mut scram = None;
        loop {
            let (tag, body) = raw.read().await;
            match tag {
                b'R' => {
                    let code = i32::from_be_bytes(body[..4].try_into().unwrap());
                    match code {
                        0 => {}
                        3 => {
                            frontend::password_message(password.as_bytes(), &mut raw.out).unwrap();
                        }
                        5 => {
                            let salt = body[4..8].try_into().unwrap();
                            let p = postgres_protocol::authentication::md5_hash(
                                user.as_bytes(),
                                password.as_bytes(),
                                salt,
                            );
                            frontend::password_message(p.as_bytes(), &mut raw.out).unwrap();
                        }
                        10 => {
                            let s = ScramSha256::new(
                                password.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            frontend::sasl_initial_response(
                                "SCRAM-SHA-256",
                                s.message(),
                                &mut raw.out,
                            )
                            .unwrap();
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().unwrap();
                            s.update(&body[4..]).unwrap();
                            frontend::sasl_response(s.message(), &mut raw.out).unwrap();
                        }
                        12 => scram.as_mut().unwrap().finish(&body[4..]).unwrap(),
                        c => panic!("unexpected auth request {c}"),
                    }
                    raw.flush().await;
                }
                b'E' => panic!("login failed: {}", String::from_utf8_lossy(&body)),
                b'K' => {
                    let pid = i32::from_be_bytes(body[..4].try_into().unwrap());
                    let secret = i32::from_be_bytes(body[4..8].try_into().unwrap());
                    raw.key = (pid, secret);
                }
                b'Z' => return raw,
                _ => {}
            }
        }
    }

    /// Sends everything queued in `out`.
    pub async fn flush(&mut self) {
        self.stream.write_all(&self.out).await.expect("write");
        self.out.clear();
    }

    /// Reads one message (skipping ParameterStatus and notices).
    pub async fn read(&mut self) -> Msg {
        loop {
            if let Some(f) = split_frame(&mut self.buf, 1 << 30).expect("framing") {
                if matches!(f.tag(), b'S' | b'N') {
                    continue;
                }
                return (f.tag(), f.body().to_vec());
            }
            let n = tokio::time::timeout(
                std::time::Duration::from_secs(20),
                self.stream.read_buf(&mut self.buf),
            )
            .await
            .expect("reply within 20s")
            .expect("read");
            assert!(n > 0, "connection closed");
        }
    }

    /// Reads messages up to and including ReadyForQuery.
    pub async fn until_ready(&mut self) -> Vec<Msg> {
        self.until(b'Z').await
    }

    /// Sends `bytes` as they are and ends the sending side, then reads
    /// whatever comes back until the socket closes or `limit` passes.
    pub async fn send_raw(&mut self, bytes: &[u8], limit: std::time::Duration) -> Vec<u8> {
        let _ = self.stream.write_all(bytes).await;
        let _ = self.stream.shutdown().await;
        let mut got = self.buf.split().to_vec();
        let _ = tokio::time::timeout(limit, self.stream.read_to_end(&mut got)).await;
        got
    }

    /// Sends what is queued and reads every byte until the other side
    /// closes (or `limit` passes).
    pub async fn until_closed(&mut self, limit: std::time::Duration) -> Vec<u8> {
        self.flush().await;
        let mut got = self.buf.split().to_vec();
        let _ = tokio::time::timeout(limit, self.stream.read_to_end(&mut got)).await;
        got
    }

    /// Queues Parse.
    pub fn parse(&mut self, name: &str, query: &str) -> &mut Self {
        frontend::parse(name, query, [], &mut self.out).unwrap();
        self
    }

    /// Queues Bind with text parameters and text results.
    pub fn bind(&mut self, portal: &str, stmt: &str, params: &[&str]) -> &mut Self {
        let start = self.out.len();
        self.out.put_u8(b'B');
        self.out.put_i32(0);
        for s in [portal, stmt] {
            self.out.put_slice(s.as_bytes());
            self.out.put_u8(0);
        }
        self.out.put_i16(0);
        self.out.put_i16(params.len() as i16);
        for p in params {
            self.out.put_i32(p.len() as i32);
            self.out.put_slice(p.as_bytes());
        }
        self.out.put_i16(0);
        encode::patch_len(&mut self.out, start).expect("a test message fits");
        self
    }

    /// Queues Execute (all rows).
    pub fn execute(&mut self, portal: &str) -> &mut Self {
        let start = self.out.len();
        self.out.put_u8(b'E');
        self.out.put_i32(0);
        self.out.put_slice(portal.as_bytes());
        self.out.put_u8(0);
        self.out.put_i32(0);
        encode::patch_len(&mut self.out, start).expect("a test message fits");
        self
    }

    /// Queues Describe of a statement.
    pub fn describe(&mut self, stmt: &str) -> &mut Self {
        frontend::describe(b'S', stmt, &mut self.out).unwrap();
        self
    }

    /// Queues Close of a statement.
    pub fn close(&mut self, stmt: &str) -> &mut Self {
        frontend::close(b'S', stmt, &mut self.out).unwrap();
        self
    }

    /// Queues Sync.
    pub fn sync(&mut self) -> &mut Self {
        frontend::sync(&mut self.out);
        self
    }

    /// Queues Flush.
    pub fn flush_msg(&mut self) -> &mut Self {
        frontend::flush(&mut self.out);
        self
    }

    /// Queues Parse, Bind and Execute of `sql` as the unnamed statement
    /// and portal (no Sync).
    pub fn extended(&mut self, sql: &str) -> &mut Self {
        self.parse("", sql).bind("", "", &[]).execute("")
    }

    /// Queues CopyData.
    pub fn copy_data(&mut self, data: &[u8]) -> &mut Self {
        frontend::CopyData::new(data)
            .expect("a test message fits")
            .write(&mut self.out);
        self
    }

    /// Queues CopyDone.
    pub fn copy_done(&mut self) -> &mut Self {
        frontend::copy_done(&mut self.out);
        self
    }

    /// Queues Terminate.
    pub fn terminate(&mut self) -> &mut Self {
        frontend::terminate(&mut self.out);
        self
    }

    /// Reads messages up to and including the first with tag `tag`.
    pub async fn until(&mut self, tag: u8) -> Vec<Msg> {
        let mut v = Vec::new();
        loop {
            let m = self.read().await;
            let done = m.0 == tag;
            v.push(m);
            if done {
                return v;
            }
        }
    }

    /// Queues a simple Query.
    pub fn query(&mut self, sql: &str) -> &mut Self {
        frontend::query(sql, &mut self.out).unwrap();
        self
    }

    /// Queues a simple Query whose text is any bytes (another encoding
    /// than UTF-8, say).
    pub fn query_bytes(&mut self, sql: &[u8]) -> &mut Self {
        self.out.extend_from_slice(b"Q");
        self.out
            .extend_from_slice(&(4 + sql.len() as i32 + 1).to_be_bytes());
        self.out.extend_from_slice(sql);
        self.out.extend_from_slice(b"\0");
        self
    }

    /// Sends what is queued and reads up to ReadyForQuery.
    pub async fn round_trip(&mut self) -> Vec<Msg> {
        self.flush().await;
        self.until_ready().await
    }
}

/// The tags of a reply list, as a string (`"12DCZ"`).
pub fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|m| m.0 as char).collect()
}

/// The SQLSTATE of the first ErrorResponse in a reply list.
pub fn error_code(msgs: &[Msg]) -> Option<String> {
    let (_, body) = msgs.iter().find(|m| m.0 == b'E')?;
    let mut rest = &body[..];
    while let Some((&k, r)) = rest.split_first() {
        let end = r.iter().position(|b| *b == 0)?;
        if k == b'C' {
            return Some(String::from_utf8_lossy(&r[..end]).into_owned());
        }
        rest = &r[end + 1..];
    }
    None
}
