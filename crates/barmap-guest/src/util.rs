//! Small helpers: the error type, running commands, the cache directory.

use std::fmt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// An error of the host-side orchestration: what failed, in words.
#[derive(Debug)]
pub struct Error(String);

impl Error {
    /// An error with this message.
    pub fn msg(m: impl Into<String>) -> Self {
        Error(m.into())
    }

    /// Prefixes the message with what was being done.
    pub fn context(self, what: &str) -> Self {
        Error(format!("{what}: {}", self.0))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error(e.to_string())
    }
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

fn describe(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().to_string();
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command; its output goes to our stderr; a non-zero exit is an error.
pub fn run(c: &mut Command) -> Result<()> {
    let what = describe(c);
    let st = c
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::io::stderr()))
        .status()
        .map_err(|e| Error::msg(format!("{what}: {e}")))?;
    if st.success() {
        Ok(())
    } else {
        Err(Error::msg(format!("{what}: {st}")))
    }
}

/// Runs a command and returns its stdout; a non-zero exit is an error that
/// carries its stderr.
pub fn run_output(c: &mut Command) -> Result<String> {
    let what = describe(c);
    let out = c
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::msg(format!("{what}: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::msg(format!(
            "{what}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The cache directory: `$BARMAP_CACHE`, else `$XDG_CACHE_HOME/barmap/guest`,
/// else `$HOME/.cache/barmap/guest`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("BARMAP_CACHE") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("barmap").join("guest")
}
