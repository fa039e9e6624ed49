use std::collections::HashMap;

use super::*;
use std::path::{Path, PathBuf};

/// Parses `text` as `/etc/pgmux/hba.conf` with these include files.
fn parse_with(text: &str, files: &[(&str, &str)]) -> Result<Hba, Vec<HbaError>> {
    let files: HashMap<PathBuf, String> = files
        .iter()
        .map(|(p, t)| (PathBuf::from(p), t.to_string()))
        .collect();
    let mut read = |p: &Path| {
        files
            .get(p)
            .cloned()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    };
    parse(text, Path::new("/etc/pgmux/hba.conf"), &mut read)
}

fn rules(text: &str) -> Hba {
    parse_with(text, &[]).unwrap_or_else(|e| panic!("{e:?}"))
}

/// The first error's line and message.
fn error(text: &str) -> (usize, String) {
    let errs = parse_with(text, &[]).expect_err("refused");
    (errs[0].line, errs[0].message.clone())
}

fn client<'a>(addr: &str, tls: bool, database: &'a str, user: &'a str) -> Client<'a> {
    Client {
        addr: addr.parse().unwrap(),
        tls,
        database,
        user,
    }
}

const FILE: &str = r#"
# hostssl only for the shop; no one logs in as intruder.
local   all      all                      peer
hostssl shop     all      10.0.0.0/8      scram-sha-256
host    all      intruder 0.0.0.0/0       reject
host    blog,"My Db"  all 192.168.1.0 255.255.255.0 md5
hostnossl sameuser all    all             trust
host    all      all      ::1/128         scram-sha-256   # IPv6 loopback
host    all      all      0.0.0.0/0       reject
"#;

#[test]
fn first_matching_rule_decides() {
    let hba = rules(FILE);
    let allow = |m, line| Verdict::Allow(m, line);
    let cases = [
        (
            client("10.1.2.3", true, "shop", "app"),
            allow(Method::ScramSha256, 4),
        ),
        // Not TLS: the hostssl rule is skipped, the last one rejects.
        (
            client("10.1.2.3", false, "shop", "app"),
            Verdict::Refuse(Some(9)),
        ),
        (
            client("10.1.2.3", true, "blog", "intruder"),
            Verdict::Refuse(Some(5)),
        ),
        (
            client("192.168.1.7", false, "blog", "app"),
            allow(Method::Md5, 6),
        ),
        (
            client("192.168.1.7", false, "My Db", "app"),
            allow(Method::Md5, 6),
        ),
        (
            client("192.168.2.7", false, "blog", "app"),
            Verdict::Refuse(Some(9)),
        ),
        (
            client("10.0.0.1", false, "app", "app"),
            allow(Method::Trust, 7),
        ),
        (
            client("10.0.0.1", true, "app", "app"),
            Verdict::Refuse(Some(9)),
        ),
        (
            client("::1", true, "blog", "app"),
            allow(Method::ScramSha256, 8),
        ),
        // A v4 client on a dual-stack socket matches v4 rules.
        (
            client("::ffff:192.168.1.9", false, "blog", "app"),
            allow(Method::Md5, 6),
        ),
        (
            client("fe80::1", false, "blog", "app"),
            Verdict::Refuse(None),
        ),
    ];
    for (c, want) in cases {
        assert_eq!(hba.decide(&c), want, "{c:?}");
    }
    assert!(hba.has_trust());
    assert!(!rules("host all all all md5\n").has_trust());
}

#[test]
fn names_are_exact_and_keywords_only_unquoted() {
    let hba = rules("host \"all\" \"a\"\"b\" all trust\nhost all ALL all md5\n");
    let v = |db, user| hba.decide(&client("127.0.0.1", false, db, user));
    assert_eq!(v("all", "a\"b"), Verdict::Allow(Method::Trust, 1));
    assert_eq!(v("other", "a\"b"), Verdict::Refuse(None));
    assert_eq!(v("x", "ALL"), Verdict::Allow(Method::Md5, 2));
    assert_eq!(v("x", "all"), Verdict::Refuse(None));
    // `replication` names only replication connections, which never get here.
    let hba = rules("host replication all all trust\n");
    assert_eq!(
        hba.decide(&client("127.0.0.1", false, "replication", "u")),
        Verdict::Refuse(None)
    );
}

#[test]
fn include_files_are_relative_to_the_including_file() {
    let hba = parse_with(
        "host @dbs.txt @users/list all scram-sha-256\n",
        &[
            ("/etc/pgmux/dbs.txt", "# the shop's\nshop, shop_ro\n"),
            ("/etc/pgmux/users/list", "alice bob\n@more\n"),
            ("/etc/pgmux/users/more", "\"carol\"\n"),
        ],
    )
    .unwrap();
    let v = |db, user| hba.decide(&client("127.0.0.1", false, db, user));
    assert_eq!(
        v("shop_ro", "carol"),
        Verdict::Allow(Method::ScramSha256, 1)
    );
    assert_eq!(v("shop", "bob"), Verdict::Allow(Method::ScramSha256, 1));
    assert_eq!(v("blog", "bob"), Verdict::Refuse(None));
    let errs = parse_with("host @missing all all trust\n", &[]).unwrap_err();
    assert!(
        errs[0]
            .to_string()
            .starts_with("/etc/pgmux/hba.conf:1: @missing: cannot read"),
        "{}",
        errs[0]
    );
    let errs = parse_with(
        "host @a all all trust\n",
        &[("/etc/pgmux/a", "x\n+group\n")],
    )
    .unwrap_err();
    assert_eq!(errs[0].path, "/etc/pgmux/a");
    assert_eq!(errs[0].line, 2);
    let errs = parse_with("host @a all all trust\n", &[("/etc/pgmux/a", "@a\n")]).unwrap_err();
    assert!(errs[0].message.contains("nested too deeply"), "{errs:?}");
}

#[test]
fn every_bad_line_is_named() {
    let cases: &[(&str, &str)] = &[
        ("hostgssenc all all all trust", "GSSAPI"),
        ("hots all all all trust", "unknown connection type"),
        ("host all all 10.0.0.0/8 gss", "unsupported method"),
        (
            "host all all 10.0.0.0/8 cert",
            "cert authentication is not supported",
        ),
        (
            "host all all 10.0.0.0/8 peer",
            "only supported on local sockets",
        ),
        (
            "host all all 10.0.0.0/8 ldap ldapserver=x",
            "ldap authentication is not supported",
        ),
        (
            "host all all 10.0.0.0/8 md5 clientcert=verify-full",
            "options are not supported",
        ),
        ("host all all 10.0.0.1/8 md5", "bits set outside its mask"),
        ("host all all 10.0.0.0/33 md5", "invalid mask length"),
        ("host all all 10.0.0.0 md5", "is not a mask"),
        ("host all all 10.0.0.0 ffff:: md5", "is not a mask"),
        (
            "host all all db.example.com md5",
            "host names are not supported",
        ),
        ("host all all samenet md5", "samenet is not supported"),
        ("host all +admins all md5", "group membership"),
        ("host samerole all all md5", "samerole is not supported"),
        ("host all sameuser all md5", "database keyword"),
        ("host all,,x all all md5", "empty name"),
        ("host \"shop all all md5", "unterminated"),
        ("host all all", "missing address"),
        ("host all all all", "missing method"),
        ("host all all all \\", "line continuation"),
        ("local all all gss", "unsupported method"),
    ];
    for (line, want) in cases {
        let (n, msg) = error(&format!("# ok\n{line}\n"));
        assert_eq!(n, 2, "{line}");
        assert!(msg.contains(want), "{line}: {msg}");
    }
    // Every bad line is reported, not only the first.
    let errs = parse_with("host a b c d\nhost all all all trust\nlocal x\n", &[]).unwrap_err();
    let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
    assert_eq!(lines, [1, 3]);
}

#[test]
fn local_lines_are_checked_then_dropped_and_password_becomes_scram() {
    let hba = rules("local all all peer\nlocal all all cert\nhost all all all password\n");
    assert_eq!(
        hba.decide(&client("127.0.0.1", false, "d", "u")),
        Verdict::Allow(Method::ScramSha256, 3)
    );
    assert_eq!(hba.warnings.len(), 1);
    assert!(
        hba.warnings[0].starts_with("/etc/pgmux/hba.conf:3: password"),
        "{:?}",
        hba.warnings
    );
}

#[test]
fn refusals_read_as_postgresql_writes_them() {
    let c = client("127.0.0.1", false, "d", "u");
    assert_eq!(
        refusal(&c, true),
        "pg_hba.conf rejects connection for host \"127.0.0.1\", user \"u\", database \"d\", no encryption"
    );
    let c = client("::1", true, "d", "u");
    assert_eq!(
        refusal(&c, false),
        "no pg_hba.conf entry for host \"::1\", user \"u\", database \"d\", SSL encryption"
    );
}

#[test]
fn masks_of_any_length() {
    for (rule, inside, outside) in [
        ("0.0.0.0/0", "203.0.113.9", "::1"),
        ("192.168.0.0/16", "192.168.255.1", "192.169.0.1"),
        ("10.1.2.3/32", "10.1.2.3", "10.1.2.4"),
        ("10.1.2.3 255.255.255.255", "10.1.2.3", "10.1.2.4"),
        ("2001:db8::/32", "2001:db8:1::5", "2001:db9::1"),
        ("::/0", "fe80::1", "127.0.0.1"),
    ] {
        let hba = rules(&format!("host all all {rule} trust\n"));
        let v = |a: &str| hba.decide(&client(a, false, "d", "u"));
        assert_eq!(
            v(inside),
            Verdict::Allow(Method::Trust, 1),
            "{rule} {inside}"
        );
        assert_eq!(v(outside), Verdict::Refuse(None), "{rule} {outside}");
    }
}
