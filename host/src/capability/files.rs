//! Crash-safe file writes shared by the embedded backends: a reader never sees a
//! half-written file, and a kill at any point leaves the old or the new content.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::bindings::cfm::plugin::types::Change;

/// Replaces `path` with `bytes` atomically (temp file, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = write_temp(path, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Creates `path` with `bytes` unless it exists. Returns false when it already existed.
/// The hard link makes "check and create" one atomic step even across processes.
pub fn create_exclusive(path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    let tmp = write_temp(path, bytes)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes `bytes` to `path` unless `same` finds the current content equivalent, and
/// says which of the three happened.
pub fn replace_unless(
    path: &Path,
    bytes: &[u8],
    same: impl FnOnce(&[u8]) -> bool,
) -> std::io::Result<Change> {
    let before = read_optional(path)?;
    match before {
        Some(current) if same(&current) => Ok(Change::Unchanged),
        existing => {
            write_atomic(path, bytes)?;
            Ok(if existing.is_some() {
                Change::Updated
            } else {
                Change::Created
            })
        }
    }
}

/// Runs `f` holding an exclusive advisory lock on `lock` (created if missing): a
/// read-modify-write of a file that several agent-host processes share (a zone every
/// participant's record lives in) must not lose another process's update.
pub fn locked<T>(lock: &Path, f: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
    if let Some(dir) = lock.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock)?;
    file.lock()?;
    // Closing the file releases the lock, also when `f` fails or the process dies.
    f()
}

/// Removes `path`; false when it was not there.
pub fn remove(path: &Path) -> std::io::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads `path`; None when it is not there.
pub fn read_optional(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Runs file I/O off the async workers.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, super::BackendError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| super::BackendError::Unavailable(format!("storage task failed: {e}")))?
        .map_err(super::BackendError::from)
}

fn write_temp(path: &Path, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile_in(dir)?;
    file.1.write_all(bytes)?;
    file.1.sync_all()?;
    Ok(file.0)
}

fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::os::unix::fs::OpenOptionsExt;
    loop {
        let name = format!(".tmp-{:016x}", rand_u64());
        let path = dir.join(name);
        // 0600: the embedded secret store writes through here too.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded per process and per instance: enough for unique temp names.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_exclusive_only_creates_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b");
        assert!(create_exclusive(&path, b"one").unwrap());
        assert!(!create_exclusive(&path, b"two").unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        write_atomic(&path, b"three").unwrap();
        assert_eq!(read_optional(&path).unwrap().unwrap(), b"three");
        assert!(remove(&path).unwrap());
        assert!(!remove(&path).unwrap());
        // No temp files are left behind.
        assert_eq!(std::fs::read_dir(dir.path().join("a")).unwrap().count(), 0);
    }
}
