//! The data directory holds the signing key, the admin token, the embedded database and
//! (for an agent host) secrets: only the user cfm runs as may enter it.

use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Owner-only: read, write and enter.
const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) owner-only. An existing directory that others may
/// enter is narrowed to owner-only, with a warning: what it holds was never meant for them.
pub fn create_private(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        match std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE)) {
            Ok(()) => tracing::warn!(
                dir = %dir.display(),
                "data directory was open to others (mode {mode:o}); narrowed it to {DIR_MODE:o}"
            ),
            // A volume mounted for a group (Kubernetes `fsGroup`) belongs to someone else:
            // cfm still runs, and everything it creates inside is owner-only.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => tracing::warn!(
                dir = %dir.display(),
                "data directory is open to others (mode {mode:o}) and not cfm's to narrow; \
                 what cfm creates in it is owner-only, but make the directory {DIR_MODE:o} \
                 if nothing else needs it"
            ),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Creates `path` empty and owner-only if it does not exist yet. SQLite gives the files
/// it makes beside a database (`-wal`, `-shm`) the database file's own mode, so creating
/// the database this way keeps all three private.
pub fn create_private_file(path: &Path) -> io::Result<()> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_directory_and_file_are_owner_only_and_an_open_one_is_narrowed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        create_private(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        let open = root.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_private(&open).unwrap();
        assert_eq!(mode(&open), 0o700);
        let file = dir.join("cfm.db");
        create_private_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        // An existing file is left as it is, content included.
        std::fs::write(&file, b"kept").unwrap();
        create_private_file(&file).unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"kept");
    }
}
