//! Function calls in a text: which of them pgmux knows to leave session
//! state alone. A function of the application's own (`SELECT
//! set_tenant('A')`) may call `set_config`, create a temporary table, take
//! an advisory lock or change role, none of which its name tells: a text
//! that calls one counts as code pgmux cannot see, like a `DO` block.
//!
//! Known are PostgreSQL's built-in functions (`builtins.txt`: the names of
//! `pg_catalog`'s functions, without those that run SQL text given as an
//! argument, such as `query_to_xml`, or keep per-session state beyond the
//! transaction, such as a replication origin session or a temporary
//! replication slot), and the SQL keywords written like calls (`IN (`,
//! `VALUES (`, `COALESCE (`, `numeric(10, 2)`). The built-in functions that
//! change what pgmux follows (`set_config`, the session advisory locks) are
//! read by name elsewhere ([`super::effects`]).
//!
//! A name is a call when `(` follows it, unless what precedes it makes it
//! a relation or a column list: `INSERT INTO t (a, b)`, `AS t (a, b)`,
//! `WITH t (a) AS`, `f(x) g (a)`. Anything else (a quoted or
//! schema-qualified name outside `pg_catalog`, a name this list lacks) is
//! unknown: a false alarm costs one check of the server after the
//! transaction, a miss would leak session state.

use std::sync::OnceLock;

use super::lexer::{blank, word_rest, Lexer, Token};

/// The longest name PostgreSQL keeps (NAMEDATALEN - 1).
const MAX_NAME: usize = 63;

/// Keywords that take a parenthesized list or expression and can never
/// name a function called without a schema: PostgreSQL's reserved and
/// column-name keywords (in every version from 13 on) that are written
/// before `(`: SQL's own syntax (`IN (...)`), the special-syntax functions
/// with no `pg_proc` entry (`COALESCE`, `GREATEST`), and type names with a
/// modifier (`numeric(10, 2)`, `character(3)`). Sorted.
const KEYWORDS: [&str; 72] = [
    "all",
    "and",
    "any",
    "array",
    "as",
    "between",
    "bigint",
    "bit",
    "case",
    "cast",
    "char",
    "character",
    "check",
    "coalesce",
    "collate",
    "dec",
    "decimal",
    "default",
    "distinct",
    "do",
    "else",
    "except",
    "exists",
    "extract",
    "float",
    "for",
    "foreign",
    "from",
    "greatest",
    "group",
    "grouping",
    "having",
    "in",
    "integer",
    "intersect",
    "interval",
    "lateral",
    "least",
    "limit",
    "national",
    "nchar",
    "normalize",
    "not",
    "nullif",
    "offset",
    "on",
    "or",
    "overlay",
    "position",
    "primary",
    "references",
    "returning",
    "row",
    "select",
    "some",
    "substring",
    "table",
    "then",
    "time",
    "timestamp",
    "to",
    "treat",
    "trim",
    "union",
    "unique",
    "using",
    "values",
    "when",
    "where",
    "window",
    "with",
    "xmltable",
];

/// Words PostgreSQL lets a function be named (unreserved or
/// type-and-function-name keywords) that are syntax only after certain
/// words: `GROUP BY (a)`, `PRIMARY KEY (a)`, `ON CONFLICT (a)`, `AS
/// MATERIALIZED (...)`, `character varying(20)`, `GROUPING SETS (...)`.
/// After anything else, `is('A')` or `by(1)` is a call like any other.
/// (`GROUP BY CUBE (a)` and `ROLLUP (a)` read as calls: a false alarm,
/// since `ORDER BY cube(a)` may call an application's `cube`.)
const AFTER: [(&str, &[&str]); 6] = [
    ("by", &["group", "order", "partition"]),
    ("conflict", &["on"]),
    ("key", &["foreign", "primary"]),
    ("materialized", &["as", "not"]),
    ("sets", &["grouping"]),
    ("varying", &["bit", "char", "character"]),
];

/// Words that are syntax right after an operand (`t JOIN (...)`, `a LIKE
/// (...)`, `UPDATE t SET (a, b) = ...`), each with the keywords that may
/// also stand before it (`LEFT JOIN (`, `NOT LIKE (`, `DO UPDATE SET (`).
/// After anything else (`SELECT join(1)`, `, like(1)`) they are calls.
const AFTER_OPERAND: [(&str, &[&str]); 5] = [
    ("ilike", &["not"]),
    (
        "join",
        &[
            "cross", "full", "inner", "left", "natural", "outer", "right",
        ],
    ),
    ("like", &["not"]),
    ("set", &["update"]),
    ("similar", &["not"]),
];

/// Keywords or punctuation before a name that make the name a relation,
/// an alias or a common table expression, not a function: `INSERT INTO t
/// (a)`, `COPY t (a)`, `AS t (a)`, `WITH t (a) AS`, `REFERENCES t (a)`,
/// `TABLESAMPLE m (10)`, `CREATE TABLE [IF NOT EXISTS] t (a int)`, `CREATE
/// VIEW v (a)`.
const BEFORE_RELATION: [&str; 11] = [
    "as",
    "copy",
    "exists",
    "into",
    "only",
    "recursive",
    "references",
    "table",
    "tablesample",
    "view",
    "with",
];

/// The built-in function names, sorted (checked by a test).
fn builtins() -> &'static [&'static str] {
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    NAMES.get_or_init(|| include_str!("builtins.txt").lines().collect())
}

/// `name` lowercased into `buf`, or `None` when no name that long exists.
fn lower<'b>(name: &[u8], buf: &'b mut [u8; MAX_NAME]) -> Option<&'b [u8]> {
    let out = buf.get_mut(..name.len())?;
    for (o, b) in out.iter_mut().zip(name) {
        *o = b.to_ascii_lowercase();
    }
    Some(out)
}

fn listed(list: &[&str], name: &[u8]) -> bool {
    list.binary_search_by(|s| s.as_bytes().cmp(name)).is_ok()
}

/// Whether `sql`, whose first `(` is at `first`, calls a function pgmux
/// does not know. A text with no quote, dollar, backslash or comment is
/// read around each `(` alone (the common case: `INSERT INTO t (a, b)
/// VALUES (...)`); any other is lexed (both ways when it has a backslash,
/// as `effects` reads it).
pub(super) fn unknown_call(sql: &[u8], first: usize) -> bool {
    let comment = memchr::memchr2_iter(b'-', b'/', sql)
        .any(|i| matches!(sql.get(i..i + 2), Some(b"--" | b"/*")));
    let plain = !comment
        && memchr::memchr3(b'\'', b'"', b'$', sql).is_none()
        && memchr::memchr(b'\\', sql).is_none();
    if plain {
        return memchr::memchr_iter(b'(', &sql[first..])
            .any(|at| Calls::before_paren(sql, first + at).unknown());
    }
    let lexed = |lexer: Lexer<'_>| {
        let mut calls = Calls::default();
        let mut prev = None;
        lexer.into_iter().any(|tok| {
            let unknown = calls.next(prev, tok);
            prev = Some(tok);
            unknown
        })
    };
    lexed(Lexer::new(sql))
        || (memchr::memchr(b'\\', sql).is_some() && lexed(Lexer::with_backslash_quotes(sql)))
}

/// A name as written: bare (folded to lower case by PostgreSQL) or quoted
/// (kept as it is).
#[derive(Debug, Clone, Copy)]
struct Name<'a> {
    text: &'a [u8],
    quoted: bool,
}

impl Name<'_> {
    /// Whether the name, folded as PostgreSQL folds it, is in `list`.
    fn in_list(self, list: &[&str]) -> bool {
        if self.quoted {
            return listed(list, self.text);
        }
        let mut buf = [0; MAX_NAME];
        lower(self.text, &mut buf).is_some_and(|n| listed(list, n))
    }

    fn is(self, word: &str) -> bool {
        if self.quoted {
            self.text == word.as_bytes()
        } else {
            self.text.eq_ignore_ascii_case(word.as_bytes())
        }
    }
}

/// Follows a statement's tokens: the name just read (the last part of a
/// dotted name), its qualifier, and the token before the whole name.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Calls<'a> {
    name: Option<Name<'a>>,
    qualifier: Option<Name<'a>>,
    before: Option<Token<'a>>,
    /// The previous token was a `.` right after the name.
    dot: bool,
}

impl<'a> Calls<'a> {
    /// Takes the next token (`prev` is the one before it); true when it
    /// makes a call of a function pgmux does not know.
    pub(super) fn next(&mut self, prev: Option<Token<'a>>, tok: Token<'a>) -> bool {
        let name = match tok {
            Token::Word(text) => Some(Name {
                text,
                quoted: false,
            }),
            Token::QuotedIdent(text) => Some(Name { text, quoted: true }),
            _ => None,
        };
        if let Some(name) = name {
            if self.dot && self.name.is_some() {
                self.qualifier = self.name;
            } else {
                self.qualifier = None;
                self.before = prev;
            }
            self.name = Some(name);
            self.dot = false;
            return false;
        }
        let unknown = match (tok, self.name) {
            (Token::Other(b'('), Some(name)) if !self.dot => self.unknown_call(name),
            _ => false,
        };
        self.dot = tok == Token::Other(b'.') && self.name.is_some() && !self.dot;
        if !self.dot {
            self.name = None;
        }
        unknown
    }

    /// What precedes the `(` at `at` in a text with no quotes or
    /// comments, read backwards: the name right before it, its qualifier
    /// and the token before them.
    fn before_paren(sql: &'a [u8], at: usize) -> Self {
        // The token that ends at `end` (exclusive), blanks skipped: a word,
        // or one byte.
        let token_before = |end: usize| -> Option<(Token<'a>, usize)> {
            let end = sql[..end].iter().rposition(|&b| !blank(b))? + 1;
            let start = sql[..end]
                .iter()
                .rposition(|&b| !word_rest(b))
                .map_or(0, |i| i + 1);
            if start < end && !sql[start].is_ascii_digit() {
                Some((Token::Word(&sql[start..end]), start))
            } else {
                Some((Token::Other(sql[end - 1]), end - 1))
            }
        };
        let mut calls = Self::default();
        let Some((Token::Word(text), start)) = token_before(at) else {
            return calls;
        };
        calls.name = Some(Name {
            text,
            quoted: false,
        });
        let mut rest = start;
        if let Some((Token::Other(b'.'), dot)) = token_before(start) {
            if let Some((Token::Word(q), q_start)) = token_before(dot) {
                calls.qualifier = Some(Name {
                    text: q,
                    quoted: false,
                });
                rest = q_start;
            }
        }
        calls.before = token_before(rest).map(|(t, _)| t);
        calls
    }

    /// Whether the name read by [`Calls::before_paren`] is a call of a
    /// function pgmux does not know.
    fn unknown(&self) -> bool {
        self.name.is_some_and(|name| self.unknown_call(name))
    }

    /// Whether `name (` calls a function pgmux does not know.
    fn unknown_call(&self, name: Name<'_>) -> bool {
        let relation = match self.before {
            Some(Token::Word(w)) => {
                let mut buf = [0; MAX_NAME];
                lower(w, &mut buf).is_some_and(|w| listed(&BEFORE_RELATION, w))
            }
            // `generate_series(1, 3) g (i)`: an alias's column names.
            Some(Token::Other(b')')) => true,
            _ => false,
        };
        if relation {
            return false;
        }
        match self.qualifier {
            Some(q) if !q.is("pg_catalog") => true,
            Some(_) => !name.in_list(builtins()),
            None => !(name.in_list(builtins()) || self.syntax(name)),
        }
    }

    /// Whether `name (`, unqualified, is SQL syntax here rather than a
    /// call.
    fn syntax(&self, name: Name<'_>) -> bool {
        if name.quoted {
            return false;
        }
        let mut buf = [0; MAX_NAME];
        let Some(word) = lower(name.text, &mut buf) else {
            return false;
        };
        if listed(&KEYWORDS, word) {
            return true;
        }
        let before_is = |words: &[&str]| match self.before {
            Some(Token::Word(w)) => words.iter().any(|k| w.eq_ignore_ascii_case(k.as_bytes())),
            _ => false,
        };
        if let Some((_, after)) = AFTER.iter().find(|(w, _)| w.as_bytes() == word) {
            return before_is(after);
        }
        if let Some((_, after)) = AFTER_OPERAND.iter().find(|(w, _)| w.as_bytes() == word) {
            return before_is(after) || self.operand_before();
        }
        false
    }

    /// Whether the token before the name ends an operand: an identifier
    /// that is not a keyword, a quoted one, a constant, `)` or `]`.
    fn operand_before(&self) -> bool {
        match self.before {
            Some(Token::Word(w)) => {
                let mut buf = [0; MAX_NAME];
                lower(w, &mut buf).is_some_and(|w| !listed(&KEYWORDS, w))
            }
            Some(Token::QuotedIdent(_) | Token::Literal(_)) => true,
            Some(Token::Other(b)) => b.is_ascii_digit() || b == b']',
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::Lexer;

    /// The answer of the lexer, checked against the quick reading of a
    /// text with no quotes or comments.
    fn calls_unknown(sql: &str) -> bool {
        let mut calls = Calls::default();
        let mut prev = None;
        let mut found = false;
        for tok in Lexer::new(sql.as_bytes()) {
            found |= calls.next(prev, tok);
            prev = Some(tok);
        }
        let quick = memchr::memchr(b'(', sql.as_bytes())
            .is_some_and(|first| unknown_call(sql.as_bytes(), first));
        assert_eq!(quick, found, "{sql:?}: both readings agree");
        found
    }

    #[test]
    fn lists_are_sorted_and_lowercase() {
        for list in [&KEYWORDS[..], &BEFORE_RELATION[..], builtins()] {
            assert!(list.windows(2).all(|w| w[0] < w[1]), "{:?}", &list[..3]);
            assert!(list
                .iter()
                .all(|n| !n.is_empty() && n.len() <= MAX_NAME && *n == n.to_ascii_lowercase()));
        }
        assert!(builtins().len() > 2000);
        assert!(!listed(builtins(), b"query_to_xml"));
    }

    #[test]
    fn application_functions_are_unknown() {
        for sql in [
            "SELECT set_tenant('A')",
            "select * from docs where set_tenant($1)",
            "SELECT app.set_tenant('A')",
            "SELECT public.lower('A')",
            "SELECT \"Lower\"('A')",
            "SELECT \"in\"(1)",
            "SELECT 1 FROM tenant_rows($1)",
            "SELECT count(*) FROM t JOIN f(1) ON true",
            "SELECT pg_catalog.no_such_function()",
            "SELECT query_to_xml('select 1', true, true, '')",
            "INSERT INTO t (a) VALUES (touch(1))",
            "UPDATE t SET a = bump(a)",
            "SELECT x FROM t WHERE NOT f(x)",
            "SELECT 1 AS a, f(2)",
            "SELECT f  (1)",
            "SELECT (f(1))",
            // Words PostgreSQL lets a function be named.
            "SELECT is('A')",
            "SELECT 1 WHERE set(1)",
            "SELECT join(1), like(2)",
            "SELECT x FROM t ORDER BY cube('x')",
            "SELECT filter(1), over(2), within(3), system(4), bernoulli(5)",
            "SELECT json_value(1), merge_action()",
            "SELECT a OPERATOR(public.===) b FROM t WHERE key(1)",
        ] {
            assert!(
                calls_unknown(sql),
                "{sql:?} calls a function pgmux does not know"
            );
        }
    }

    #[test]
    fn built_ins_and_syntax_are_known() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
             VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
            "INSERT INTO app.posts (title) VALUES ($1) ON CONFLICT (title) DO NOTHING",
            "INSERT INTO \"posts\" (\"title\") VALUES ($1) RETURNING \"id\"",
            "SELECT count(*), now(), coalesce(a, 0), lower(b), pg_catalog.upper(c) FROM t",
            "SELECT \"count\"(*) FROM t",
            "SELECT * FROM t WHERE id IN (1, 2) AND x = ANY($1) AND EXISTS (SELECT 1)",
            "SELECT CAST(a AS numeric(10, 2)), b::character varying(20), c::varchar(3)",
            "SELECT * FROM generate_series(1, 3) AS g (i)",
            "SELECT * FROM generate_series(1, 3) g (i)",
            "WITH t (a) AS (SELECT 1) SELECT a FROM t",
            "WITH RECURSIVE r (n) AS (VALUES (1)) SELECT * FROM r",
            "UPDATE t SET (a, b) = ROW(1, 2) WHERE (a, b) OVERLAPS (c, d)",
            "SELECT sum(x) FILTER (WHERE x > 0) OVER (PARTITION BY y ORDER BY z) FROM t",
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM t",
            "SELECT * FROM t TABLESAMPLE bernoulli (10) REPEATABLE (1)",
            "COPY t (a, b) FROM STDIN",
            "SELECT current_setting('app.tenant_id', true)",
            "SELECT f FROM t",
            "SELECT * FROM a JOIN (SELECT 1) b ON true LEFT JOIN (SELECT 2) c ON true",
            "SELECT * FROM a WHERE x LIKE ('%' || $1) AND y NOT ILIKE ('a') AND z SIMILAR TO ('b')",
            "UPDATE t SET (a, b) = (1, 2)",
            "INSERT INTO t VALUES (1) ON CONFLICT (a) DO UPDATE SET (a, b) = (1, 2)",
            "SELECT a FROM t GROUP BY (a) ORDER BY (a)",
            "SELECT a FROM t GROUP BY GROUPING SETS ((a), ())",
            "WITH x AS MATERIALIZED (SELECT 1), y AS NOT MATERIALIZED (SELECT 2) SELECT 1",
            "CREATE TABLE t (a int, b bit varying(3), c character varying(2), PRIMARY KEY (a))",
        ] {
            assert!(!calls_unknown(sql), "{sql:?} calls only what pgmux knows");
        }
    }
}
