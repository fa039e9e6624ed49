//! Reading `auth_hba_file` into the [`Config`] as part of every load, so
//! `pgmux check` names its bad lines and a reload that finds one changes
//! nothing. The rules themselves are `auth::hba`'s.

use std::path::Path;
use std::sync::Arc;

use super::{Config, ConfigError};
use crate::auth::hba;

/// Reads the rules named by `auth_hba_file` (a path as written: relative
/// to the working directory, as the TLS files) into `cfg.hba`; returns
/// the lines read differently from PgBouncer, as warnings.
pub(super) fn load(cfg: &mut Config) -> Result<Vec<String>, ConfigError> {
    let Some(file) = cfg.pgmux.auth_hba_file.as_deref() else {
        cfg.hba = None;
        return Ok(Vec::new());
    };
    let path = Path::new(file);
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut read = |p: &Path| std::fs::read_to_string(p);
    let rules = hba::parse(&text, path, &mut read).map_err(|errs| {
        ConfigError::Invalid(
            errs.iter()
                .map(|e| format!("pgmux.auth_hba_file: {e}"))
                .collect(),
        )
    })?;
    let warnings = rules.warnings.clone();
    cfg.hba = Some(Arc::new(rules));
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthType;

    #[test]
    fn rules_load_with_the_config_and_bad_lines_fail_it() {
        let dir = std::env::temp_dir().join(format!("pgmux-hba-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("hba.conf");
        let verifier = postgres_protocol::password::scram_sha_256(b"pw");
        let config = |extra: &str| {
            format!(
                "[pgmux]\nauth_type = \"hba\"\n{extra}\n[users.u]\npassword = \"{verifier}\"\n[databases.d]\n"
            )
        };
        let err = Config::parse(&config("")).unwrap_err().to_string();
        assert!(err.contains("needs auth_hba_file"), "{err}");
        let with_file = config(&format!("auth_hba_file = {:?}", file.display().to_string()));
        std::fs::write(
            &file,
            "host all all all md5\nhost all all 10.0.0.1/8 trust\nhost x\n",
        )
        .unwrap();
        let err = Config::parse(&with_file).unwrap_err().to_string();
        let at = file.display();
        assert!(
            err.contains(&format!("{at}:2: 10.0.0.1/8: the address")),
            "{err}"
        );
        assert!(err.contains(&format!("{at}:3: ")), "{err}");
        std::fs::write(&file, "host all all all password\n").unwrap();
        let (cfg, warnings) = Config::parse_with_warnings(&with_file).unwrap();
        assert_eq!(cfg.pgmux.auth_type, AuthType::Hba);
        assert!(cfg.hba.is_some());
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        // A trust rule lets a SCRAM-verifier user in without the proof
        // pgmux needs to log in to the server as that user.
        std::fs::write(&file, "host all all all trust\n").unwrap();
        let err = Config::parse(&with_file).unwrap_err().to_string();
        assert!(
            err.contains("users.u.password is a SCRAM verifier"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
