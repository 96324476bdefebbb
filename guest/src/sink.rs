//! Where the output files go: a directory, or memory for tests and
//! benchmarks.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Creates and reopens the named output files of one run.
///
/// The pipeline buffers everything it writes, so writers need no buffering of
/// their own. A region file may be closed (its writer dropped) and reopened
/// with [`append`](OutputSink::append) later when many regions are in play.
pub trait OutputSink {
    /// An open output file.
    type Writer: Write;

    /// Creates the file `name`, or empties it if it exists.
    fn create(&mut self, name: &str) -> io::Result<Self::Writer>;

    /// Opens the file `name`, created earlier in this run, to add to its end.
    fn append(&mut self, name: &str) -> io::Result<Self::Writer>;
}

/// Writes the output files into a directory with `std::fs`.
#[derive(Debug, Clone)]
pub struct DirectorySink {
    directory: PathBuf,
}

impl DirectorySink {
    /// Writes into `directory`, which must exist.
    pub fn new(directory: impl Into<PathBuf>) -> Self {
        Self { directory: directory.into() }
    }

    /// The directory written into.
    pub fn directory(&self) -> &Path {
        &self.directory
    }
}

impl OutputSink for DirectorySink {
    type Writer = File;

    fn create(&mut self, name: &str) -> io::Result<File> {
        File::create(self.directory.join(name))
    }

    fn append(&mut self, name: &str) -> io::Result<File> {
        OpenOptions::new().append(true).open(self.directory.join(name))
    }
}

/// Keeps the output files in memory, by name.
///
/// ```
/// use std::io::Write;
/// use orders_pipeline::{MemorySink, OutputSink};
///
/// let mut sink = MemorySink::new();
/// sink.create("a.csv")?.write_all(b"x\n")?;
/// sink.append("a.csv")?.write_all(b"y\n")?;
/// assert_eq!(sink.file("a.csv").as_deref(), Some(&b"x\ny\n"[..]));
/// assert!(sink.append("missing.csv").is_err());
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct MemorySink {
    files: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
}

impl MemorySink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of the contents of file `name`, if it was created.
    pub fn file(&self, name: &str) -> Option<Vec<u8>> {
        self.lock().get(name).cloned()
    }

    /// The contents of file `name` as text (invalid UTF-8 replaced by U+FFFD).
    pub fn text(&self, name: &str) -> Option<String> {
        self.lock().get(name).map(|bytes| String::from_utf8_lossy(bytes).into_owned())
    }

    /// The names of the files created, sorted.
    pub fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// All files, by name.
    pub fn into_files(self) -> BTreeMap<String, Vec<u8>> {
        match Arc::try_unwrap(self.files) {
            Ok(files) => files.into_inner().unwrap_or_else(PoisonError::into_inner),
            // A writer is still alive somewhere: copy.
            Err(shared) => shared.lock().unwrap_or_else(PoisonError::into_inner).clone(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.files.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn open(&self, name: &str) -> MemoryFile {
        MemoryFile { files: Arc::clone(&self.files), name: name.to_owned() }
    }
}

impl OutputSink for MemorySink {
    type Writer = MemoryFile;

    fn create(&mut self, name: &str) -> io::Result<MemoryFile> {
        self.lock().insert(name.to_owned(), Vec::new());
        Ok(self.open(name))
    }

    fn append(&mut self, name: &str) -> io::Result<MemoryFile> {
        // Like `OpenOptions::append` without `create`: catches a reopen of a
        // file that was never created.
        if !self.lock().contains_key(name) {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no file `{name}` to append to")));
        }
        Ok(self.open(name))
    }
}

/// An open file of a [`MemorySink`].
#[derive(Debug)]
pub struct MemoryFile {
    files: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
    name: String,
}

impl Write for MemoryFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(self.name.clone())
            .or_default()
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
