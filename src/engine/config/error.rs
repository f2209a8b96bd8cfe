//! What validation reports: every problem of a file, each with its place
//! (`path:line:col: field: message`), printed the same by `tollgate check`, `serve` and a
//! rejected reload.

/// One problem found in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Set when the problem is in an included price file rather than the main file.
    pub file: Option<String>,
    pub line: Option<usize>,
    pub col: Option<usize>,
    /// Where in the schema, e.g. `routes[1].provider`.
    pub field: String,
    pub message: String,
}

/// Every problem of one file, printed one per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors {
    pub file: String,
    pub errors: Vec<ConfigError>,
}

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.errors.len();
        writeln!(
            f,
            "{}: {n} error{} in the configuration",
            self.file,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            let file = e.file.as_deref().unwrap_or(&self.file);
            match (e.line, e.col) {
                (Some(l), Some(c)) => write!(f, "  {file}:{l}:{c}: ")?,
                _ => write!(f, "  {file}: ")?,
            }
            if e.field.is_empty() {
                writeln!(f, "{}", e.message)?;
            } else {
                writeln!(f, "{}: {}", e.field, e.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
