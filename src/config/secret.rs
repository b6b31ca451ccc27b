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
