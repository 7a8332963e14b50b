//! A private directory for a server's sockets: made by `mkdtemp` (a name
//! nobody can predict, created exclusively, so nothing another user put in
//! the temporary directory is trusted), mode 0700, and removed with what
//! it holds when dropped, on every return, error or unwind.

use std::io;
use std::path::{Path, PathBuf};

/// A fresh private directory, removed when dropped.
#[derive(Debug)]
pub struct PrivateDir(PathBuf);

impl PrivateDir {
    /// A fresh `PREFIX-XXXXXX` in the temporary directory (`$TMPDIR` or
    /// `/tmp`), exactly mode 0700.
    pub fn new(prefix: &str) -> io::Result<PrivateDir> {
        use std::os::unix::ffi::OsStringExt;
        let template = std::env::temp_dir().join(format!("{prefix}-XXXXXX"));
        let mut t = std::ffi::CString::new(template.into_os_string().into_vec())
            .map_err(|_| io::ErrorKind::InvalidInput)?
            .into_bytes_with_nul();
        // SAFETY: mkdtemp rewrites the trailing XXXXXX of our NUL-terminated
        // buffer in place; null on failure.
        if unsafe { libc::mkdtemp(t.as_mut_ptr().cast()) }.is_null() {
            return Err(io::Error::last_os_error());
        }
        t.pop();
        let dir = PrivateDir(PathBuf::from(std::ffi::OsString::from_vec(t)));
        // mkdtemp makes it 0700 less the umask; exactly 0700.
        std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        Ok(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_private_dir_is_0700_unpredictable_and_gone_after_drop() {
        let a = PrivateDir::new("barmap-private-test").unwrap();
        let b = PrivateDir::new("barmap-private-test").unwrap();
        assert_ne!(a.path(), b.path());
        let mode = std::fs::metadata(a.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::write(a.path().join("f"), b"x").unwrap();
        let p = a.path().to_path_buf();
        drop(a);
        assert!(!p.exists());
    }
}
