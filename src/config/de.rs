//! Value formats of the config file: durations written as strings and
//! `${VAR}` environment references inside string values.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Parses `"500ms"`, `"30s"`, `"5m"`, `"1h"`, `"1h 30m"` (or `"0"`), with
/// humantime's grammar. A bare number is refused: its unit would be a guess.
/// Values too large for a `Duration` are an error, never a panic.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.bytes().all(|b| b.is_ascii_digit()) && s.bytes().any(|b| b != b'0') {
        return Err(format!("duration {s:?} needs a unit: ms, s, m or h"));
    }
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Writes a duration back in the config's own format.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0".into();
    }
    // Whole milliseconds: the config's finest unit, and humantime would
    // otherwise spell out nanoseconds.
    let ms = Duration::from_millis(d.as_millis().min(u64::MAX as u128) as u64);
    humantime::format_duration(ms).to_string().replace(' ', "")
}

/// Replaces every `${VAR}` in `s` by that environment variable, and every
/// `${VAR:-default}` by the variable or, when it is unset or empty, the
/// default.
pub fn expand_env(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated ${{ in {s:?}"))?;
        let (name, default) = match after[..end].split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (&after[..end], None),
        };
        let value = std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty() || default.is_none());
        match (value, default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!("{} is not set", super::report::env_reference(name)))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Every `${VAR}` (without a default) in a config text whose variable is
/// not set, as "line N: ..." messages, so all of them are named at once.
/// Whole-line comments are skipped.
pub fn missing_env(text: &str) -> Vec<String> {
    let mut missing = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("${") {
            let after = &rest[i + 2..];
            let Some(end) = after.find('}') else { break };
            let name = &after[..end];
            if !name.contains(":-") && std::env::var_os(name).is_none() {
                missing.push(format!(
                    "line {}: {} is not set",
                    n + 1,
                    super::report::env_reference(name)
                ));
            }
            rest = &after[end + 1..];
        }
    }
    missing
}

/// serde: a duration string.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

/// serde: an optional duration string.
pub fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// serde: writes an optional duration string.
pub fn ser_opt_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&format_duration(*d)),
        None => s.serialize_none(),
    }
}

/// serde: writes a duration string.
pub fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

/// serde: a string with `${VAR}` expanded.
pub fn env_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    expand_env(&s).map_err(serde::de::Error::custom)
}

/// serde: an optional string with `${VAR}` expanded.
pub fn opt_env_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    env_string(d).map(Some)
}

/// serde: a list of strings, each with `${VAR}` expanded.
pub fn env_strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| expand_env(s).map_err(serde::de::Error::custom))
        .collect()
}

/// serde: writes a secret as a mask.
pub fn ser_secret<S: Serializer>(_: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("********")
}

/// serde: writes an optional secret as a mask.
pub fn ser_opt_secret<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("********"),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip() {
        for (s, d) in [
            ("500ms", Duration::from_millis(500)),
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
        ] {
            assert_eq!(parse_duration(s).unwrap(), d);
            assert_eq!(format_duration(d), s);
        }
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("3 lightyears").is_err());
        // Used to panic in Duration::from_secs_f64.
        assert!(parse_duration("99999999999999999999s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn env_expansion() {
        std::env::set_var("PGMUX_TEST_VAR", "xyz");
        assert_eq!(expand_env("a${PGMUX_TEST_VAR}b").unwrap(), "axyzb");
        assert!(expand_env("${PGMUX_SURELY_UNSET_VAR}").is_err());
        assert_eq!(
            expand_env("${PGMUX_SURELY_UNSET_VAR:-dflt}").unwrap(),
            "dflt"
        );
        assert_eq!(expand_env("${PGMUX_TEST_VAR:-dflt}").unwrap(), "xyz");
        assert_eq!(expand_env("${PGMUX_SURELY_UNSET_VAR:-}").unwrap(), "");
    }

    #[test]
    fn names_every_missing_variable_with_its_line() {
        let text = "a = \"${PGMUX_UNSET_A}\"\n# b = \"${PGMUX_UNSET_B}\"\nc = \"${PGMUX_UNSET_C:-x}\"\nd = \"${PGMUX_UNSET_D}${PGMUX_UNSET_E}\"\n";
        assert_eq!(
            missing_env(text),
            vec![
                "line 1: environment variable PGMUX_UNSET_A is not set",
                "line 4: environment variable PGMUX_UNSET_D is not set",
                "line 4: environment variable PGMUX_UNSET_E is not set",
            ]
        );
    }
}
