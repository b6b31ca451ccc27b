//! Where a secret comes from (an environment variable or a file) and the one function that
//! reads it: the admin token and the proxy's upload-token secret both go through
//! [`TokenSource::read`]. The DNS cookie secret is hex (inline or in a file) and is read by
//! `dns::cookie`; it shares the "one source, not both" check here.

use std::path::PathBuf;

use super::{ConfigError, Validator};

/// Where a secret is read from at start.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenSource {
    /// An environment variable of the Berth process.
    Env(String),
    /// A file, read whole and trimmed.
    File(PathBuf),
}

/// A secret file the config names cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read {what} file {}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl TokenSource {
    /// The secret, trimmed. An unset or blank variable is `None`, after a warning ending in
    /// `if_unset` (what Berth does without it); a file that cannot be read is an error, since
    /// the operator named it. `what` names the secret in the error ("admin token").
    pub fn read(&self, what: &'static str, if_unset: &str) -> Result<Option<String>, SecretError> {
        match self {
            TokenSource::Env(var) => match std::env::var(var) {
                Ok(t) if !t.trim().is_empty() => Ok(Some(t.trim().to_string())),
                _ => {
                    tracing::warn!("environment variable {var} is not set: {if_unset}");
                    Ok(None)
                }
            },
            TokenSource::File(path) => match std::fs::read_to_string(path) {
                Ok(t) => Ok(Some(t.trim().to_string())),
                Err(source) => Err(SecretError::Read {
                    what,
                    path: path.clone(),
                    source,
                }),
            },
        }
    }

    /// "$VAR" or the file's path: where the secret came from, for messages.
    pub fn describe(&self) -> String {
        match self {
            TokenSource::Env(var) => format!("${var}"),
            TokenSource::File(path) => path.display().to_string(),
        }
    }
}

impl Validator<'_> {
    /// Two keys of `section` that each give the same thing: at most one may be set.
    pub(super) fn not_both(
        &self,
        section: &str,
        (a, a_set): (&str, bool),
        (b, b_set): (&str, bool),
    ) -> Result<(), ConfigError> {
        if a_set && b_set {
            return Err(self.err(
                format!("{section}.{b}"),
                format!("give {a} or {b}, not both"),
            ));
        }
        Ok(())
    }

    /// `<section>.<env_key>` or `<section>.<file_key>`: where a secret comes from, if anywhere.
    pub(super) fn token_source(
        &self,
        section: &str,
        (env_key, env): (&str, Option<String>),
        (file_key, file): (&str, Option<String>),
    ) -> Result<Option<TokenSource>, ConfigError> {
        self.not_both(
            section,
            (env_key, env.is_some()),
            (file_key, file.is_some()),
        )?;
        match (env, file) {
            (Some(v), _) if v.is_empty() => Err(self.err(
                format!("{section}.{env_key}"),
                "names no environment variable",
            )),
            (Some(v), _) => Ok(Some(TokenSource::Env(v))),
            (None, Some(f)) => Ok(Some(TokenSource::File(self.resolve(&f)))),
            (None, None) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_read_trimmed_from_its_file_and_an_unset_variable_is_none() {
        let dir = std::env::temp_dir().join(format!("berth-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "  s3cret\n").unwrap();
        let from_file = TokenSource::File(file.clone());
        assert_eq!(
            from_file.read("admin token", "x").unwrap().as_deref(),
            Some("s3cret")
        );
        assert_eq!(from_file.describe(), file.display().to_string());

        let missing = TokenSource::File(dir.join("missing"));
        let e = missing.read("proxy secret", "x").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "cannot read proxy secret file {}",
                dir.join("missing").display()
            )
        );

        let unset = TokenSource::Env("BERTH_TEST_VARIABLE_NOBODY_SETS".into());
        assert_eq!(unset.read("admin token", "x").unwrap(), None);
        assert_eq!(unset.describe(), "$BERTH_TEST_VARIABLE_NOBODY_SETS");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
