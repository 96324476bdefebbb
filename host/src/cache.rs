//! A persistent cache of precompiled components, so that a second `host`
//! process loads machine code instead of compiling the same component again
//! (or, for a preview1 module, adapting it and compiling the result again).
//!
//! Layout of the cache folder (0700, owned by this user, checked on open):
//!
//! ```text
//! <cache>/
//!   <64 hex: sha256 of the component>-<16 hex: engine digest>.v3.cwasm                  0600, a component
//!   <64 hex: sha256 of the module>-preview1-<16 hex: adaptation>-<16 hex: engine>.v3.cwasm 0600, a preview1 module
//!   .tmp-<32 hex>                                                                      0600, an entry being written
//! ```
//!
//! An entry is the payload, the artifact wasmtime produced for that source
//! with that engine (an ELF file), followed by a trailer. The artifact comes
//! first so that wasmtime can map the entry's file as it is
//! ([`Component::deserialize_file`]) instead of a copy being read into memory
//! and copied again into executable memory. All integers little-endian, `n`
//! the payload's length:
//!
//! ```text
//! offset  size  field
//!      0     n  payload
//!      n     8  magic "ORDHCWSM"
//!    n+8     4  format version (3)
//!   n+12     4  kind: 1 a component, compiled as it is;    }
//!                     2 a preview1 core module, adapted    }
//!                     into a component, then compiled      } the key: must
//!   n+16    32  sha256 of the source's bytes (the          } equal the
//!               component's, or the module's)              } expected one
//!   n+48    32  adaptation digest (kind 2), zeros (kind 1)  }
//!   n+80    32  engine digest (sha256 of its settings)     }
//!  n+112     8  payload length in bytes (n)
//!  n+120    32  sha256 of the payload
//!  n+152        end of file
//! ```
//!
//! A preview1 module is keyed by its own bytes and by the digest of the
//! adaptation that turns it into a component ([`crate::program`]: the adapter
//! and the changes made to it), not by the component's bytes: a hit then
//! needs neither the adapter nor wit-component, whose work costs more than
//! loading the compiled code. The kind keeps the two apart: an entry written
//! for a component is never taken for a module's, whatever its bytes, nor the
//! other way round (the names differ, and so do the trailers).
//!
//! The engine digest is sha256 over wasmtime's
//! [`Engine::precompile_compatibility_hash`] (target, compiler flags,
//! tunables such as fuel or epochs, wasm features, wasmtime version), so two
//! engines with different settings never share an entry. An entry is used only
//! when every trailer field checks out and the payload's sha256 matches (read
//! through the open file, in chunks); then wasmtime maps that same file
//! (reopened through `/proc/self/fd`, not by name) and checks its own header
//! and the engine's compatibility again. Anything else (unreadable, truncated,
//! corrupt, foreign, written by an older format, or refused by wasmtime) is
//! compiled afresh and replaced, atomically (temp file, fsync, rename): an
//! entry's file is never written once it has its name. Failing to write the
//! cache never fails a load. A loaded component keeps its entry's file open
//! and mapped (one descriptor) while it lives. Without `/proc`, the entry is
//! read into memory, checked there and deserialized from that copy.

// The crate's `unsafe` blocks, `Component::deserialize_file` and
// `Component::deserialize`, are below; the crate root denies unsafe code
// everywhere else.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::fmt;
use std::hash::{Hash as _, Hasher};
use std::io::{self, ErrorKind, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use cap_std::fs::Dir;
use sha2::{Digest as _, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::fs::{AtomicFile, hex, open_private_dir};

const MAGIC: [u8; 8] = *b"ORDHCWSM";
/// 1: a header before the payload, keyed by the component's bytes; 2: the
/// kind and the adaptation digest joined the key; 3: the header became a
/// trailer, so that the payload starts the file and can be mapped.
const FORMAT_VERSION: u32 = 3;
const DIGEST_LEN: usize = 32;
/// magic, version, kind, source sha256, adaptation digest, engine digest,
/// payload length, payload sha256.
const TRAILER_LEN: usize = 8 + 4 + 4 + DIGEST_LEN + DIGEST_LEN + DIGEST_LEN + 8 + DIGEST_LEN;
/// How much of an entry's payload is read at once to check its sha256: a
/// buffer that stays in cache, rather than the whole payload in fresh memory.
const CHECK_CHUNK: usize = 128 * 1024;
/// Hex digits of the engine and adaptation digests in an entry's name (the
/// header holds all of them).
const NAME_HEX_DIGITS: usize = 16;
/// The format version is part of the name: a `host` of another format
/// misses this one's entries (and keeps its own) instead of rebuilding them
/// with a warning each time the two take turns.
const ENTRY_SUFFIX: &str = ".v3.cwasm";
const TEMP_PREFIX: &str = ".tmp-";

/// The default folder of the compiled-code cache ([`crate::RunnerConfig::cache_dir`]):
/// `$XDG_CACHE_HOME/orders-host`, else `$HOME/.cache/orders-host`; `None`
/// when neither variable is usable.
#[must_use]
pub fn default_cache_dir() -> Option<PathBuf> {
    default_path_from(std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"))
}

/// How [`CodeCache::load_or_compile`] got its component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheStatus {
    /// A valid entry was loaded: nothing was compiled (nor adapted).
    Hit,
    /// There was no entry: the component was compiled and (best effort) stored.
    Miss,
    /// The entry was unreadable, corrupt or written for other engine settings:
    /// the component was compiled and (best effort) stored in its place.
    Rebuilt,
}

/// What the compiled code is made from: the source half of an entry's key.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Source<'a> {
    /// A component's bytes, compiled as they are.
    Component(&'a [u8]),
    /// A preview1 core module's bytes, turned into a component by the
    /// adaptation of this digest ([`crate::program::adaptation_digest`]),
    /// then compiled.
    Preview1Module { module: &'a [u8], adaptation: [u8; DIGEST_LEN] },
}

/// A folder of precompiled components, private to this user.
pub(crate) struct CodeCache {
    dir: Dir,
    path: PathBuf,
}

impl fmt::Debug for CodeCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CodeCache").field("path", &self.path).finish_non_exhaustive()
    }
}

impl CodeCache {
    /// Opens the cache folder at `path`, creating it (and missing parents) 0700.
    ///
    /// This is the one place where the cache uses ambient authority: the path
    /// becomes a capability, and every entry is reached through it.
    ///
    /// # Errors
    ///
    /// When the folder cannot be created or opened, or when it is not private:
    /// owned by another user, or writable by group or others (anyone who can
    /// write the folder could plant machine code that this process would run).
    pub fn open(path: &Path) -> io::Result<Self> {
        let dir = open_private_dir(path, "code cache folder", "choose another cache folder")?;
        Ok(Self { dir, path: path.to_owned() })
    }

    /// Where the cache is on disk.
    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the component compiled from `source` for `engine` from the
    /// cache, or makes it with `compile` (called only then: a hit costs
    /// neither the compile nor, for a module, the adaptation) and stores it
    /// for the next process.
    ///
    /// # Errors
    ///
    /// Only `compile`'s, when it fails. Problems with the cache itself are
    /// logged and end in a compile instead.
    pub fn load_or_compile<E>(
        &self,
        engine: &Engine,
        source: Source<'_>,
        compile: impl FnOnce() -> Result<Component, E>,
    ) -> Result<(Component, CacheStatus), E> {
        let key = Key::new(engine, source);
        let name = key.file_name();
        let path = self.path.join(&name);
        let status = match self.dir.open(&name) {
            Ok(entry) => match load_entry(engine, &key, entry.into_std()) {
                Ok(component) => {
                    tracing::debug!(entry = %path.display(), "code cache hit");
                    return Ok((component, CacheStatus::Hit));
                }
                Err(reason) => {
                    tracing::warn!(entry = %path.display(), "bad code cache entry, rebuilding it: {reason}");
                    CacheStatus::Rebuilt
                }
            },
            Err(err) if err.kind() == ErrorKind::NotFound => CacheStatus::Miss,
            Err(err) => {
                tracing::warn!(entry = %path.display(), "cannot read code cache entry, rebuilding it: {err}");
                CacheStatus::Rebuilt
            }
        };
        let component = compile()?;
        // `serialize` returns the artifact `Engine::precompile_component` would
        // produce, without compiling a second time.
        let stored = component
            .serialize()
            .map_err(|err| io::Error::other(format!("cannot serialize the component: {err:#}")))
            .and_then(|payload| self.write_entry(&name, &payload, &encode_trailer(&key, &payload)));
        match stored {
            Ok(()) => tracing::debug!(entry = %path.display(), ?status, "code cache entry written"),
            Err(err) => {
                tracing::warn!(entry = %path.display(), "cannot write code cache entry: {err}");
            }
        }
        Ok((component, status))
    }

    /// Writes `payload` and `trailer` to a fresh 0600 temp file in the cache
    /// folder, syncs it, and renames it over `name`: readers see the old entry
    /// or the new one, never half of one, and no entry's file is written once
    /// it has its name (a loaded component maps it).
    fn write_entry(&self, name: &str, payload: &[u8], trailer: &[u8]) -> io::Result<()> {
        let mut entry = AtomicFile::create(&self.dir, TEMP_PREFIX)?;
        entry.file()?.write_all(payload)?;
        entry.file()?.write_all(trailer)?;
        entry.commit(name)
    }
}

fn default_path_from(xdg_cache_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    // The XDG spec says to ignore a relative (or empty) $XDG_CACHE_HOME.
    if let Some(base) = xdg_cache_home.map(PathBuf::from).filter(|p| p.is_absolute()) {
        return Some(base.join("orders-host"));
    }
    home.filter(|home| !home.is_empty()).map(|home| PathBuf::from(home).join(".cache").join("orders-host"))
}

/// The kind of source an entry was compiled from, as its header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum SourceKind {
    Component = 1,
    Preview1Module = 2,
}

/// What the kind field of a header says, for a message.
fn kind_name(kind: u32) -> &'static str {
    match kind {
        k if k == SourceKind::Component as u32 => "a component",
        k if k == SourceKind::Preview1Module as u32 => "a preview1 module",
        _ => "a source of unknown kind",
    }
}

/// What an entry must have been written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    kind: SourceKind,
    /// sha256 of the source's bytes: the component's, or the module's.
    source: [u8; DIGEST_LEN],
    /// The adaptation's digest for a module; zeros for a component.
    adaptation: [u8; DIGEST_LEN],
    engine: [u8; DIGEST_LEN],
}

impl Key {
    fn new(engine: &Engine, source: Source<'_>) -> Self {
        let (kind, bytes, adaptation) = match source {
            Source::Component(bytes) => (SourceKind::Component, bytes, [0; DIGEST_LEN]),
            Source::Preview1Module { module, adaptation } => (SourceKind::Preview1Module, module, adaptation),
        };
        Self { kind, source: Sha256::digest(bytes).into(), adaptation, engine: engine_digest(engine) }
    }

    fn file_name(&self) -> String {
        let short = |digest: &[u8; DIGEST_LEN]| hex(digest.get(..NAME_HEX_DIGITS / 2).unwrap_or(digest));
        match self.kind {
            SourceKind::Component => format!("{}-{}{ENTRY_SUFFIX}", hex(&self.source), short(&self.engine)),
            SourceKind::Preview1Module => format!(
                "{}-preview1-{}-{}{ENTRY_SUFFIX}",
                hex(&self.source),
                short(&self.adaptation),
                short(&self.engine)
            ),
        }
    }
}

/// sha256 over `engine.precompile_compatibility_hash()`: unlike
/// `DefaultHasher`, stable from one process to the next.
fn engine_digest(engine: &Engine) -> [u8; DIGEST_LEN] {
    let mut hasher = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.0.finalize().into()
}

/// A [`Hasher`] that feeds everything it is given to sha256.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let digest: [u8; DIGEST_LEN] = self.0.clone().finalize().into();
        let mut first = [0u8; 8];
        first.copy_from_slice(digest.get(..8).unwrap_or(&[0; 8]));
        u64::from_le_bytes(first)
    }
}

fn encode_trailer(key: &Key, payload: &[u8]) -> Vec<u8> {
    let mut trailer = Vec::with_capacity(TRAILER_LEN);
    trailer.extend_from_slice(&MAGIC);
    trailer.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    trailer.extend_from_slice(&(key.kind as u32).to_le_bytes());
    trailer.extend_from_slice(&key.source);
    trailer.extend_from_slice(&key.adaptation);
    trailer.extend_from_slice(&key.engine);
    trailer.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    trailer.extend_from_slice(&Sha256::digest(payload));
    debug_assert_eq!(trailer.len(), TRAILER_LEN);
    trailer
}

/// Checks the trailer of an entry of `entry_len` bytes against `key`, and
/// returns the payload's length and sha256 as it gives them; the error says
/// what is wrong.
fn check_trailer(key: &Key, trailer: &[u8; TRAILER_LEN], entry_len: u64) -> Result<(u64, [u8; DIGEST_LEN]), String> {
    // The chunks below cannot run short: they add up to TRAILER_LEN.
    let short = || "short trailer".to_owned();
    let (magic, rest) = trailer.split_first_chunk::<8>().ok_or_else(short)?;
    if *magic != MAGIC {
        return Err("not a cache entry of this format (bad magic)".to_owned());
    }
    let (version, rest) = rest.split_first_chunk::<4>().ok_or_else(short)?;
    let version = u32::from_le_bytes(*version);
    if version != FORMAT_VERSION {
        return Err(format!("format version {version}, expected {FORMAT_VERSION}"));
    }
    let (kind, rest) = rest.split_first_chunk::<4>().ok_or_else(short)?;
    let kind = u32::from_le_bytes(*kind);
    if kind != key.kind as u32 {
        return Err(format!("written for {}, not for {}", kind_name(kind), kind_name(key.kind as u32)));
    }
    let (source, rest) = rest.split_first_chunk::<DIGEST_LEN>().ok_or_else(short)?;
    if *source != key.source {
        return Err("written for another component or module".to_owned());
    }
    let (adaptation, rest) = rest.split_first_chunk::<DIGEST_LEN>().ok_or_else(short)?;
    if *adaptation != key.adaptation {
        return Err("written by another preview1 adaptation".to_owned());
    }
    let (engine, rest) = rest.split_first_chunk::<DIGEST_LEN>().ok_or_else(short)?;
    if *engine != key.engine {
        return Err("written by an engine with other settings".to_owned());
    }
    let (length, checksum) = rest.split_first_chunk::<8>().ok_or_else(short)?;
    let checksum: [u8; DIGEST_LEN] = checksum.try_into().map_err(|_| short())?;
    let length = u64::from_le_bytes(*length);
    let payload = entry_len.checked_sub(TRAILER_LEN as u64).ok_or_else(|| truncated(entry_len))?;
    if payload != length {
        return Err(format!("payload is {payload} bytes, the trailer says {length}"));
    }
    Ok((length, checksum))
}

/// Checks a whole entry in memory against `key` and returns its payload.
fn check_entry<'a>(key: &Key, entry: &'a [u8]) -> Result<&'a [u8], String> {
    let split = entry.len().checked_sub(TRAILER_LEN).ok_or_else(|| truncated(entry.len() as u64))?;
    let (payload, trailer) = entry.split_at(split);
    let trailer = trailer.try_into().map_err(|_| truncated(entry.len() as u64))?;
    let (_, checksum) = check_trailer(key, trailer, entry.len() as u64)?;
    if Sha256::digest(payload).as_slice() != checksum {
        return Err("payload checksum mismatch".to_owned());
    }
    Ok(payload)
}

fn truncated(entry_len: u64) -> String {
    format!("truncated: {entry_len} bytes, fewer than a trailer's {TRAILER_LEN}")
}

/// sha256 of the first `len` bytes of `file`, read in chunks (at offsets, so
/// the file's position does not matter).
fn sha256_of_start(file: &std::fs::File, len: u64) -> io::Result<[u8; DIGEST_LEN]> {
    let mut digest = Sha256::new();
    let mut buffer = vec![0u8; CHECK_CHUNK];
    let mut offset = 0u64;
    while offset < len {
        let want = usize::try_from(len - offset).unwrap_or(usize::MAX).min(CHECK_CHUNK);
        let chunk = &mut buffer[..want];
        file.read_exact_at(chunk, offset)?;
        digest.update(&*chunk);
        offset += want as u64;
    }
    Ok(digest.finalize().into())
}

/// Loads the entry open as `file`, checked against `key`, as a component;
/// the error says what is wrong with it.
fn load_entry(engine: &Engine, key: &Key, file: std::fs::File) -> Result<Component, String> {
    // The same file, whatever its name points to by now.
    let opened = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    if !opened.exists() {
        return load_entry_in_memory(engine, key, &file);
    }
    let meta = file.metadata().map_err(|err| format!("cannot stat it: {err}"))?;
    if !meta.is_file() {
        return Err("not a regular file".to_owned());
    }
    let len = meta.len();
    let trailer_at = len.checked_sub(TRAILER_LEN as u64).ok_or_else(|| truncated(len))?;
    let mut trailer = [0u8; TRAILER_LEN];
    file.read_exact_at(&mut trailer, trailer_at).map_err(|err| format!("cannot read its trailer: {err}"))?;
    let (payload_len, checksum) = check_trailer(key, &trailer, len)?;
    let digest = sha256_of_start(&file, payload_len).map_err(|err| format!("cannot read its payload: {err}"))?;
    if digest != checksum {
        return Err("payload checksum mismatch".to_owned());
    }
    // SAFETY: `Component::deserialize_file` trusts the file to hold an
    // artifact that wasmtime produced, as it maps it as executable code, and
    // to stay as it is while mapped. This file holds one, and does:
    // - its payload was written by `write_entry` from `Component::serialize`
    //   (the same artifact as `Engine::precompile_component`) of an engine
    //   whose compatibility hash has the same sha256 as `engine`'s (the
    //   trailer's key); the trailer after it is not part of the ELF image,
    //   which wasmtime reads through its own headers;
    // - its integrity is verified: the file's length and its payload's
    //   sha256 match the trailer, read just now through `file`, and wasmtime
    //   maps this very file (`/proc/self/fd` reopens the open file, not the
    //   name, which another process may have replaced since);
    // - it is not written any more: an entry is written whole to a temp file
    //   and renamed into place, and replacing it renames another file over
    //   the name, leaving this one as it is;
    // - the cache folder belongs to this user and is not writable by group or
    //   others (checked on open), the entry is 0600: no one else could have
    //   planted it or change it (its owner could, as they could plant an
    //   entry with a matching checksum: the checksum guards against
    //   corruption, the folder's permissions against others);
    // - wasmtime re-checks its own ELF header, the artifact kind and the
    //   engine's settings, and returns an error (handled as a bad entry) on a
    //   mismatch.
    let component = unsafe { Component::deserialize_file(engine, &opened) };
    component.map_err(|err| format!("wasmtime refused it: {err:#}"))
}

/// [`load_entry`] without `/proc`: the entry is read into memory, checked
/// there, and deserialized from that copy.
fn load_entry_in_memory(engine: &Engine, key: &Key, file: &std::fs::File) -> Result<Component, String> {
    let mut entry = Vec::new();
    io::Read::read_to_end(&mut &*file, &mut entry).map_err(|err| format!("cannot read it: {err}"))?;
    let payload = check_entry(key, &entry)?;
    // SAFETY: `Component::deserialize` trusts its input to be an artifact that
    // wasmtime produced, as it maps it as executable code. This payload is one:
    // - it was written by `write_entry` from `Component::serialize` (the same
    //   artifact as `Engine::precompile_component`) of an engine whose
    //   compatibility hash has the same sha256 as `engine`'s (the trailer's key);
    // - its integrity is verified: its length and sha256 match the trailer,
    //   over exactly the bytes that are deserialized (this process's copy);
    // - the cache folder belongs to this user and is not writable by group or
    //   others (checked on open), so no one else could have planted it;
    // - wasmtime re-checks its own ELF header, the artifact kind and the
    //   engine's settings, and returns an error (handled as a bad entry) on a
    //   mismatch.
    let component = unsafe { Component::deserialize(engine, payload) };
    component.map_err(|err| format!("wasmtime refused it: {err:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BUNDLED_PIPELINE;
    use crate::fs::random_hex;
    use std::os::unix::fs::PermissionsExt as _;
    use std::time::Instant;
    use wasmtime::Config;

    fn scratch() -> PathBuf {
        std::env::temp_dir().join(format!("cache-unit-{}", random_hex().expect("rng")))
    }

    fn new_engine(fuel: bool) -> Engine {
        let mut config = Config::new();
        config.consume_fuel(fuel);
        Engine::new(&config).expect("engine")
    }

    const PIPELINE: Source<'static> = Source::Component(BUNDLED_PIPELINE);

    fn entry_path(cache: &CodeCache, engine: &Engine) -> PathBuf {
        source_path(cache, engine, PIPELINE)
    }

    fn source_path(cache: &CodeCache, engine: &Engine, source: Source<'_>) -> PathBuf {
        cache.path().join(Key::new(engine, source).file_name())
    }

    fn names(path: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(path)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn assert_usable(component: &Component, engine: &Engine) {
        let exports = component.component_type().exports(engine).count();
        assert!(exports > 0, "the pipeline exports something");
    }

    fn load(cache: &CodeCache, engine: &Engine) -> CacheStatus {
        load_counting(cache, engine, PIPELINE).0
    }

    /// Loads `source` (compiled, if it comes to that, as the bundled
    /// pipeline: the cache does not look at what it stores) and says whether
    /// it was compiled.
    fn load_counting(cache: &CodeCache, engine: &Engine, source: Source<'_>) -> (CacheStatus, bool) {
        let mut compiled = false;
        let compile = || {
            compiled = true;
            Component::new(engine, BUNDLED_PIPELINE)
        };
        let (component, status) = cache.load_or_compile(engine, source, compile).expect("loads");
        assert_usable(&component, engine);
        (status, compiled)
    }

    #[test]
    fn the_entry_names_carry_the_format_version() {
        assert_eq!(ENTRY_SUFFIX, format!(".v{FORMAT_VERSION}.cwasm"));
    }

    #[test]
    fn miss_then_hit() {
        let base = scratch();
        let cache = CodeCache::open(&base.join("cache")).expect("open");
        let engine = new_engine(false);

        let started = Instant::now();
        assert_eq!(load(&cache, &engine), CacheStatus::Miss);
        let cold = started.elapsed();
        let started = Instant::now();
        assert_eq!(load(&cache, &engine), CacheStatus::Hit);
        let hit = started.elapsed();
        eprintln!("bundled pipeline: compile and store {cold:?}, cache hit {hit:?}");

        let mode = std::fs::metadata(cache.path()).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let entry = entry_path(&cache, &engine);
        let mode = std::fs::metadata(&entry).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let name = entry.file_name().expect("name").to_string_lossy().into_owned();
        assert_eq!(names(cache.path()), vec![name.clone()], "no temp file left behind");
        assert_eq!(name.len(), 64 + 1 + NAME_HEX_DIGITS + ENTRY_SUFFIX.len());

        // Another handle on the same folder (as another process would have)
        // with an identically configured engine hits too.
        let again = CodeCache::open(cache.path()).expect("reopen");
        assert_eq!(load(&again, &new_engine(false)), CacheStatus::Hit);
        std::fs::remove_dir_all(base).expect("cleanup");
    }

    #[test]
    fn corrupt_entries_are_rebuilt() {
        let base = scratch();
        let cache = CodeCache::open(&base.join("cache")).expect("open");
        let engine = new_engine(false);
        assert_eq!(load(&cache, &engine), CacheStatus::Miss);
        let entry = entry_path(&cache, &engine);
        let good = std::fs::read(&entry).expect("read");

        let mut flipped_payload = good.clone();
        *flipped_payload.last_mut().expect("payload") ^= 0x01;
        let mut flipped_trailer = good.clone();
        *flipped_trailer.last_mut().expect("trailer") ^= 0x80;
        let mut flipped_start = good.clone();
        flipped_start[0] ^= 0x01;
        let mut longer = good.clone();
        longer.push(0);
        let mut version_1 = good.clone();
        let at = good.len() - TRAILER_LEN + 8;
        version_1[at..at + 4].copy_from_slice(&2u32.to_le_bytes());
        let corruptions: [(&str, &[u8]); 9] = [
            ("a byte flipped in the payload", &flipped_payload),
            ("a byte flipped in the trailer", &flipped_trailer),
            ("a byte flipped in the ELF header", &flipped_start),
            ("truncated in the payload", &good[..good.len() / 2]),
            ("truncated in the trailer", &good[..good.len() - TRAILER_LEN / 2]),
            ("shorter than a trailer", &good[..TRAILER_LEN / 2]),
            ("empty", &[]),
            ("a byte appended", &longer),
            ("written by format version 2", &version_1),
        ];
        for (what, bytes) in corruptions {
            std::fs::write(&entry, bytes).expect("corrupt");
            assert_eq!(load(&cache, &engine), CacheStatus::Rebuilt, "{what}");
            assert_eq!(std::fs::read(&entry).expect("read"), good, "{what}: the entry is replaced");
            assert_eq!(load(&cache, &engine), CacheStatus::Hit, "{what}");
        }
        assert_eq!(names(cache.path()).len(), 1, "no temp file left behind");
        std::fs::remove_dir_all(base).expect("cleanup");
    }

    #[test]
    fn an_entry_checks_out_in_memory_as_through_its_file() {
        let base = scratch();
        let cache = CodeCache::open(&base.join("cache")).expect("open");
        let engine = new_engine(false);
        assert_eq!(load(&cache, &engine), CacheStatus::Miss);
        let entry = entry_path(&cache, &engine);
        let key = Key::new(&engine, PIPELINE);
        let open = || std::fs::File::open(&entry).expect("open");
        // The way a process without `/proc` loads it.
        assert_usable(&load_entry_in_memory(&engine, &key, &open()).expect("loads"), &engine);
        assert_usable(&load_entry(&engine, &key, open()).expect("loads"), &engine);
        let mut flipped = std::fs::read(&entry).expect("read");
        let at = flipped.len() / 3;
        flipped[at] ^= 0x01;
        std::fs::write(&entry, &flipped).expect("corrupt");
        for err in [load_entry_in_memory(&engine, &key, &open()), load_entry(&engine, &key, open())]
            .map(|loaded| loaded.map(|_| ()).expect_err("corrupt"))
        {
            assert_eq!(err, "payload checksum mismatch");
        }
        std::fs::remove_dir_all(base).expect("cleanup");
    }

    #[test]
    fn a_loaded_component_outlives_the_replacement_of_its_entry() {
        let base = scratch();
        let cache = CodeCache::open(&base.join("cache")).expect("open");
        let engine = new_engine(false);
        assert_eq!(load(&cache, &engine), CacheStatus::Miss);
        let (loaded, status) =
            cache.load_or_compile(&engine, PIPELINE, || Component::new(&engine, BUNDLED_PIPELINE)).expect("loads");
        assert_eq!(status, CacheStatus::Hit);
        // Another process rebuilds the entry (as after finding it bad): a new
        // file renamed over the name, the mapped one left as it was.
        let entry = entry_path(&cache, &engine);
        let good = std::fs::read(&entry).expect("read");
        let mut rebuilt = cache.dir.create(".tmp-test").expect("temp");
        rebuilt.write_all(&good).expect("write");
        drop(rebuilt);
        cache.dir.rename(".tmp-test", &cache.dir, entry.file_name().expect("name")).expect("rename");
        assert_usable(&loaded, &engine);
        assert_eq!(load(&cache, &engine), CacheStatus::Hit, "the new file");
        std::fs::remove_dir_all(base).expect("cleanup");
    }

    #[test]
    fn foreign_entries_are_rebuilt() {
        let base = scratch();
        let cache = CodeCache::open(&base.join("cache")).expect("open");
        let plain = new_engine(false);
        let fuel = new_engine(true);
        let plain_entry = entry_path(&cache, &plain);
        let fuel_entry = entry_path(&cache, &fuel);
        assert_ne!(plain_entry, fuel_entry, "the engine settings are part of the name");

        // An entry of the fuel engine, copied over the name the plain engine
        // expects: its header names the other engine.
        assert_eq!(load(&cache, &fuel), CacheStatus::Miss);
        std::fs::copy(&fuel_entry, &plain_entry).expect("copy");
        assert_eq!(load(&cache, &plain), CacheStatus::Rebuilt);
        assert_eq!(load(&cache, &plain), CacheStatus::Hit);
        assert_eq!(load(&cache, &fuel), CacheStatus::Hit, "each engine keeps its own entry");

        // A forged entry: a trailer that is right for the plain engine in every
        // field, over the fuel engine's payload. Only wasmtime's own check can
        // tell, and it does.
        let fuel_bytes = std::fs::read(&fuel_entry).expect("read");
        let payload = &fuel_bytes[..fuel_bytes.len() - TRAILER_LEN];
        let key = Key::new(&plain, PIPELINE);
        let mut forged = payload.to_vec();
        forged.extend_from_slice(&encode_trailer(&key, payload));
        assert_eq!(check_entry(&key, &forged).expect("the trailer checks out"), payload);
        std::fs::write(&plain_entry, &forged).expect("forge");
        assert_eq!(load(&cache, &plain), CacheStatus::Rebuilt);
        assert_eq!(load(&cache, &plain), CacheStatus::Hit);

        // Same bytes under another component's key: refused by the trailer.
        let other = Key { source: Sha256::digest(b"another component").into(), ..key };
        assert!(check_entry(&other, &std::fs::read(&plain_entry).expect("read")).is_err());
        std::fs::remove_dir_all(base).expect("cleanup");
    }

    /// Stands in for a preview1 module: the cache hashes it, never parses it.
    const MODULE: &[u8] = b"\0asm\x01\0\0\0 a preview1 module";

    fn module(adaptation: u8) -> Source<'static> {
        Source::Preview1Module { module: MODULE, adaptation: [adaptation; DIGEST_LEN] }
    }

    #[test]
    fn a_module_is_hit_by_its_own_key_without_compiling_and_rebuilt_when_corrupt() {
        let base = scratch();
        let cache = CodeCache::open(&base.join("cache")).expect("open");
        let engine = new_engine(false);
        assert_eq!(load_counting(&cache, &engine, module(1)), (CacheStatus::Miss, true));
        // What a second `host exec` of the module does: `compile` (which
        // would adapt the module first) is not called.
        assert_eq!(load_counting(&cache, &engine, module(1)), (CacheStatus::Hit, false));
        let again = CodeCache::open(cache.path()).expect("reopen");
        assert_eq!(load_counting(&again, &new_engine(false), module(1)), (CacheStatus::Hit, false));

        let entry = source_path(&cache, &engine, module(1));
        let name = entry.file_name().expect("name").to_string_lossy().into_owned();
        assert!(name.starts_with(&format!("{}-preview1-", hex(&Sha256::digest(MODULE)))), "{name}");
        let good = std::fs::read(&entry).expect("read");
        let mut flipped = good.clone();
        *flipped.last_mut().expect("payload") ^= 0x01;
        for (what, bytes) in [("a byte flipped in the payload", &flipped[..]), ("truncated", &good[..good.len() / 2])] {
            std::fs::write(&entry, bytes).expect("corrupt");
            assert_eq!(load_counting(&cache, &engine, module(1)), (CacheStatus::Rebuilt, true), "{what}");
            assert_eq!(std::fs::read(&entry).expect("read"), good, "{what}: the entry is replaced");
            assert_eq!(load_counting(&cache, &engine, module(1)), (CacheStatus::Hit, false), "{what}");
        }

        // Another adaptation of the same module is another entry; an entry
        // of the other adaptation put in its place is refused by the header.
        let other = source_path(&cache, &engine, module(2));
        assert_ne!(entry, other, "the adaptation is part of the name");
        assert_eq!(load_counting(&cache, &engine, module(2)), (CacheStatus::Miss, true));
        std::fs::copy(&entry, &other).expect("copy");
        assert_eq!(load_counting(&cache, &engine, module(2)), (CacheStatus::Rebuilt, true));
        let err = check_entry(&Key::new(&engine, module(2)), &good).expect_err("another adaptation");
        assert!(err.contains("another preview1 adaptation"), "{err}");
        assert_eq!(names(cache.path()).len(), 2, "no temp file left behind");
        std::fs::remove_dir_all(base).expect("cleanup");
    }

    #[test]
    fn module_and_component_keys_never_collide() {
        let base = scratch();
        let cache = CodeCache::open(&base.join("cache")).expect("open");
        let engine = new_engine(false);
        // The same bytes as a component and as a module, the module's
        // adaptation digest even equal to the zeros a component's key has.
        let same = MODULE;
        let as_component = Source::Component(same);
        let as_module = Source::Preview1Module { module: same, adaptation: [0; DIGEST_LEN] };
        let (component_key, module_key) = (Key::new(&engine, as_component), Key::new(&engine, as_module));
        assert_eq!(component_key.source, module_key.source, "the same bytes");
        assert_ne!(component_key, module_key);
        let (component_entry, module_entry) =
            (source_path(&cache, &engine, as_component), source_path(&cache, &engine, as_module));
        assert_ne!(component_entry, module_entry, "the names differ");

        assert_eq!(load_counting(&cache, &engine, as_component), (CacheStatus::Miss, true));
        assert_eq!(load_counting(&cache, &engine, as_module), (CacheStatus::Miss, true), "not the component's entry");
        assert_eq!(load_counting(&cache, &engine, as_component), (CacheStatus::Hit, false));
        assert_eq!(load_counting(&cache, &engine, as_module), (CacheStatus::Hit, false));

        // Each entry, under the other's name, is refused by its trailer's kind.
        let component_bytes = std::fs::read(&component_entry).expect("read");
        let module_bytes = std::fs::read(&module_entry).expect("read");
        let err = check_entry(&module_key, &component_bytes).expect_err("a component's entry");
        assert_eq!(err, "written for a component, not for a preview1 module");
        let err = check_entry(&component_key, &module_bytes).expect_err("a module's entry");
        assert_eq!(err, "written for a preview1 module, not for a component");
        std::fs::write(&module_entry, &component_bytes).expect("swap");
        std::fs::write(&component_entry, &module_bytes).expect("swap");
        assert_eq!(load_counting(&cache, &engine, as_module), (CacheStatus::Rebuilt, true));
        assert_eq!(load_counting(&cache, &engine, as_component), (CacheStatus::Rebuilt, true));
        assert_eq!(load_counting(&cache, &engine, as_module), (CacheStatus::Hit, false));
        assert_eq!(load_counting(&cache, &engine, as_component), (CacheStatus::Hit, false));
        std::fs::remove_dir_all(base).expect("cleanup");
    }

    #[test]
    fn a_cache_folder_writable_by_others_is_refused() {
        for mode in [0o777, 0o770, 0o702] {
            let base = scratch();
            std::fs::create_dir_all(&base).expect("mkdir");
            std::fs::set_permissions(&base, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let err = CodeCache::open(&base).expect_err("not private");
            assert_eq!(err.kind(), ErrorKind::PermissionDenied);
            assert!(err.to_string().contains("code cache folder") && err.to_string().contains("not private"), "{err}");
            std::fs::remove_dir_all(base).expect("cleanup");
        }
    }

    #[test]
    fn an_unwritable_cache_still_loads() {
        let engine = new_engine(false);

        // A read-only folder. Root ignores permission bits, so there the write
        // succeeds; the load must work either way.
        let base = scratch();
        let cache = CodeCache::open(&base).expect("open");
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o500)).expect("chmod");
        assert_eq!(load(&cache, &engine), CacheStatus::Miss);
        if !rustix::process::geteuid().is_root() {
            assert!(names(&base).is_empty(), "nothing could be written");
        }
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        std::fs::remove_dir_all(&base).expect("cleanup");

        // A folder removed from under the open handle: no file can be created
        // in it, not even by root.
        let base = scratch();
        let cache = CodeCache::open(&base).expect("open");
        std::fs::remove_dir(&base).expect("rmdir");
        assert_eq!(load(&cache, &engine), CacheStatus::Miss);
        assert_eq!(load(&cache, &engine), CacheStatus::Miss, "still nothing stored");
        assert!(!base.exists());

        // An entry that cannot be read nor replaced (a folder in its place).
        let base = scratch();
        let cache = CodeCache::open(&base).expect("open");
        std::fs::create_dir_all(entry_path(&cache, &engine).join("in-the-way")).expect("mkdir");
        assert_eq!(load(&cache, &engine), CacheStatus::Rebuilt);
        assert!(entry_path(&cache, &engine).is_dir(), "not replaced");
        assert_eq!(names(&base).len(), 1, "no temp file left behind");
        std::fs::remove_dir_all(base).expect("cleanup");
    }

    #[test]
    fn default_path_follows_xdg() {
        let path = |xdg: Option<&str>, home: Option<&str>| default_path_from(xdg.map(Into::into), home.map(Into::into));
        assert_eq!(path(Some("/x/cache"), Some("/home/u")), Some(PathBuf::from("/x/cache/orders-host")));
        assert_eq!(path(Some("relative"), Some("/home/u")), Some(PathBuf::from("/home/u/.cache/orders-host")));
        assert_eq!(path(Some(""), Some("/home/u")), Some(PathBuf::from("/home/u/.cache/orders-host")));
        assert_eq!(path(None, Some("/home/u")), Some(PathBuf::from("/home/u/.cache/orders-host")));
        assert_eq!(path(None, None), None);
        assert_eq!(path(None, Some("")), None);
    }

    #[test]
    fn engine_digest_is_stable_and_tracks_settings() {
        assert_eq!(engine_digest(&new_engine(false)), engine_digest(&new_engine(false)));
        assert_ne!(engine_digest(&new_engine(false)), engine_digest(&new_engine(true)));
    }
}
