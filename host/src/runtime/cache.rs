//! Compiled plugins kept between runs, so a restart or a reload does not compile again.
//!
//! A compiled artifact is native code that wasmtime loads without checking it
//! (`Component::deserialize` is `unsafe` for that reason): whoever could put a file in
//! the cache folder could run code as the host. So every artifact carries an
//! HMAC-SHA256 tag over its name (the source's sha256 and the engine's compatibility
//! hash) and its bytes, keyed by a secret in a file beside the folder, not in it, that
//! only the host's user can read. An artifact whose tag does not verify, or that has
//! none, is refused with a warning and compiled again; so is another component's
//! artifact copied under this one's name.

// The workspace denies unsafe code; this is the one module that needs it, for the
// `Component::deserialize` call justified where it is made.
#![allow(unsafe_code)]

use std::hash::{Hash, Hasher};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::capability::files;

type HmacSha256 = Hmac<Sha256>;

/// Opens every artifact, so a file from before tags (or any other file) is told apart
/// from a forged one in the log.
const MAGIC: &[u8] = b"cfm compiled component, hmac-sha256\n";
const TAG_LEN: usize = 32;
/// What precedes the wasmtime artifact in a cached file: the magic line and the tag.
pub const HEADER_LEN: usize = MAGIC.len() + TAG_LEN;
const KEY_LEN: usize = 32;
/// The key's file name, in the cache folder's parent.
pub const KEY_FILE: &str = "compile-cache.key";

/// Why the compile cache cannot be used; the host then compiles without it.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Its folder or key file could not be made or read.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The key file is open to other users or malformed.
    #[error("{}: {why}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

/// Why a cached file was not loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The file has no tag: it is from before tags, or no artifact at all.
    #[error("it has no tag")]
    Untagged,
    /// The tag does not verify: the file was changed, or is another component's.
    #[error("its tag does not verify")]
    Forged,
}

/// A cache folder and the key its artifacts are tagged with.
pub struct CompileCache {
    dir: PathBuf,
    key: [u8; KEY_LEN],
}

impl CompileCache {
    /// Opens the cache in `dir` (created owner-only, or made so) with its key in
    /// `dir`'s parent, created owner-only on first use.
    pub fn open(dir: &Path) -> Result<Self, CacheError> {
        let io = |what: &str| {
            let what = format!("{what} {}", dir.display());
            move |source| CacheError::Io { what, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io("creating"))?;
        // An existing folder keeps its mode when created again: tighten it.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("restricting"))?;
        let parent = dir.parent().unwrap_or(Path::new("."));
        let key = load_or_create_key(&parent.join(KEY_FILE))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            key,
        })
    }

    /// The component compiled from the source with sha256 `digest` by an earlier run
    /// with the same engine settings and wasmtime version, if its tag verifies.
    pub fn load(&self, engine: &Engine, digest: &str) -> Option<Component> {
        let (path, name) = self.artifact(engine, digest);
        // Read, not mapped: a mapped artifact that someone truncates would kill the host.
        let sealed = std::fs::read(&path).ok()?;
        let artifact = match unseal(&self.key, &name, &sealed) {
            Ok(artifact) => artifact,
            Err(refused) => {
                tracing::warn!(
                    "refusing the cached {}: {refused}; compiling again",
                    path.display()
                );
                return None;
            }
        };
        // SAFETY: the tag verified under a key only this host's user can read, over this
        // name (the source's sha256 and this engine's compatibility hash) and these bytes:
        // they are what this host serialised for this source with this engine.
        match unsafe { Component::deserialize(engine, artifact) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!("recompiling {}: {e:#}", path.display());
                None
            }
        }
    }

    /// Keeps `component`, compiled from the source with sha256 `digest`, for the next run.
    /// A cache that cannot be written only costs start-up time: failures are logged.
    pub fn store(&self, engine: &Engine, digest: &str, component: &Component) {
        let (path, name) = self.artifact(engine, digest);
        let stored = component
            .serialize()
            .map_err(|e| format!("{e:#}"))
            .and_then(|artifact| {
                files::write_atomic(&path, &seal(&self.key, &name, &artifact))
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = stored {
            tracing::warn!("cannot cache {}: {e}", path.display());
        }
    }

    /// Where the artifact of `digest` lives, and its name (what the tag binds it to).
    fn artifact(&self, engine: &Engine, digest: &str) -> (PathBuf, String) {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let name = format!(
            "{}-{:016x}.cwasm",
            digest.to_ascii_lowercase(),
            hasher.finish()
        );
        (self.dir.join(&name), name)
    }
}

/// `artifact` with the magic line and its tag in front.
pub fn seal(key: &[u8; KEY_LEN], name: &str, artifact: &[u8]) -> Vec<u8> {
    let tag = mac(key, name, artifact).finalize().into_bytes();
    let mut sealed = Vec::with_capacity(HEADER_LEN + artifact.len());
    sealed.extend_from_slice(MAGIC);
    sealed.extend_from_slice(&tag);
    sealed.extend_from_slice(artifact);
    sealed
}

/// The artifact inside `sealed`, if its tag verifies for `name` (in constant time).
pub fn unseal<'a>(key: &[u8; KEY_LEN], name: &str, sealed: &'a [u8]) -> Result<&'a [u8], Refused> {
    let rest = sealed.strip_prefix(MAGIC).ok_or(Refused::Untagged)?;
    if rest.len() < TAG_LEN {
        return Err(Refused::Forged);
    }
    let (tag, artifact) = rest.split_at(TAG_LEN);
    mac(key, name, artifact)
        .verify_slice(tag)
        .map_err(|_| Refused::Forged)?;
    Ok(artifact)
}

fn mac(key: &[u8; KEY_LEN], name: &str, artifact: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length: this cannot fail.
    #[allow(clippy::expect_used)]
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    // The name's length first, so no name/artifact split can be shifted into another.
    mac.update(&(name.len() as u64).to_be_bytes());
    mac.update(name.as_bytes());
    mac.update(artifact);
    mac
}

/// The key at `path`, created (32 random bytes, 0600) when there is none.
fn load_or_create_key(path: &Path) -> Result<[u8; KEY_LEN], CacheError> {
    match read_key(path) {
        Err(CacheError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        other => return other,
    }
    let fresh: [u8; KEY_LEN] = rand::random();
    // Exclusive: of two hosts starting at once, one key wins and both read it.
    files::create_exclusive(path, &fresh).map_err(|source| CacheError::Io {
        what: format!("creating {}", path.display()),
        source,
    })?;
    read_key(path)
}

fn read_key(path: &Path) -> Result<[u8; KEY_LEN], CacheError> {
    let io = |source| CacheError::Io {
        what: format!("reading {}", path.display()),
        source,
    };
    let refused = |why: String| CacheError::Key {
        path: path.to_path_buf(),
        why,
    };
    let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
    // A key others can read forges artifacts; one others can write swaps them.
    if mode & 0o077 != 0 {
        return Err(refused(format!(
            "mode {:o} lets other users at the key; it must be 0600",
            mode & 0o777
        )));
    }
    let bytes = std::fs::read(path).map_err(io)?;
    bytes
        .try_into()
        .map_err(|bytes: Vec<u8>| refused(format!("holds {} bytes, not {KEY_LEN}", bytes.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; KEY_LEN] = [7; KEY_LEN];
    const NAME: &str = "ab12-0000000000000001.cwasm";

    #[test]
    fn a_sealed_artifact_opens_only_untouched_under_its_name_and_key() {
        let sealed = seal(&KEY, NAME, b"native code");
        assert_eq!(unseal(&KEY, NAME, &sealed), Ok(&b"native code"[..]));

        for at in [0, MAGIC.len(), MAGIC.len() + TAG_LEN - 1, sealed.len() - 1] {
            let mut flipped = sealed.clone();
            flipped[at] ^= 1;
            assert!(unseal(&KEY, NAME, &flipped).is_err(), "byte {at} flipped");
        }
        let other = "cd34-0000000000000001.cwasm";
        assert_eq!(unseal(&KEY, other, &sealed), Err(Refused::Forged));
        assert_eq!(unseal(&[8; KEY_LEN], NAME, &sealed), Err(Refused::Forged));
        assert_eq!(
            unseal(&KEY, NAME, &sealed[..HEADER_LEN - 1]),
            Err(Refused::Forged)
        );
        assert_eq!(unseal(&KEY, NAME, b"native code"), Err(Refused::Untagged));
        assert_eq!(
            unseal(&KEY, NAME, &sealed[HEADER_LEN..]),
            Err(Refused::Untagged)
        );
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_folder_and_key_are_the_owners_alone() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("cache");
        let first = CompileCache::open(&dir).unwrap();
        let key = data.path().join(KEY_FILE);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&key), 0o600);
        assert_eq!(std::fs::read(&key).unwrap().len(), KEY_LEN);
        assert!(!dir.join(KEY_FILE).exists(), "the key is inside the cache");
        // The same key on the next start; a folder opened up is closed again.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let second = CompileCache::open(&dir).unwrap();
        assert_eq!(first.key, second.key);
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn a_key_others_can_read_or_of_the_wrong_size_is_refused() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("cache");
        let key = data.path().join(KEY_FILE);
        std::fs::write(&key, [1; KEY_LEN]).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = CompileCache::open(&dir)
            .err()
            .expect("a shared key was used");
        assert!(err.to_string().contains("0600"), "{err}");

        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&key, [1; 5]).unwrap();
        let err = CompileCache::open(&dir)
            .err()
            .expect("a short key was used");
        assert!(err.to_string().contains("5 bytes"), "{err}");
    }
}
