//! The disk quota and the file-count limit, enforced where the guest writes.
//!
//! wasmtime-wasi's `wasi:filesystem/types` implementation is wrapped: every
//! call is delegated, and the ones that make a sandbox bigger are charged to a
//! [`Quota`] first. What is charged is the growth of a file's size (so a
//! sparse file counts by its size, and rewriting a file in place costs
//! nothing), and every file, folder or link created. Unlinking a file, or
//! shrinking it, gives its bytes back. Past the quota the call fails *inside
//! the guest*: `insufficient-space` (ENOSPC) for bytes, `quota` (EDQUOT) for
//! the file count; a write through an output stream fails with a stream
//! error carrying ENOSPC. Output streams of files are the host's own
//! ([`QuotaStream`]), writing on the calling thread. Nothing is measured after the run: the sandbox never holds more.
//!
//! Every descriptor and directory listing the guest holds is a descriptor of
//! the host process, shared by all tenants: one guest may hold at most
//! [`MAX_OPEN_HANDLES`]; past that, opening fails with `insufficient-memory`
//! (WASI has no EMFILE).
//!
//! The input file is not charged: the host writes it, and the guest sees it
//! read-only.
//!
//! The same wrapper counts what the guest reads from its read-only input
//! folder into a [`Progress`], since the host feeds the input.

use std::fs::Permissions;
use std::io;
use std::os::unix::fs::{FileExt as _, PermissionsExt as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use rustix::fs::{Mode, OFlags};
use wasmtime::component::{HasData, Resource, ResourceTable};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemCtxView};
use wasmtime_wasi::p2::bindings::filesystem::types::{
    self, Advice, DescriptorFlags, DescriptorStat, DescriptorType, DirectoryEntry, ErrorCode, Filesize, HostDescriptor,
    HostDirectoryEntryStream, MetadataHashValue, NewTimestamp, OpenFlags, PathFlags,
};
use wasmtime_wasi::p2::{
    DynInputStream, DynOutputStream, FsError, FsResult, InputStream, OutputStream, Pollable, StreamError,
};
use wasmtime_wasi::{FsPerms, OpenMode};

use crate::guest::{BLOCK_CURRENT_THREAD, GuestState};

/// Descriptors and directory listings one guest may hold at once.
pub const MAX_OPEN_HANDLES: u64 = 256;

/// What one sandbox may hold, and what it holds now. Shared by the
/// filesystem calls and the output streams they hand out.
#[derive(Debug)]
pub struct Quota {
    max_bytes: u64,
    max_files: u64,
    bytes: AtomicU64,
    files: AtomicU64,
    bytes_hit: AtomicBool,
    files_hit: AtomicBool,
    handles: AtomicU64,
}

/// Which limit a run ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaHit {
    Bytes,
    Files,
}

impl Quota {
    pub fn new(max_bytes: u64, max_files: u64) -> Arc<Self> {
        Arc::new(Self {
            max_bytes,
            max_files,
            bytes: AtomicU64::new(0),
            files: AtomicU64::new(0),
            bytes_hit: AtomicBool::new(false),
            files_hit: AtomicBool::new(false),
            handles: AtomicU64::new(0),
        })
    }

    /// The first limit the guest ran into, bytes before files.
    pub fn hit(&self) -> Option<QuotaHit> {
        if self.bytes_hit.load(Ordering::Relaxed) {
            Some(QuotaHit::Bytes)
        } else if self.files_hit.load(Ordering::Relaxed) {
            Some(QuotaHit::Files)
        } else {
            None
        }
    }

    /// Bytes charged now (the guest's files' sizes, as far as it grew them).
    pub fn bytes_used(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn reserve(counter: &AtomicU64, amount: u64, max: u64, hit: &AtomicBool) -> bool {
        let fits = counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(amount).filter(|&sum| sum <= max)
            })
            .is_ok();
        if !fits {
            hit.store(true, Ordering::Relaxed);
        }
        fits
    }

    fn release(counter: &AtomicU64, amount: u64) {
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| Some(used.saturating_sub(amount)));
    }

    fn reserve_bytes(&self, amount: u64) -> Result<(), io::Error> {
        if amount == 0 || Self::reserve(&self.bytes, amount, self.max_bytes, &self.bytes_hit) {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error()))
        }
    }

    fn release_bytes(&self, amount: u64) {
        Self::release(&self.bytes, amount);
    }

    fn reserve_file(&self) -> FsResult<()> {
        if Self::reserve(&self.files, 1, self.max_files, &self.files_hit) {
            Ok(())
        } else {
            Err(ErrorCode::Quota.into())
        }
    }

    fn release_file(&self) {
        Self::release(&self.files, 1);
    }

    fn reserve_handle(&self) -> FsResult<()> {
        let fits = self
            .handles
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| (held < MAX_OPEN_HANDLES).then_some(held + 1))
            .is_ok();
        if fits { Ok(()) } else { Err(ErrorCode::InsufficientMemory.into()) }
    }

    fn release_handle(&self) {
        Self::release(&self.handles, 1);
    }
}

/// How far the guest has read its input: bytes and line breaks, updated as
/// it reads. Share one with [`crate::Invocation::progress`] to watch a run.
#[derive(Debug, Default)]
pub struct Progress {
    total: AtomicU64,
    read: AtomicU64,
    lines: AtomicU64,
}

impl Progress {
    /// The size of the input, once it is known (when the run starts).
    #[must_use]
    pub fn total_bytes(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Bytes of input the guest has read so far.
    #[must_use]
    pub fn bytes_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// Line breaks in what the guest has read: about the rows so far.
    #[must_use]
    pub fn lines_read(&self) -> u64 {
        self.lines.load(Ordering::Relaxed)
    }

    pub(crate) fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    fn record(&self, bytes: &[u8]) {
        self.read.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let lines = memchr::memchr_iter(b'\n', bytes).count();
        self.lines.fetch_add(lines as u64, Ordering::Relaxed);
    }
}

fn no_space() -> FsError {
    ErrorCode::InsufficientSpace.into()
}

/// The `HasData` of the wrapped `wasi:filesystem/types`.
pub struct QuotaFilesystem;

impl HasData for QuotaFilesystem {
    type Data<'a> = QuotaFilesystemView<'a>;
}

/// wasmtime-wasi's filesystem view plus the sandbox's quota.
pub struct QuotaFilesystemView<'a> {
    inner: WasiFilesystemCtxView<'a>,
    quota: &'a Arc<Quota>,
    progress: &'a Option<Arc<Progress>>,
}

impl GuestState {
    pub fn quota_filesystem_view(&mut self) -> QuotaFilesystemView<'_> {
        QuotaFilesystemView {
            inner: WasiFilesystemCtxView { ctx: self.wasi.filesystem(), table: &mut self.table },
            quota: &self.quota,
            progress: &self.progress,
        }
    }
}

impl QuotaFilesystemView<'_> {
    fn table(&mut self) -> &mut ResourceTable {
        self.inner.table
    }

    /// The progress to count reads of `fd` into: only files of the read-only
    /// input folder count.
    fn input_progress(&mut self, fd: &Resource<Descriptor>) -> Option<Arc<Progress>> {
        let progress = self.progress.clone()?;
        match self.table().get(fd) {
            Ok(Descriptor::File(file)) if file.perms == FsPerms::ReadOnly => Some(progress),
            _ => None,
        }
    }

    fn file_handle(&mut self, fd: &Resource<Descriptor>) -> FsResult<Arc<std::fs::File>> {
        match self.table().get(fd)? {
            Descriptor::File(file) => Ok(Arc::clone(&file.file)),
            Descriptor::Dir(_) => Err(ErrorCode::IsDirectory.into()),
        }
    }

    /// What is at `path` now, without following a final symlink; `None` when
    /// nothing is.
    async fn existing(&mut self, fd: &Resource<Descriptor>, path: &str) -> Option<DescriptorStat> {
        let fd = Resource::new_borrow(fd.rep());
        HostDescriptor::stat_at(&mut self.inner, fd, PathFlags::empty(), path.to_owned()).await.ok()
    }

    /// The bytes and the file count freed when `stat`'s entry is removed: a
    /// file's bytes only go when its last name does.
    fn give_back(&self, stat: &DescriptorStat) {
        if stat.type_ == DescriptorType::RegularFile && stat.link_count <= 1 {
            self.quota.release_bytes(stat.size);
        }
        self.quota.release_file();
    }

    /// Sets the mode of what `fd` refers to: the guest cannot chmod, so the
    /// host makes everything it creates owner-only.
    fn make_private(&mut self, fd: &Resource<Descriptor>, mode: u32) {
        let handle = match self.table().get(fd) {
            Ok(Descriptor::File(file)) => Arc::clone(&file.file),
            Ok(Descriptor::Dir(dir)) => Arc::clone(&dir.dir),
            Err(_) => return,
        };
        if let Err(err) = handle.set_permissions(Permissions::from_mode(mode)) {
            tracing::warn!("cannot make a guest-created entry private: {err}");
        }
    }
}

impl types::Host for QuotaFilesystemView<'_> {
    fn convert_error_code(&mut self, err: FsError) -> wasmtime::Result<ErrorCode> {
        types::Host::convert_error_code(&mut self.inner, err)
    }

    fn filesystem_error_code(&mut self, err: Resource<wasmtime::Error>) -> wasmtime::Result<Option<ErrorCode>> {
        types::Host::filesystem_error_code(&mut self.inner, err)
    }
}

impl HostDescriptor for QuotaFilesystemView<'_> {
    async fn advise(
        &mut self,
        fd: Resource<Descriptor>,
        offset: Filesize,
        len: Filesize,
        advice: Advice,
    ) -> FsResult<()> {
        HostDescriptor::advise(&mut self.inner, fd, offset, len, advice).await
    }

    async fn sync_data(&mut self, fd: Resource<Descriptor>) -> FsResult<()> {
        HostDescriptor::sync_data(&mut self.inner, fd).await
    }

    async fn get_flags(&mut self, fd: Resource<Descriptor>) -> FsResult<DescriptorFlags> {
        HostDescriptor::get_flags(&mut self.inner, fd).await
    }

    async fn get_type(&mut self, fd: Resource<Descriptor>) -> FsResult<DescriptorType> {
        HostDescriptor::get_type(&mut self.inner, fd).await
    }

    async fn set_size(&mut self, fd: Resource<Descriptor>, size: Filesize) -> FsResult<()> {
        let file = self.file_handle(&fd)?;
        let current = file.metadata()?.len();
        if size > current {
            self.quota.reserve_bytes(size - current).map_err(|_| no_space())?;
        }
        let result = HostDescriptor::set_size(&mut self.inner, fd, size).await;
        match (&result, size > current) {
            (Ok(()), false) => self.quota.release_bytes(current - size),
            (Err(_), true) => self.quota.release_bytes(size - current),
            _ => {}
        }
        result
    }

    async fn set_times(&mut self, fd: Resource<Descriptor>, atim: NewTimestamp, mtim: NewTimestamp) -> FsResult<()> {
        HostDescriptor::set_times(&mut self.inner, fd, atim, mtim).await
    }

    async fn read(&mut self, fd: Resource<Descriptor>, len: Filesize, offset: Filesize) -> FsResult<(Vec<u8>, bool)> {
        let progress = self.input_progress(&fd);
        let result = HostDescriptor::read(&mut self.inner, fd, len, offset).await;
        if let (Some(progress), Ok((bytes, _))) = (progress, &result) {
            progress.record(bytes);
        }
        result
    }

    async fn write(&mut self, fd: Resource<Descriptor>, buf: Vec<u8>, offset: Filesize) -> FsResult<Filesize> {
        let file = self.file_handle(&fd)?;
        let growth = growth(&file, Some(offset), buf.len() as u64)?;
        self.quota.reserve_bytes(growth).map_err(|_| no_space())?;
        let result = HostDescriptor::write(&mut self.inner, fd, buf, offset).await;
        if result.is_err() {
            self.quota.release_bytes(growth);
        }
        result
    }

    async fn read_directory(&mut self, fd: Resource<Descriptor>) -> FsResult<Resource<types::DirectoryEntryStream>> {
        self.quota.reserve_handle()?;
        let listing = HostDescriptor::read_directory(&mut self.inner, fd).await;
        if listing.is_err() {
            self.quota.release_handle();
        }
        listing
    }

    async fn sync(&mut self, fd: Resource<Descriptor>) -> FsResult<()> {
        HostDescriptor::sync(&mut self.inner, fd).await
    }

    async fn create_directory_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        self.quota.reserve_file()?;
        let parent = Resource::new_borrow(fd.rep());
        if let Err(err) = HostDescriptor::create_directory_at(&mut self.inner, fd, path.clone()).await {
            self.quota.release_file();
            return Err(err);
        }
        let opened = HostDescriptor::open_at(
            &mut self.inner,
            parent,
            PathFlags::empty(),
            path,
            OpenFlags::DIRECTORY,
            DescriptorFlags::READ,
        )
        .await;
        if let Ok(dir) = opened {
            self.make_private(&dir, 0o700);
            HostDescriptor::drop(&mut self.inner, dir).map_err(FsError::trap)?;
        }
        Ok(())
    }

    async fn stat(&mut self, fd: Resource<Descriptor>) -> FsResult<DescriptorStat> {
        HostDescriptor::stat(&mut self.inner, fd).await
    }

    async fn stat_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: PathFlags,
        path: String,
    ) -> FsResult<DescriptorStat> {
        HostDescriptor::stat_at(&mut self.inner, fd, path_flags, path).await
    }

    async fn set_times_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: PathFlags,
        path: String,
        atim: NewTimestamp,
        mtim: NewTimestamp,
    ) -> FsResult<()> {
        HostDescriptor::set_times_at(&mut self.inner, fd, path_flags, path, atim, mtim).await
    }

    async fn link_at(
        &mut self,
        fd: Resource<Descriptor>,
        old_path_flags: PathFlags,
        old_path: String,
        new_descriptor: Resource<Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        self.quota.reserve_file()?;
        let result =
            HostDescriptor::link_at(&mut self.inner, fd, old_path_flags, old_path, new_descriptor, new_path).await;
        if result.is_err() {
            self.quota.release_file();
        }
        result
    }

    async fn open_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: PathFlags,
        path: String,
        oflags: OpenFlags,
        flags: DescriptorFlags,
    ) -> FsResult<Resource<Descriptor>> {
        self.quota.reserve_handle()?;
        let opened = self.open_counted(fd, path_flags, path, oflags, flags).await;
        if opened.is_err() {
            self.quota.release_handle();
        }
        opened
    }

    fn drop(&mut self, fd: Resource<Descriptor>) -> wasmtime::Result<()> {
        self.quota.release_handle();
        HostDescriptor::drop(&mut self.inner, fd)
    }

    async fn readlink_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<String> {
        HostDescriptor::readlink_at(&mut self.inner, fd, path).await
    }

    async fn remove_directory_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        HostDescriptor::remove_directory_at(&mut self.inner, fd, path).await?;
        self.quota.release_file();
        Ok(())
    }

    async fn rename_at(
        &mut self,
        fd: Resource<Descriptor>,
        old_path: String,
        new_descriptor: Resource<Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        let replaced = self.existing(&new_descriptor, &new_path).await;
        HostDescriptor::rename_at(&mut self.inner, fd, old_path, new_descriptor, new_path).await?;
        if let Some(stat) = replaced {
            self.give_back(&stat);
        }
        Ok(())
    }

    async fn symlink_at(&mut self, fd: Resource<Descriptor>, src_path: String, dest_path: String) -> FsResult<()> {
        self.quota.reserve_file()?;
        let result = HostDescriptor::symlink_at(&mut self.inner, fd, src_path, dest_path).await;
        if result.is_err() {
            self.quota.release_file();
        }
        result
    }

    async fn unlink_file_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        let before = self.existing(&fd, &path).await;
        HostDescriptor::unlink_file_at(&mut self.inner, fd, path).await?;
        if let Some(stat) = before {
            self.give_back(&stat);
        }
        Ok(())
    }

    fn read_via_stream(&mut self, fd: Resource<Descriptor>, offset: Filesize) -> FsResult<Resource<DynInputStream>> {
        let progress = self.input_progress(&fd);
        let stream = HostDescriptor::read_via_stream(&mut self.inner, fd, offset)?;
        let Some(progress) = progress else { return Ok(stream) };
        let inner: DynInputStream = self.table().delete(stream)?;
        let counted: DynInputStream = Box::new(CountingStream { inner, progress });
        Ok(self.table().push(counted)?)
    }

    fn write_via_stream(&mut self, fd: Resource<Descriptor>, offset: Filesize) -> FsResult<Resource<DynOutputStream>> {
        let file = self.file_handle(&fd)?;
        let stream = HostDescriptor::write_via_stream(&mut self.inner, fd, offset)?;
        self.wrap_stream(stream, file, Some(offset))
    }

    fn append_via_stream(&mut self, fd: Resource<Descriptor>) -> FsResult<Resource<DynOutputStream>> {
        let file = self.file_handle(&fd)?;
        let stream = HostDescriptor::append_via_stream(&mut self.inner, fd)?;
        self.wrap_stream(stream, file, None)
    }

    async fn is_same_object(&mut self, a: Resource<Descriptor>, b: Resource<Descriptor>) -> wasmtime::Result<bool> {
        HostDescriptor::is_same_object(&mut self.inner, a, b).await
    }

    async fn metadata_hash(&mut self, fd: Resource<Descriptor>) -> FsResult<MetadataHashValue> {
        HostDescriptor::metadata_hash(&mut self.inner, fd).await
    }

    async fn metadata_hash_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: PathFlags,
        path: String,
    ) -> FsResult<MetadataHashValue> {
        HostDescriptor::metadata_hash_at(&mut self.inner, fd, path_flags, path).await
    }
}

impl QuotaFilesystemView<'_> {
    /// `open-at`, charging a file it creates and giving back the bytes a
    /// truncation frees. A new file is the common case, so creation is tried
    /// exclusively first: one call tells whether it is new, with no stat.
    async fn open_counted(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: PathFlags,
        path: String,
        oflags: OpenFlags,
        flags: DescriptorFlags,
    ) -> FsResult<Resource<Descriptor>> {
        let borrow = |fd: &Resource<Descriptor>| Resource::new_borrow(fd.rep());
        if oflags.contains(OpenFlags::CREATE) {
            self.quota.reserve_file()?;
            let created = match self.create_new_file(&fd, &path, oflags, flags) {
                Some(created) => created,
                None => {
                    let exclusive = oflags | OpenFlags::EXCLUSIVE;
                    let opened = HostDescriptor::open_at(
                        &mut self.inner,
                        borrow(&fd),
                        path_flags,
                        path.clone(),
                        exclusive,
                        flags,
                    )
                    .await;
                    if let Ok(new) = &opened {
                        self.make_private(new, 0o600);
                    }
                    opened
                }
            };
            match created {
                Ok(new) => return Ok(new),
                Err(err) => {
                    self.quota.release_file();
                    let exists = matches!(err.downcast_ref(), Some(ErrorCode::Exist));
                    if oflags.contains(OpenFlags::EXCLUSIVE) || !exists {
                        return Err(err);
                    }
                }
            }
        }
        // The entry exists: open it as asked, giving back what a truncation frees.
        let before = if oflags.contains(OpenFlags::TRUNCATE) { self.existing(&fd, &path).await } else { None };
        let opened = HostDescriptor::open_at(&mut self.inner, fd, path_flags, path, oflags, flags).await?;
        if let Some(stat) = before.filter(|s| s.type_ == DescriptorType::RegularFile && s.link_count <= 1) {
            self.quota.release_bytes(stat.size);
        }
        Ok(opened)
    }

    /// Creates the file `path` in the folder `fd`, exclusively and owner-only
    /// (0600) from the `open` itself, when the call is the common case: a
    /// plain file name, in a folder the guest may write, without the sync
    /// flags. That saves wasmtime-wasi's stat of what it opened and the
    /// chmod. `None` for any other call, which takes the general path.
    fn create_new_file(
        &mut self,
        fd: &Resource<Descriptor>,
        path: &str,
        oflags: OpenFlags,
        flags: DescriptorFlags,
    ) -> Option<FsResult<Resource<Descriptor>>> {
        let plain_name = !path.is_empty() && path != "." && path != ".." && !path.contains(['/', '\0']);
        let sync = DescriptorFlags::FILE_INTEGRITY_SYNC
            | DescriptorFlags::DATA_INTEGRITY_SYNC
            | DescriptorFlags::REQUESTED_WRITE_SYNC;
        if !plain_name || oflags.contains(OpenFlags::DIRECTORY) || flags.intersects(sync) {
            return None;
        }
        let (folder, perms) = match self.table().get(fd) {
            Ok(Descriptor::Dir(dir)) if dir.perms == FsPerms::ReadWrite => (Arc::clone(&dir.dir), dir.perms),
            _ => return None,
        };
        // As wasmtime-wasi opens: writable (it creates), and readable when
        // asked for or when not asked to write.
        let (access, open_mode) = if flags.contains(DescriptorFlags::READ) || !flags.contains(DescriptorFlags::WRITE) {
            (OFlags::RDWR, OpenMode::READ | OpenMode::WRITE)
        } else {
            (OFlags::WRONLY, OpenMode::WRITE)
        };
        let options = access | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let file = match rustix::fs::openat(&*folder, path, options, Mode::from_raw_mode(0o600)) {
            Ok(file) => std::fs::File::from(file),
            Err(errno) => return Some(Err(ErrorCode::from(io::Error::from(errno)).into())),
        };
        let file = wasmtime_wasi::filesystem::File::new(file, perms, open_mode, BLOCK_CURRENT_THREAD);
        Some(self.table().push(Descriptor::File(file)).map_err(FsError::from))
    }

    /// Replaces wasmtime-wasi's stream (made for its permission checks) by a
    /// [`QuotaStream`] on the same file, under a new handle.
    fn wrap_stream(
        &mut self,
        stream: Resource<DynOutputStream>,
        file: Arc<std::fs::File>,
        position: Option<u64>,
    ) -> FsResult<Resource<DynOutputStream>> {
        drop(self.table().delete(stream)?);
        let quota = Arc::clone(self.quota);
        let wrapped: DynOutputStream = Box::new(QuotaStream { file, position, quota, closed: false });
        Ok(self.table().push(wrapped)?)
    }
}

impl HostDirectoryEntryStream for QuotaFilesystemView<'_> {
    async fn read_directory_entry(
        &mut self,
        stream: Resource<types::DirectoryEntryStream>,
    ) -> FsResult<Option<DirectoryEntry>> {
        HostDirectoryEntryStream::read_directory_entry(&mut self.inner, stream).await
    }

    fn drop(&mut self, stream: Resource<types::DirectoryEntryStream>) -> wasmtime::Result<()> {
        self.quota.release_handle();
        HostDirectoryEntryStream::drop(&mut self.inner, stream)
    }
}

/// A file's input stream that counts what passes through into a [`Progress`].
struct CountingStream {
    inner: DynInputStream,
    progress: Arc<Progress>,
}

#[wasmtime_wasi::async_trait]
impl InputStream for CountingStream {
    fn read(&mut self, size: usize) -> Result<Bytes, StreamError> {
        let bytes = self.inner.read(size)?;
        self.progress.record(&bytes);
        Ok(bytes)
    }

    async fn blocking_read(&mut self, size: usize) -> Result<Bytes, StreamError> {
        let bytes = self.inner.blocking_read(size).await?;
        self.progress.record(&bytes);
        Ok(bytes)
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await;
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CountingStream {
    async fn ready(&mut self) {
        self.inner.ready().await;
    }
}

/// How much writing `len` bytes at `offset` (at the end when `None`) grows `file`.
fn growth(file: &std::fs::File, offset: Option<u64>, len: u64) -> io::Result<u64> {
    let size = file.metadata()?.len();
    let end = offset.unwrap_or(size).saturating_add(len);
    Ok(end.saturating_sub(size))
}

/// How much one stream write may carry, as announced by `check-write`.
const STREAM_WRITE_PERMIT: usize = 1 << 20;

/// A file's output stream that charges each write's growth to the quota and
/// then writes on the current thread. It replaces wasmtime-wasi's stream,
/// whose non-blocking `write` hands every chunk to a worker thread (a thread
/// hop per write); file writes here are small and bounded by the permit.
struct QuotaStream {
    file: Arc<std::fs::File>,
    /// Where the next write lands; `None` for an append stream.
    position: Option<u64>,
    quota: Arc<Quota>,
    /// Set by the first failed write: the stream is closed after it.
    closed: bool,
}

impl QuotaStream {
    fn write_now(&mut self, bytes: &[u8]) -> Result<(), StreamError> {
        if self.closed {
            return Err(StreamError::Closed);
        }
        let result = (|| -> io::Result<()> {
            let len = bytes.len() as u64;
            let offset = match self.position {
                Some(position) => position,
                None => self.file.metadata()?.len(),
            };
            let size = self.file.metadata()?.len();
            let growth = offset.saturating_add(len).saturating_sub(size);
            self.quota.reserve_bytes(growth)?;
            if let Err(err) = self.file.write_all_at(bytes, offset) {
                self.quota.release_bytes(growth);
                return Err(err);
            }
            if let Some(position) = &mut self.position {
                *position = offset + len;
            }
            Ok(())
        })();
        result.map_err(|err| {
            self.closed = true;
            StreamError::LastOperationFailed(err.into())
        })
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for QuotaStream {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        if bytes.len() > STREAM_WRITE_PERMIT {
            return Err(StreamError::trap("write larger than `check-write` permitted"));
        }
        self.write_now(&bytes)
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        if self.closed { Err(StreamError::Closed) } else { Ok(()) }
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        if self.closed { Err(StreamError::Closed) } else { Ok(STREAM_WRITE_PERMIT) }
    }

    async fn blocking_write_and_flush(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.write_now(&bytes)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for QuotaStream {
    async fn ready(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_refused_past_the_quota_and_the_hit_is_remembered() {
        let quota = Quota::new(100, 10);
        assert!(quota.reserve_bytes(60).is_ok());
        assert!(quota.reserve_bytes(40).is_ok());
        let err = quota.reserve_bytes(1).expect_err("full");
        assert_eq!(err.raw_os_error(), Some(rustix::io::Errno::NOSPC.raw_os_error()));
        assert_eq!(quota.hit(), Some(QuotaHit::Bytes));
        quota.release_bytes(50);
        assert!(quota.reserve_bytes(50).is_ok(), "freed bytes can be used again");
        assert!(quota.reserve_bytes(u64::MAX).is_err(), "no overflow");
    }

    #[test]
    fn handles_are_refused_past_the_cap_and_given_back() {
        let quota = Quota::new(100, 2);
        for _ in 0..MAX_OPEN_HANDLES {
            assert!(quota.reserve_handle().is_ok());
        }
        assert!(quota.reserve_handle().is_err());
        quota.release_handle();
        assert!(quota.reserve_handle().is_ok());
    }

    #[test]
    fn files_are_refused_past_the_limit() {
        let quota = Quota::new(100, 2);
        assert!(quota.reserve_file().is_ok());
        assert!(quota.reserve_file().is_ok());
        assert!(quota.reserve_file().is_err());
        assert_eq!(quota.hit(), Some(QuotaHit::Files));
    }

    #[test]
    fn growth_counts_sparse_ends_and_not_rewrites() {
        let path = std::env::temp_dir().join(format!("quota-growth-{}", crate::sandbox::random_hex().expect("rng")));
        std::fs::write(&path, [0u8; 10]).expect("write");
        let file = std::fs::File::open(&path).expect("open");
        assert_eq!(growth(&file, Some(0), 10).expect("stat"), 0, "a rewrite in place");
        assert_eq!(growth(&file, Some(5), 10).expect("stat"), 5);
        assert_eq!(growth(&file, None, 7).expect("stat"), 7, "an append");
        assert_eq!(growth(&file, Some(1 << 40), 1).expect("stat"), (1 << 40) + 1 - 10, "a sparse write");
        std::fs::remove_file(path).expect("cleanup");
    }
}
