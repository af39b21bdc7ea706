//! The key file: one hex master key per line, the first the active one, `#` starts a comment.
//! Written atomically (a temporary file, fsync, rename) with mode 0600.

use crate::MasterKey;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read the key file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write the key file {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("the key file {path} is corrupt: each line must hold 64 hex characters")]
    Corrupt { path: String },
}

#[derive(Debug, Clone)]
pub struct KeyFile {
    path: PathBuf,
}

impl KeyFile {
    pub fn at(path: impl Into<PathBuf>) -> KeyFile {
        KeyFile { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    pub fn read(&self) -> Result<Vec<MasterKey>, KeyFileError> {
        let path = self.path.display().to_string();
        let text =
            std::fs::read_to_string(&self.path).map_err(|source| KeyFileError::Read { path: path.clone(), source })?;
        let keys: Vec<MasterKey> = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .map(MasterKey::parse_hex)
            .collect::<Result<_, _>>()
            .map_err(|_| KeyFileError::Corrupt { path: path.clone() })?;
        if keys.is_empty() {
            return Err(KeyFileError::Corrupt { path });
        }
        Ok(keys)
    }

    /// Replaces the file's keys, atomically, with mode 0600.
    pub fn write(&self, keys: &[MasterKey]) -> Result<(), KeyFileError> {
        let fail = |source| KeyFileError::Write { path: self.path.display().to_string(), source };
        let tmp = self.path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp).map_err(fail)?;
        let mut text =
            String::from("# Herald master keys: the first seals, the others only open. Back this file up.\n");
        for k in keys {
            text.push_str(&k.to_hex());
            text.push('\n');
        }
        f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(fail)?;
        std::fs::rename(&tmp, &self.path).map_err(fail)?;
        if let Some(dir) = self.path.parent().and_then(|d| std::fs::File::open(d).ok()) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// Creates the file with one fresh key; fails if it already exists.
    pub fn create(&self) -> Result<MasterKey, KeyFileError> {
        if self.exists() {
            return Err(KeyFileError::Write {
                path: self.path.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "it already exists"),
            });
        }
        let key = MasterKey::generate();
        self.write(std::slice::from_ref(&key))?;
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_mode_0600_and_refuses_garbage() {
        let dir = std::env::temp_dir().join(format!("herald-keyfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = KeyFile::at(dir.join("secret.key"));
        let _ = std::fs::remove_file(file.path());
        let first = file.create().unwrap();
        assert!(file.create().is_err(), "create never overwrites");
        let second = MasterKey::generate();
        file.write(&[second.clone(), first.clone()]).unwrap();
        let ids: Vec<_> = file.read().unwrap().iter().map(MasterKey::id).collect();
        assert_eq!(ids, vec![second.id(), first.id()]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(file.path()).unwrap().permissions().mode() & 0o777, 0o600);
        }
        std::fs::write(file.path(), "nothex\n").unwrap();
        assert!(matches!(file.read(), Err(KeyFileError::Corrupt { .. })));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
