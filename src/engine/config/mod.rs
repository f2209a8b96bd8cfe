//! Configuration: the TOML file (`file.rs`, strict serde schema) → a validated runtime
//! [`Config`] (`runtime.rs`, with every default) and its derived indexes (key digest →
//! project, route table, price table, compiled patterns). Validation (`validate/`, one file per
//! section) collects *every* problem, each with its place in the file
//! (`path:line:col: field: message`, `error.rs`), so one `tollgate check` run shows them all.
//!
//! Engine module: no pingora, no tokio, no I/O. The shell's `reload::load_file` reads the file,
//! its included price files and the process environment and hands them to [`parse_with_files`],
//! with a [`TlsCheck`] that reads and checks the gateway's TLS files (`server.tls_cert` and
//! `server.tls_key`); the validator puts what it reports at the right place in the file.

mod error;
mod file;
mod runtime;
mod validate;

pub use error::{ConfigError, ConfigErrors};
pub use runtime::*;

use file::FileConfig;
use validate::Validator;

/// A reader of included files: relative path → (name to show in errors, text).
pub type FileReader<'a> = &'a dyn Fn(&str) -> Result<(String, String), String>;

/// A checker of the TLS files: the shell reads them and says what is wrong with them (nothing,
/// when they are a readable certificate chain and the private key that belongs to it).
pub type TlsCheck<'a> = &'a dyn Fn(&TlsFiles) -> Vec<TlsProblem>;

/// Validate a config text that includes no price files. `env` answers environment lookups
/// (injected so tests need no process-global state).
#[cfg(test)]
pub fn parse(
    text: &str,
    file_name: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    parse_with_files(
        text,
        file_name,
        env,
        &|p| Err(format!("cannot read {p}: no file access here")),
        &|_| {
            vec![TlsProblem {
                part: TlsPart::Cert,
                message: "no file access here".into(),
            }]
        },
    )
}

/// Validate a config text; `env` answers environment lookups, `read` supplies the files
/// named in `price_files` and `tls` checks the TLS files, if the file names any.
pub fn parse_with_files(
    text: &str,
    file_name: &str,
    env: &dyn Fn(&str) -> Option<String>,
    read: FileReader,
    tls: TlsCheck,
) -> Result<Config, ConfigErrors> {
    let mut v = Validator::new(text);
    let raw: FileConfig = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let (line, col) = match e.span() {
                Some(s) => v.line_col(s.start),
                None => (None, None),
            };
            return Err(ConfigErrors {
                file: file_name.to_string(),
                errors: vec![ConfigError {
                    file: None,
                    line,
                    col,
                    field: String::new(),
                    message: e.message().trim().to_string(),
                }],
            });
        }
    };
    let cfg = v.build(raw, env, read, tls);
    let errors = v.into_errors();
    match cfg {
        Some(cfg) if errors.is_empty() => Ok(cfg),
        _ => Err(ConfigErrors {
            file: file_name.to_string(),
            errors,
        }),
    }
}

#[cfg(test)]
mod tests;
