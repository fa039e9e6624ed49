//! Reading a rules file: tokens as PgBouncer splits them, then one rule
//! per line, every bad line named with its file and line.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::{Action, Address, Hba, HbaError, Method, Names, Rule, TlsNeed};

/// `@file` includes nested deeper than this are refused (a loop, surely).
const MAX_INCLUDE_DEPTH: usize = 10;

/// Reads an `@file` include; given the path joined to the including file's
/// directory.
pub type ReadInclude<'a> = dyn FnMut(&Path) -> std::io::Result<String> + 'a;

/// One token of a line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// Unquoted: keywords are recognized only here.
    Word(String),
    /// `"..."`, with `""` for a quote: always a name.
    Quoted(String),
    Comma,
}

/// Splits a line as PgBouncer does: blanks separate, `#` starts a comment,
/// a word ends at a blank, a comma, `#` or a quote.
fn tokens(line: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            '#' => break,
            c if c.is_whitespace() => {
                chars.next();
            }
            ',' => {
                chars.next();
                out.push(Token::Comma);
            }
            '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some('"') if chars.next_if_eq(&'"').is_some() => s.push('"'),
                        Some('"') => break,
                        Some(c) => s.push(c),
                        None => return Err("unterminated quoted name".into()),
                    }
                }
                out.push(Token::Quoted(s));
            }
            _ => {
                let mut s = String::new();
                while let Some(c) =
                    chars.next_if(|&c| !matches!(c, ',' | '#' | '"') && !c.is_whitespace())
                {
                    s.push(c);
                }
                out.push(Token::Word(s));
            }
        }
    }
    Ok(out)
}

/// Reads the rules in `text`, the contents of `path`; `read` fetches
/// `@file` includes. Every line's error is returned, or the whole file.
pub fn parse(text: &str, path: &Path, read: &mut ReadInclude<'_>) -> Result<Hba, Vec<HbaError>> {
    let mut hba = Hba::default();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let mut p = LineParser {
            path,
            line: i + 1,
            read: &mut *read,
            depth: 0,
            warnings: &mut hba.warnings,
        };
        match p.rule(raw) {
            Ok(Some(rule)) => hba.rules.push(rule),
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(hba)
    } else {
        Err(errors)
    }
}

/// Reads one line (or one include file's names).
struct LineParser<'p, 'r> {
    path: &'p Path,
    line: usize,
    read: &'p mut ReadInclude<'r>,
    depth: usize,
    warnings: &'p mut Vec<String>,
}

/// The tokens of a line still to read.
type Tokens = std::iter::Peekable<std::vec::IntoIter<Token>>;

/// Which column a name list is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Column {
    Database,
    User,
}

impl LineParser<'_, '_> {
    fn error(&self, message: impl Into<String>) -> HbaError {
        HbaError {
            path: self.path.display().to_string(),
            line: self.line,
            message: message.into(),
        }
    }

    /// A rule, `None` for a blank or comment line, or `local` (never
    /// matched over TCP, but checked all the same).
    fn rule(&mut self, raw: &str) -> Result<Option<Rule>, HbaError> {
        if raw.trim_end().ends_with('\\') {
            return Err(self.error(
                "line continuation (a trailing \\) is not supported, as in PgBouncer: \
                 write the rule on one line",
            ));
        }
        let mut toks = tokens(raw)
            .map_err(|e| self.error(e))?
            .into_iter()
            .peekable();
        let tls = match toks.next() {
            None => return Ok(None),
            Some(Token::Word(w)) => connection_type(&w).map_err(|e| self.error(e))?,
            Some(t) => {
                let e = format!("expected a connection type, found {t:?}");
                return Err(self.error(e));
            }
        };
        let databases = self.names(&mut toks, Column::Database)?;
        let users = self.names(&mut toks, Column::User)?;
        let address = match tls {
            Some(_) => Some(self.address(&mut toks)?),
            None => None,
        };
        let action = self.method(&mut toks, address.is_some())?;
        if let Some(t) = toks.next() {
            return Err(self.error(format!(
                "unexpected {t:?} after the method: options are not supported"
            )));
        }
        Ok(tls
            .zip(address)
            .zip(action)
            .map(|((tls, address), action)| Rule {
                line: self.line,
                tls,
                databases,
                users,
                address,
                action,
            }))
    }

    /// A comma-separated column of names and keywords.
    fn names(&mut self, toks: &mut Tokens, column: Column) -> Result<Names, HbaError> {
        let mut names = Names::default();
        loop {
            match toks.next() {
                Some(t @ (Token::Word(_) | Token::Quoted(_))) => {
                    self.name(t, column, &mut names)?
                }
                Some(Token::Comma) => return Err(self.error("empty name in a list")),
                None => return Err(self.error(format!("missing {} column", column.label()))),
            }
            if toks.next_if_eq(&Token::Comma).is_none() {
                return Ok(names);
            }
        }
    }

    /// One entry of a name column.
    fn name(&mut self, t: Token, column: Column, names: &mut Names) -> Result<(), HbaError> {
        let word = match t {
            Token::Quoted(n) => {
                names.names.push(n);
                return Ok(());
            }
            Token::Word(w) => w,
            Token::Comma => return Err(self.error("empty name in a list")),
        };
        match (word.as_str(), column) {
            ("all", _) => names.all = true,
            ("sameuser", Column::Database) => names.same_user = true,
            // pgmux refuses replication connections before the rules run.
            ("replication", Column::Database) => {}
            ("samerole" | "samegroup", Column::Database) => {
                let e = format!("{word} is not supported (PgBouncer refuses it too)");
                return Err(self.error(e));
            }
            ("sameuser" | "samerole" | "samegroup" | "replication", Column::User) => {
                let e =
                    format!("{word} is a database keyword; write \"{word}\" for a user so named");
                return Err(self.error(e));
            }
            (w, _) if w.starts_with('+') => {
                let e = format!("{w}: group membership (+role) is not supported, as in PgBouncer");
                return Err(self.error(e));
            }
            (w, _) if w.starts_with('@') => self.include(&w[1..], column, names)?,
            (w, _) => names.names.push(w.to_owned()),
        }
        Ok(())
    }

    /// `@file`: names separated by commas or blanks, `#` comments, relative
    /// to the including file's directory.
    fn include(&mut self, file: &str, column: Column, names: &mut Names) -> Result<(), HbaError> {
        if file.is_empty() {
            return Err(self.error("@ without a file name"));
        }
        if self.depth >= MAX_INCLUDE_DEPTH {
            return Err(self.error(format!("@{file}: includes nested too deeply")));
        }
        let target: PathBuf = self.path.parent().unwrap_or(Path::new("")).join(file);
        let text = (self.read)(&target)
            .map_err(|e| self.error(format!("@{file}: cannot read {}: {e}", target.display())))?;
        for (i, raw) in text.lines().enumerate() {
            let mut inner = LineParser {
                path: &target,
                line: i + 1,
                read: &mut *self.read,
                depth: self.depth + 1,
                warnings: &mut *self.warnings,
            };
            let toks = tokens(raw).map_err(|e| inner.error(e))?;
            for t in toks.into_iter().filter(|t| *t != Token::Comma) {
                inner.name(t, column, names)?;
            }
        }
        Ok(())
    }

    /// `all`, `addr/bits`, or `addr mask` (two columns).
    fn address(&mut self, toks: &mut Tokens) -> Result<Address, HbaError> {
        let word = match toks.next() {
            Some(Token::Word(w)) => w,
            Some(t) => return Err(self.error(format!("expected an address, found {t:?}"))),
            None => return Err(self.error("missing address column")),
        };
        if word == "all" {
            return Ok(Address::All);
        }
        if matches!(word.as_str(), "samehost" | "samenet") {
            return Err(self.error(format!(
                "{word} is not supported (PgBouncer neither); write the addresses"
            )));
        }
        let (addr, bits) = match word.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (word.as_str(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| {
            self.error(format!(
                "{addr:?} is not an IP address (host names are not supported, as in PgBouncer)"
            ))
        })?;
        let mask = match bits {
            Some(b) => prefix_mask(addr, b)
                .ok_or_else(|| self.error(format!("invalid mask length {b:?}")))?,
            None => match toks.next() {
                Some(Token::Word(m)) => match (addr, m.parse::<IpAddr>()) {
                    (IpAddr::V4(_), Ok(m @ IpAddr::V4(_)))
                    | (IpAddr::V6(_), Ok(m @ IpAddr::V6(_))) => m,
                    _ => {
                        return Err(
                            self.error(format!("{m:?} is not a mask of the address's family"))
                        )
                    }
                },
                _ => {
                    return Err(
                        self.error("missing mask: write addr/bits, or the mask in the next column")
                    )
                }
            },
        };
        let address = match (addr, mask) {
            (IpAddr::V4(a), IpAddr::V4(m)) => Address::V4 {
                net: u32::from(a),
                mask: u32::from(m),
            },
            (IpAddr::V6(a), IpAddr::V6(m)) => Address::V6 {
                net: u128::from(a),
                mask: u128::from(m),
            },
            _ => return Err(self.error("address and mask of different families")),
        };
        let stray = match address {
            Address::V4 { net, mask } => net & !mask != 0,
            Address::V6 { net, mask } => net & !mask != 0,
            Address::All => false,
        };
        if stray {
            // PgBouncer warns and the rule then never matches.
            return Err(self.error(format!("{word}: the address has bits set outside its mask")));
        }
        Ok(address)
    }

    /// The method; `None` for one that only a `local` line may carry.
    fn method(&mut self, toks: &mut Tokens, tcp: bool) -> Result<Option<Action>, HbaError> {
        let word = match toks.next() {
            Some(Token::Word(w)) => w,
            Some(t) => return Err(self.error(format!("expected a method, found {t:?}"))),
            None => return Err(self.error("missing method column")),
        };
        if word == "password" {
            // As `auth_type = plain` in a PgBouncer ini.
            self.warnings.push(format!(
                "{}:{}: password: clients authenticate with SCRAM-SHA-256 instead \
                 (never a cleartext password)",
                self.path.display(),
                self.line
            ));
        }
        method(&word, tcp).map_err(|e| self.error(e))
    }
}

/// A line type: what it says about TLS, `None` for `local`.
fn connection_type(word: &str) -> Result<Option<TlsNeed>, String> {
    match word {
        "local" => Ok(None),
        "host" => Ok(Some(TlsNeed::Either)),
        "hostssl" => Ok(Some(TlsNeed::Required)),
        "hostnossl" => Ok(Some(TlsNeed::Refused)),
        "hostgssenc" | "hostnogssenc" => Err(format!(
            "{word}: GSSAPI encryption is not supported (PgBouncer knows local, host, \
             hostssl, hostnossl)"
        )),
        _ => Err(format!(
            "unknown connection type {word:?} (local, host, hostssl or hostnossl)"
        )),
    }
}

/// What a method does; `None` for one PgBouncer knows that pgmux cannot
/// run, allowed on a `local` line only (which never matches).
fn method(word: &str, tcp: bool) -> Result<Option<Action>, String> {
    let action = match word {
        "trust" => Action::Allow(Method::Trust),
        "reject" => Action::Reject,
        "md5" => Action::Allow(Method::Md5),
        "scram-sha-256" | "password" => Action::Allow(Method::ScramSha256),
        "peer" if tcp => {
            return Err("peer authentication is only supported on local sockets".into())
        }
        "cert" | "ldap" if tcp => {
            return Err(format!(
                "{word} authentication is not supported by pgmux; clients would be let in \
                 differently"
            ))
        }
        "peer" | "cert" | "ldap" => return Ok(None),
        other => {
            return Err(format!(
                "unsupported method {other:?} (trust, reject, md5, password, scram-sha-256)"
            ))
        }
    };
    Ok(Some(action))
}

impl Column {
    fn label(self) -> &'static str {
        match self {
            Self::Database => "database",
            Self::User => "user",
        }
    }
}

/// The mask of a `/bits` suffix for `addr`'s family.
fn prefix_mask(addr: IpAddr, bits: &str) -> Option<IpAddr> {
    let bits: u32 = bits.parse().ok()?;
    match addr {
        IpAddr::V4(_) if bits <= 32 => Some(IpAddr::V4(
            u32::MAX.checked_shl(32 - bits).unwrap_or(0).into(),
        )),
        IpAddr::V6(_) if bits <= 128 => Some(IpAddr::V6(
            u128::MAX.checked_shl(128 - bits).unwrap_or(0).into(),
        )),
        _ => None,
    }
}
