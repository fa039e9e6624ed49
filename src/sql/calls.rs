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

use super::lexer::Token;

/// The longest name PostgreSQL keeps (NAMEDATALEN - 1).
const MAX_NAME: usize = 63;

/// Keywords that take a parenthesized list or expression and are not
/// functions: the words of SQL's own syntax (`IN (...)`), PostgreSQL's
/// special-syntax functions that have no `pg_proc` entry (`COALESCE`,
/// `GREATEST`), type names with a modifier (`numeric(10, 2)`, `character
/// varying(20)`), and `TABLESAMPLE` methods. Sorted.
const KEYWORDS: [&str; 100] = [
    "all",
    "and",
    "any",
    "array",
    "as",
    "bernoulli",
    "between",
    "bigint",
    "bit",
    "by",
    "case",
    "cast",
    "char",
    "character",
    "check",
    "coalesce",
    "collate",
    "conflict",
    "cube",
    "dec",
    "decimal",
    "default",
    "distinct",
    "do",
    "else",
    "except",
    "exists",
    "extract",
    "filter",
    "float",
    "for",
    "from",
    "greatest",
    "group",
    "grouping",
    "having",
    "ilike",
    "in",
    "include",
    "integer",
    "intersect",
    "interval",
    "is",
    "join",
    "json",
    "json_array",
    "json_arrayagg",
    "json_exists",
    "json_object",
    "json_objectagg",
    "json_query",
    "json_scalar",
    "json_serialize",
    "json_table",
    "json_value",
    "key",
    "lateral",
    "least",
    "like",
    "limit",
    "materialized",
    "merge_action",
    "national",
    "nchar",
    "normalize",
    "not",
    "nullif",
    "offset",
    "on",
    "operator",
    "or",
    "over",
    "overlaps",
    "overlay",
    "partition",
    "position",
    "repeatable",
    "returning",
    "rollup",
    "row",
    "select",
    "set",
    "similar",
    "some",
    "substring",
    "system",
    "then",
    "time",
    "timestamp",
    "to",
    "treat",
    "trim",
    "union",
    "using",
    "values",
    "varying",
    "when",
    "where",
    "within",
    "xmltable",
];

/// Keywords or punctuation before a name that make the name a relation,
/// an alias or a common table expression, not a function: `INSERT INTO t
/// (a)`, `COPY t (a)`, `AS t (a)`, `WITH t (a) AS`, `REFERENCES t (a)`,
/// `TABLESAMPLE m (10)`.
const BEFORE_RELATION: [&str; 8] = [
    "as",
    "copy",
    "into",
    "only",
    "recursive",
    "references",
    "tablesample",
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
            None => !(name.in_list(builtins()) || (!name.quoted && name.in_list(&KEYWORDS))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::Lexer;

    fn calls_unknown(sql: &str) -> bool {
        let mut calls = Calls::default();
        let mut prev = None;
        let mut found = false;
        for tok in Lexer::new(sql.as_bytes()) {
            found |= calls.next(prev, tok);
            prev = Some(tok);
        }
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
        ] {
            assert!(!calls_unknown(sql), "{sql:?} calls only what pgmux knows");
        }
    }
}
