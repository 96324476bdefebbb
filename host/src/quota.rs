//! The disk quota, the file and folder limits and the descriptor cap,
//! enforced where the guest acts: wasmtime-wasi's `wasi:filesystem/types` is
//! wrapped, every call is delegated, and the ones that make the sandbox hold
//! more are checked against the sandbox's [`Ledger`] first and charged to the
//! inodes they touched after (see `ledger.rs` for what is charged).
//!
//! - **Bytes**: growth is checked before a `write`, a stream write, a
//!   `set-size`, a `symlink-at`; past the quota the call fails *inside the
//!   guest* with `insufficient-space` (ENOSPC; a stream write with a stream
//!   error carrying ENOSPC).
//! - **Files and folders**: `open-at` with `create`, `create-directory-at`,
//!   `symlink-at` and `link-at` are checked before; past a limit they fail
//!   with `quota` (EDQUOT).
//! - **Descriptors**: every descriptor (preopens included), file stream and
//!   directory listing the guest holds is a descriptor of the host process,
//!   shared by every tenant: each is a [`Hold`], at most
//!   [`MAX_OPEN_HANDLES`](crate::store::MAX_OPEN_HANDLES) at once; past that, opening fails with
//!   `insufficient-memory` (WASI has no EMFILE).
//! - **Listings** are read from the kernel in bounded chunks as the guest
//!   asks for entries (wasmtime-wasi reads a whole folder into host memory
//!   per `read-directory`), at most [`MAX_OPEN_LISTINGS`] at once.
//!
//! The input file is not charged: the host writes it, and the guest sees it
//! read-only. The same wrapper counts what the guest reads from its read-only
//! input folder into a [`Progress`], since the host feeds the input.
//!
//! A guest's calls on one store never overlap, so a check before an
//! operation and the charge after it see no other operation in between.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use cap_primitives::fs::{DirBuilderExt as _, DirOptions, FollowSymlinks, MetadataExt as _};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
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

use crate::fs::{PRIVATE_DIR, PRIVATE_FILE};
use crate::ledger::{Hold, InodeKey, Kind, Ledger, Observed, Refused};
use crate::progress::Progress;
use crate::store::{BLOCK_CURRENT_THREAD, GuestState, Held};

/// Directory listings one guest may have open at once (each holds a
/// descriptor and a read buffer of at most about 24 KiB).
pub const MAX_OPEN_LISTINGS: usize = 64;

/// The error a guest sees when `bound` refused its call.
fn refusal(bound: Refused) -> FsError {
    match bound {
        Refused::Bytes => ErrorCode::InsufficientSpace.into(),
        Refused::Files | Refused::Folders => ErrorCode::Quota.into(),
        Refused::Handles | Refused::Listings => ErrorCode::InsufficientMemory.into(),
    }
}

/// The `HasData` of the wrapped `wasi:filesystem/types`.
pub struct QuotaFilesystem;

impl HasData for QuotaFilesystem {
    type Data<'a> = QuotaFilesystemView<'a>;
}

/// wasmtime-wasi's filesystem view plus the sandbox's ledger.
pub struct QuotaFilesystemView<'a> {
    inner: WasiFilesystemCtxView<'a>,
    ledger: &'a Arc<Ledger>,
    held: &'a mut Held,
    progress: &'a Option<Arc<Progress>>,
}

impl GuestState {
    pub fn quota_filesystem_view(&mut self) -> QuotaFilesystemView<'_> {
        QuotaFilesystemView {
            inner: WasiFilesystemCtxView { ctx: self.wasi.filesystem(), table: &mut self.table },
            ledger: &self.ledger,
            held: &mut self.held,
            progress: &self.progress,
        }
    }
}

/// The host handle behind a descriptor, and whether the guest may change
/// what is under it (only then is anything charged).
struct Target {
    handle: Arc<std::fs::File>,
    writable: bool,
}

impl QuotaFilesystemView<'_> {
    fn table(&mut self) -> &mut ResourceTable {
        self.inner.table
    }

    fn target(&mut self, fd: &Resource<Descriptor>) -> FsResult<Target> {
        Ok(match self.table().get(fd)? {
            Descriptor::File(file) => {
                Target { handle: Arc::clone(&file.file), writable: file.perms == FsPerms::ReadWrite }
            }
            Descriptor::Dir(dir) => Target { handle: Arc::clone(&dir.dir), writable: dir.perms == FsPerms::ReadWrite },
        })
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

    /// Charges what the kernel now reports of the inode behind `handle`.
    fn observe_handle(&self, handle: &std::fs::File) -> Option<Observed> {
        let seen = stat_handle(handle).ok()?;
        self.ledger.observe(seen);
        Some(seen)
    }

    /// Charges what the kernel now reports of the entry `path` of `dir`, and
    /// of the folder it is in (which grew by an entry).
    fn observe_new_entry(&self, dir: &std::fs::File, path: &str) {
        if let Ok(seen) = stat_at(dir, path) {
            self.ledger.observe(seen);
        }
        if let Ok(folder) = stat_parent(dir, path) {
            self.ledger.observe(folder);
        }
    }

    /// `fsync` (or `fdatasync`) of `fd` on tokio's blocking pool, whatever
    /// [`BLOCK_CURRENT_THREAD`] says: one can take tens of milliseconds (a
    /// journal commit), and a guest may call it in a loop, which inline would
    /// stall the embedder's executor thread for each. The handle is shared
    /// (an `Arc`), so the guest closing it meanwhile changes nothing.
    async fn sync_on_blocking_pool(&mut self, fd: &Resource<Descriptor>, flush: Flush) -> FsResult<()> {
        // A folder's handle may not be open for reading (`O_PATH`): as
        // wasmtime-wasi does, sync a reading handle of it.
        let handle: Box<dyn Fn() -> rustix::io::Result<OwnedFd> + Send> = match self.table().get(fd)? {
            Descriptor::File(file) => {
                let file = Arc::clone(&file.file);
                Box::new(move || rustix::io::dup(&*file))
            }
            Descriptor::Dir(dir) => {
                let dir = Arc::clone(&dir.dir);
                Box::new(move || {
                    rustix::fs::openat(&*dir, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                })
            }
        };
        let synced = tokio::task::spawn_blocking(move || {
            let fd = handle()?;
            match flush {
                Flush::Data => rustix::fs::fdatasync(&fd),
                Flush::All => rustix::fs::fsync(&fd),
            }
        })
        .await;
        match synced {
            Ok(result) => result.map_err(|errno| ErrorCode::from(io::Error::from(errno)).into()),
            Err(join) => Err(FsError::trap(wasmtime::Error::msg(format!("the sync task failed: {join}")))),
        }
    }

    /// Counts a descriptor just pushed into the table.
    fn hold_descriptor(&mut self, fd: &Resource<Descriptor>, mut hold: Hold) {
        if let Ok(target) = self.target(fd)
            && target.writable
            && let Some(seen) = self.observe_handle(&target.handle)
        {
            hold.attach(seen.key);
        }
        self.held.insert(fd, hold);
    }
}

/// What a sync flushes.
#[derive(Debug, Clone, Copy)]
enum Flush {
    /// The data, and only the metadata needed to read it back (`fdatasync`).
    Data,
    /// Data and metadata (`fsync`).
    All,
}

/// Methods of wasmtime-wasi's filesystem that change nothing the ledger
/// charges, and are quick: handed to wasmtime-wasi as they come.
macro_rules! forward_to_wasmtime_wasi {
    ($(async fn $name:ident($($arg:ident: $type:ty),* $(,)?) -> $result:ty;)*) => {
        $(
            async fn $name(&mut self, $($arg: $type),*) -> $result {
                HostDescriptor::$name(&mut self.inner, $($arg),*).await
            }
        )*
    };
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
    forward_to_wasmtime_wasi! {
        async fn advise(fd: Resource<Descriptor>, offset: Filesize, len: Filesize, advice: Advice) -> FsResult<()>;
        async fn get_flags(fd: Resource<Descriptor>) -> FsResult<DescriptorFlags>;
        async fn get_type(fd: Resource<Descriptor>) -> FsResult<DescriptorType>;
        async fn set_times(fd: Resource<Descriptor>, atim: NewTimestamp, mtim: NewTimestamp) -> FsResult<()>;
        async fn stat(fd: Resource<Descriptor>) -> FsResult<DescriptorStat>;
        async fn stat_at(fd: Resource<Descriptor>, path_flags: PathFlags, path: String) -> FsResult<DescriptorStat>;
        async fn set_times_at(fd: Resource<Descriptor>, path_flags: PathFlags, path: String, atim: NewTimestamp, mtim: NewTimestamp) -> FsResult<()>;
        async fn readlink_at(fd: Resource<Descriptor>, path: String) -> FsResult<String>;
        async fn is_same_object(a: Resource<Descriptor>, b: Resource<Descriptor>) -> wasmtime::Result<bool>;
        async fn metadata_hash(fd: Resource<Descriptor>) -> FsResult<MetadataHashValue>;
        async fn metadata_hash_at(fd: Resource<Descriptor>, path_flags: PathFlags, path: String) -> FsResult<MetadataHashValue>;
    }

    async fn sync_data(&mut self, fd: Resource<Descriptor>) -> FsResult<()> {
        self.sync_on_blocking_pool(&fd, Flush::Data).await
    }

    async fn sync(&mut self, fd: Resource<Descriptor>) -> FsResult<()> {
        self.sync_on_blocking_pool(&fd, Flush::All).await
    }

    async fn set_size(&mut self, fd: Resource<Descriptor>, size: Filesize) -> FsResult<()> {
        let target = self.target(&fd)?;
        if target.writable {
            let before = stat_handle(&target.handle)?;
            self.ledger.check_growth(before.key, size).map_err(refusal)?;
        }
        let result = HostDescriptor::set_size(&mut self.inner, fd, size).await;
        if target.writable {
            self.observe_handle(&target.handle);
        }
        result
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
        let target = self.target(&fd)?;
        if target.writable {
            let before = stat_handle(&target.handle)?;
            let end = offset.saturating_add(buf.len() as u64);
            self.ledger.check_growth(before.key, end).map_err(refusal)?;
        }
        let result = HostDescriptor::write(&mut self.inner, fd, buf, offset).await;
        if target.writable {
            self.observe_handle(&target.handle);
        }
        result
    }

    async fn read_directory(&mut self, fd: Resource<Descriptor>) -> FsResult<Resource<types::DirectoryEntryStream>> {
        let folder = match self.table().get(&fd)? {
            Descriptor::Dir(dir) => Arc::clone(&dir.dir),
            Descriptor::File(_) => return Err(ErrorCode::NotDirectory.into()),
        };
        if self.held.listings >= MAX_OPEN_LISTINGS {
            return Err(refusal(self.ledger.refused_by(Refused::Listings)));
        }
        let hold = self.ledger.hold().map_err(refusal)?;
        let listing = Listing::open(&folder, hold)?;
        let pushed = self.table().push(listing)?;
        self.held.listings += 1;
        Ok(Resource::new_own(pushed.rep()))
    }

    async fn create_directory_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        // Checked as wasmtime-wasi checks, which this call replaces.
        let folder = match self.table().get(&fd)? {
            Descriptor::Dir(dir) if dir.perms == FsPerms::ReadWrite => Arc::clone(&dir.dir),
            Descriptor::Dir(_) => return Err(ErrorCode::NotPermitted.into()),
            Descriptor::File(_) => return Err(ErrorCode::NotDirectory.into()),
        };
        self.ledger.check_new_entry(Kind::Folder).map_err(refusal)?;
        // Owner-only from the mkdir itself: the guest cannot chmod.
        let mut options = DirOptions::new();
        options.mode(PRIVATE_DIR);
        cap_primitives::fs::create_dir(&folder, Path::new(&path), &options).map_err(ErrorCode::from)?;
        self.observe_new_entry(&folder, &path);
        Ok(())
    }

    async fn link_at(
        &mut self,
        fd: Resource<Descriptor>,
        old_path_flags: PathFlags,
        old_path: String,
        new_descriptor: Resource<Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        let target = self.target(&new_descriptor)?;
        if target.writable {
            self.ledger.check_new_entry(Kind::File).map_err(refusal)?;
        }
        HostDescriptor::link_at(&mut self.inner, fd, old_path_flags, old_path, new_descriptor, new_path.clone())
            .await?;
        if target.writable {
            self.observe_new_entry(&target.handle, &new_path);
        }
        Ok(())
    }

    async fn open_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: PathFlags,
        path: String,
        oflags: OpenFlags,
        flags: DescriptorFlags,
    ) -> FsResult<Resource<Descriptor>> {
        let hold = self.ledger.hold().map_err(refusal)?;
        let opened = self.open_counted(fd, path_flags, path, oflags, flags).await?;
        self.hold_descriptor(&opened, hold);
        Ok(opened)
    }

    fn drop(&mut self, fd: Resource<Descriptor>) -> wasmtime::Result<()> {
        let rep = fd.rep();
        let result = HostDescriptor::drop(&mut self.inner, fd);
        // Only once the descriptor is closed is its hold given back.
        self.held.descriptors.remove(&rep);
        result
    }

    async fn remove_directory_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        let target = self.target(&fd)?;
        let before = if target.writable { stat_at(&target.handle, &path).ok() } else { None };
        HostDescriptor::remove_directory_at(&mut self.inner, fd, path).await?;
        if let Some(gone) = before {
            self.ledger.names_left(gone.key, 0);
        }
        Ok(())
    }

    async fn rename_at(
        &mut self,
        fd: Resource<Descriptor>,
        old_path: String,
        new_descriptor: Resource<Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        let (source_dir, target_dir) = (self.target(&fd)?, self.target(&new_descriptor)?);
        let accounted = source_dir.writable && target_dir.writable;
        let source = if accounted { stat_at(&source_dir.handle, &old_path).ok() } else { None };
        let replaced = if accounted { stat_at(&target_dir.handle, &new_path).ok() } else { None };
        HostDescriptor::rename_at(&mut self.inner, fd, old_path, new_descriptor, new_path.clone()).await?;
        if !accounted {
            return Ok(());
        }
        // Renaming onto another name of the same file changes nothing.
        if let Some(replaced) = replaced.filter(|r| Some(r.key) != source.map(|s| s.key)) {
            self.ledger.names_left(replaced.key, names_after_removal(&replaced));
        }
        self.observe_new_entry(&target_dir.handle, &new_path);
        Ok(())
    }

    async fn symlink_at(&mut self, fd: Resource<Descriptor>, src_path: String, dest_path: String) -> FsResult<()> {
        let target = self.target(&fd)?;
        if target.writable {
            self.ledger.check_new_entry(Kind::Symlink).map_err(refusal)?;
            self.ledger.check_new_bytes(src_path.len() as u64).map_err(refusal)?;
        }
        HostDescriptor::symlink_at(&mut self.inner, fd, src_path, dest_path.clone()).await?;
        if target.writable {
            self.observe_new_entry(&target.handle, &dest_path);
        }
        Ok(())
    }

    async fn unlink_file_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        let target = self.target(&fd)?;
        let before = if target.writable { stat_at(&target.handle, &path).ok() } else { None };
        HostDescriptor::unlink_file_at(&mut self.inner, fd, path).await?;
        if let Some(gone) = before {
            self.ledger.names_left(gone.key, names_after_removal(&gone));
        }
        Ok(())
    }

    fn read_via_stream(&mut self, fd: Resource<Descriptor>, offset: Filesize) -> FsResult<Resource<DynInputStream>> {
        let progress = self.input_progress(&fd);
        let target = self.target(&fd)?;
        let mut hold = self.ledger.hold().map_err(refusal)?;
        if target.writable
            && let Some(seen) = self.observe_handle(&target.handle)
        {
            hold.attach(seen.key);
        }
        let stream = HostDescriptor::read_via_stream(&mut self.inner, fd, offset)?;
        let inner: DynInputStream = self.table().delete(stream)?;
        let held: DynInputStream = Box::new(HeldInputStream { inner, progress, _hold: hold });
        Ok(self.table().push(held)?)
    }

    fn write_via_stream(&mut self, fd: Resource<Descriptor>, offset: Filesize) -> FsResult<Resource<DynOutputStream>> {
        let stream = HostDescriptor::write_via_stream(&mut self.inner, Resource::new_borrow(fd.rep()), offset)?;
        self.wrap_stream(&fd, stream, Some(offset))
    }

    fn append_via_stream(&mut self, fd: Resource<Descriptor>) -> FsResult<Resource<DynOutputStream>> {
        let stream = HostDescriptor::append_via_stream(&mut self.inner, Resource::new_borrow(fd.rep()))?;
        self.wrap_stream(&fd, stream, None)
    }
}

impl QuotaFilesystemView<'_> {
    /// `open-at`, charging a file it creates. A new file is the common case,
    /// so creation is tried exclusively first: one call tells whether it is
    /// new, with no stat.
    async fn open_counted(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: PathFlags,
        path: String,
        oflags: OpenFlags,
        flags: DescriptorFlags,
    ) -> FsResult<Resource<Descriptor>> {
        let borrow = |fd: &Resource<Descriptor>| Resource::new_borrow(fd.rep());
        let folder = self.target(&fd)?;
        if oflags.contains(OpenFlags::CREATE) && folder.writable {
            self.ledger.check_new_entry(Kind::File).map_err(refusal)?;
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
                        self.make_private(new);
                    }
                    opened
                }
            };
            match created {
                Ok(new) => {
                    // The file itself is charged with the descriptor's hold.
                    if let Ok(grown) = stat_parent(&folder.handle, &path) {
                        self.ledger.observe(grown);
                    }
                    return Ok(new);
                }
                Err(err) => {
                    let exists = matches!(err.downcast_ref(), Some(ErrorCode::Exist));
                    if oflags.contains(OpenFlags::EXCLUSIVE) || !exists {
                        return Err(err);
                    }
                }
            }
        }
        // The entry exists: open it as asked (a truncation's freed bytes are
        // given back when the new descriptor is charged).
        HostDescriptor::open_at(&mut self.inner, fd, path_flags, path, oflags, flags).await
    }

    /// Makes a file the guest created owner-only: the guest cannot chmod.
    fn make_private(&mut self, fd: &Resource<Descriptor>) {
        if let Ok(target) = self.target(fd)
            && let Err(err) = target.handle.set_permissions(std::fs::Permissions::from_mode(PRIVATE_FILE))
        {
            tracing::warn!("cannot make a guest-created file private: {err}");
        }
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
        let file = match rustix::fs::openat(&*folder, path, options, Mode::from_raw_mode(PRIVATE_FILE)) {
            Ok(file) => std::fs::File::from(file),
            Err(errno) => return Some(Err(ErrorCode::from(io::Error::from(errno)).into())),
        };
        let file = wasmtime_wasi::filesystem::File::new(file, perms, open_mode, BLOCK_CURRENT_THREAD);
        Some(self.table().push(Descriptor::File(file)).map_err(FsError::from))
    }

    /// Replaces wasmtime-wasi's stream (made for its permission checks) by a
    /// [`QuotaStream`] on the same file, under a new handle, holding a
    /// descriptor of the file for as long as the stream lives.
    fn wrap_stream(
        &mut self,
        fd: &Resource<Descriptor>,
        stream: Resource<DynOutputStream>,
        position: Option<u64>,
    ) -> FsResult<Resource<DynOutputStream>> {
        drop(self.table().delete(stream)?);
        let target = self.target(fd)?;
        let mut hold = self.ledger.hold().map_err(refusal)?;
        let key = if target.writable { self.observe_handle(&target.handle).map(|seen| seen.key) } else { None };
        if let Some(key) = key {
            hold.attach(key);
        }
        let ledger = Arc::clone(self.ledger);
        let wrapped: DynOutputStream =
            Box::new(QuotaStream { file: target.handle, key, position, ledger, closed: false, _hold: hold });
        Ok(self.table().push(wrapped)?)
    }
}

impl HostDirectoryEntryStream for QuotaFilesystemView<'_> {
    async fn read_directory_entry(
        &mut self,
        stream: Resource<types::DirectoryEntryStream>,
    ) -> FsResult<Option<DirectoryEntry>> {
        let listing = self.table().get_mut(&Resource::<Listing>::new_borrow(stream.rep()))?;
        listing.next_entry()
    }

    fn drop(&mut self, stream: Resource<types::DirectoryEntryStream>) -> wasmtime::Result<()> {
        self.table().delete(Resource::<Listing>::new_own(stream.rep()))?;
        self.held.listings = self.held.listings.saturating_sub(1);
        Ok(())
    }
}

/// A directory listing read from the kernel as the guest asks for entries,
/// through a descriptor of its own (its own offset), in chunks of the size
/// rustix reads (at most about 24 KiB). It stands in the table where
/// wasmtime-wasi's listing would (a `directory-entry-stream`): only this
/// wrapper reads or drops those.
struct Listing {
    entries: rustix::fs::Dir,
    _hold: Hold,
}

impl Listing {
    fn open(folder: &std::fs::File, hold: Hold) -> FsResult<Self> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let own = rustix::fs::openat(folder, ".", flags, Mode::empty()).map_err(io::Error::from)?;
        let entries = rustix::fs::Dir::new(own).map_err(io::Error::from)?;
        Ok(Self { entries, _hold: hold })
    }

    fn next_entry(&mut self) -> FsResult<Option<DirectoryEntry>> {
        loop {
            let Some(entry) = self.entries.read() else { return Ok(None) };
            let entry = entry.map_err(io::Error::from)?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let file_type = match entry.file_type() {
                FileType::Unknown => self.type_of(name)?,
                known => known,
            };
            let name = name.to_str().map_err(|_| ErrorCode::IllegalByteSequence)?.to_owned();
            return Ok(Some(DirectoryEntry { type_: descriptor_type(file_type), name }));
        }
    }

    fn type_of(&self, name: &CStr) -> FsResult<FileType> {
        let fd = self.entries.fd().map_err(io::Error::from)?;
        let stat = rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW).map_err(io::Error::from)?;
        Ok(FileType::from_raw_mode(stat.st_mode))
    }
}

fn descriptor_type(file_type: FileType) -> DescriptorType {
    match file_type {
        FileType::RegularFile => DescriptorType::RegularFile,
        FileType::Directory => DescriptorType::Directory,
        FileType::Symlink => DescriptorType::SymbolicLink,
        FileType::Fifo => DescriptorType::Fifo,
        FileType::Socket => DescriptorType::Socket,
        FileType::CharacterDevice => DescriptorType::CharacterDevice,
        FileType::BlockDevice => DescriptorType::BlockDevice,
        FileType::Unknown => DescriptorType::Unknown,
    }
}

/// The names an entry's inode has once that entry is removed.
fn names_after_removal(gone: &Observed) -> u64 {
    if gone.kind == Kind::Folder { 0 } else { gone.links.saturating_sub(1) }
}

fn kind_of(mode: u32) -> Kind {
    match FileType::from_raw_mode(mode) {
        FileType::Directory => Kind::Folder,
        FileType::Symlink => Kind::Symlink,
        _ => Kind::File,
    }
}

/// What the kernel reports of the open `handle`.
pub(crate) fn stat_handle(handle: impl AsFd) -> io::Result<Observed> {
    let stat = rustix::fs::fstat(handle)?;
    Ok(Observed::new(
        (stat.st_dev, stat.st_ino),
        kind_of(stat.st_mode),
        u64::try_from(stat.st_size).unwrap_or(0),
        u64::try_from(stat.st_blocks).unwrap_or(0),
        stat.st_nlink,
    ))
}

/// What the kernel reports of the entry `path` in `dir`, not following a
/// final symlink, resolved as wasmtime-wasi resolves guest paths (cap-std:
/// never outside `dir`).
fn stat_at(dir: &std::fs::File, path: &str) -> io::Result<Observed> {
    stat_path(dir, path, FollowSymlinks::No)
}

fn stat_path(dir: &std::fs::File, path: &str, follow: FollowSymlinks) -> io::Result<Observed> {
    let meta = cap_primitives::fs::stat(dir, Path::new(path), follow)?;
    let kind = if meta.is_dir() {
        Kind::Folder
    } else if meta.is_symlink() {
        Kind::Symlink
    } else {
        Kind::File
    };
    Ok(Observed::new((meta.dev(), meta.ino()), kind, meta.len(), meta.blocks(), meta.nlink()))
}

/// The folder the entry `path` of `dir` is in.
fn stat_parent(dir: &std::fs::File, path: &str) -> io::Result<Observed> {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rsplit_once('/') {
        None => stat_handle(dir),
        Some(("", _)) => Err(io::Error::from(io::ErrorKind::InvalidInput)),
        Some((parent, _)) => stat_path(dir, parent, FollowSymlinks::Yes),
    }
}

/// A file's input stream that counts one hold while it lives, and counts
/// what passes through into a [`Progress`] when reading the input.
struct HeldInputStream {
    inner: DynInputStream,
    progress: Option<Arc<Progress>>,
    _hold: Hold,
}

#[wasmtime_wasi::async_trait]
impl InputStream for HeldInputStream {
    fn read(&mut self, size: usize) -> Result<Bytes, StreamError> {
        let bytes = self.inner.read(size)?;
        if let Some(progress) = &self.progress {
            progress.record(&bytes);
        }
        Ok(bytes)
    }

    async fn blocking_read(&mut self, size: usize) -> Result<Bytes, StreamError> {
        let bytes = self.inner.blocking_read(size).await?;
        if let Some(progress) = &self.progress {
            progress.record(&bytes);
        }
        Ok(bytes)
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await;
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for HeldInputStream {
    async fn ready(&mut self) {
        self.inner.ready().await;
    }
}

/// How much one stream write may carry, as announced by `check-write`.
const STREAM_WRITE_PERMIT: usize = 1 << 20;

/// A file's output stream that checks each write's growth against the
/// ledger, writes on the current thread, and charges the file after. It
/// replaces wasmtime-wasi's stream, whose non-blocking `write` hands every
/// chunk to a worker thread (a thread hop per write); file writes here are
/// small and bounded by the permit.
struct QuotaStream {
    file: Arc<std::fs::File>,
    /// The file's inode, when it is charged (a file the guest may write).
    key: Option<InodeKey>,
    /// Where the next write lands; `None` for an append stream.
    position: Option<u64>,
    ledger: Arc<Ledger>,
    /// Set by the first failed write: the stream is closed after it.
    closed: bool,
    _hold: Hold,
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
            if let Some(key) = self.key {
                self.ledger.check_growth(key, offset.saturating_add(len)).map_err(|_| no_space_io())?;
            }
            let written = self.file.write_all_at(bytes, offset);
            if self.key.is_some()
                && let Ok(seen) = stat_handle(&self.file)
            {
                self.ledger.observe(seen);
            }
            written?;
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

fn no_space_io() -> io::Error {
    io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error())
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
    //! The invariant of the ledger, over random sequences of what a guest
    //! can do to its folder, run through this wrapper as a guest's calls are:
    //! after every step the charge is at least what the folder really holds
    //! (as the kernel reports it), and within the bounds.

    use std::collections::{HashMap, HashSet};
    use std::os::unix::fs::MetadataExt as _;
    use std::path::PathBuf;

    use proptest::prelude::*;
    use wasmtime_wasi::WasiCtxBuilder;
    use wasmtime_wasi::p2::bindings::filesystem::preopens::Host as _;

    use super::*;
    use crate::ledger::{Bounds, Usage};
    use crate::store::{MemoryLimiter, Preopen};

    const BOUNDS: Bounds = Bounds { bytes: 64 << 10, files: 12, folders: 3, handles: 12 };
    /// What the charge may pass the quota by: one block of the last growth,
    /// plus the block a new entry may add to its folder.
    const SLACK: u64 = 2 * 4096;
    const NAMES: [&str; 9] = ["a", "b", "c", "d0", "d1", "d0/a", "d0/b", "d1/a", "d0/d2"];

    #[derive(Debug, Clone)]
    enum Op {
        Create(usize),
        Open { name: usize, truncate: bool },
        Write { handle: usize, offset: u64, len: usize },
        Append { handle: usize, len: usize },
        SetSize { handle: usize, size: u64 },
        Rename(usize, usize),
        Link(usize, usize),
        Symlink { target_len: usize, name: usize },
        Unlink(usize),
        Mkdir(usize),
        Rmdir(usize),
        Close(usize),
        CloseStream(usize),
        List { name: usize, keep: bool },
        CloseListing(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        let name = 0..NAMES.len();
        prop_oneof![
            3 => name.clone().prop_map(Op::Create),
            1 => (name.clone(), any::<bool>()).prop_map(|(name, truncate)| Op::Open { name, truncate }),
            3 => (0..8usize, 0..40_000u64, 0..12_000usize).prop_map(|(handle, offset, len)| Op::Write { handle, offset, len }),
            2 => (0..8usize, 0..12_000usize).prop_map(|(handle, len)| Op::Append { handle, len }),
            1 => (0..8usize, 0..80_000u64).prop_map(|(handle, size)| Op::SetSize { handle, size }),
            2 => (name.clone(), name.clone()).prop_map(|(a, b)| Op::Rename(a, b)),
            1 => (name.clone(), name.clone()).prop_map(|(a, b)| Op::Link(a, b)),
            1 => (0..300usize, name.clone()).prop_map(|(target_len, name)| Op::Symlink { target_len, name }),
            2 => name.clone().prop_map(Op::Unlink),
            1 => name.clone().prop_map(Op::Mkdir),
            1 => name.clone().prop_map(Op::Rmdir),
            2 => (0..8usize).prop_map(Op::Close),
            1 => (0..8usize).prop_map(Op::CloseStream),
            1 => (name, any::<bool>()).prop_map(|(name, keep)| Op::List { name, keep }),
            1 => (0..8usize).prop_map(Op::CloseListing),
        ]
    }

    /// A guest's folder and what the guest holds in it.
    struct Guest {
        _base: Scratch,
        out: PathBuf,
        state: GuestState,
        root: Resource<Descriptor>,
        root_bytes: u64,
        files: Vec<Resource<Descriptor>>,
        streams: Vec<(Resource<DynOutputStream>, Arc<std::fs::File>)>,
        listings: Vec<Resource<types::DirectoryEntryStream>>,
    }

    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn borrow<T: 'static>(resource: &Resource<T>) -> Resource<T> {
        Resource::new_borrow(resource.rep())
    }

    fn pick<T>(items: &[T], index: usize) -> Option<usize> {
        (!items.is_empty()).then(|| index % items.len())
    }

    impl Guest {
        fn new() -> Self {
            let base = std::env::temp_dir().join(format!("quota-invariant-{}", crate::fs::random_hex().expect("rng")));
            let out = base.join("out");
            std::fs::create_dir_all(&out).expect("scratch folder");
            let dir = cap_std::fs::Dir::open_ambient_dir(&out, cap_std::ambient_authority()).expect("open");
            let ledger = Ledger::new(BOUNDS);
            let root_seen = stat_handle(&dir).expect("stat");
            ledger.observe(Observed { kind: Kind::Root, ..root_seen });
            let mut state = GuestState {
                wasi: WasiCtxBuilder::new().build(),
                table: ResourceTable::new(),
                limiter: MemoryLimiter::new(1 << 20),
                preopens: vec![Preopen::new(dir, "/out", true)],
                ledger,
                held: Held::default(),
                progress: None,
            };
            let (root, _) = state.preopens_view().get_directories().expect("preopens").pop().expect("one preopen");
            Self {
                _base: Scratch(base),
                out,
                state,
                root,
                root_bytes: root_seen.bytes,
                files: Vec::new(),
                streams: Vec::new(),
                listings: Vec::new(),
            }
        }

        async fn apply(&mut self, op: &Op) {
            let root = borrow(&self.root);
            let name = |index: usize| NAMES[index].to_owned();
            let mut view = self.state.quota_filesystem_view();
            match op.clone() {
                Op::Create(index) => {
                    let flags = DescriptorFlags::READ | DescriptorFlags::WRITE;
                    let opened = HostDescriptor::open_at(
                        &mut view,
                        root,
                        PathFlags::empty(),
                        name(index),
                        OpenFlags::CREATE,
                        flags,
                    )
                    .await;
                    if let Ok(fd) = opened {
                        self.files.push(fd);
                    }
                }
                Op::Open { name: index, truncate } => {
                    let oflags = if truncate { OpenFlags::TRUNCATE } else { OpenFlags::empty() };
                    let flags = DescriptorFlags::READ | DescriptorFlags::WRITE;
                    if let Ok(fd) =
                        HostDescriptor::open_at(&mut view, root, PathFlags::empty(), name(index), oflags, flags).await
                    {
                        self.files.push(fd);
                    }
                }
                Op::Write { handle, offset, len } => {
                    if let Some(index) = pick(&self.files, handle) {
                        let fd = borrow(&self.files[index]);
                        let _ = HostDescriptor::write(&mut view, fd, vec![7; len], offset).await;
                    }
                }
                Op::Append { handle, len } => {
                    let Some(index) = pick(&self.files, handle) else { return };
                    let fd = borrow(&self.files[index]);
                    let file = match view.table().get(&fd) {
                        Ok(Descriptor::File(file)) => Arc::clone(&file.file),
                        _ => return,
                    };
                    if let Ok(stream) = HostDescriptor::append_via_stream(&mut view, fd) {
                        let writer = self.state.table.get_mut(&stream).expect("stream");
                        let _ = writer.blocking_write_and_flush(Bytes::from(vec![9; len])).await;
                        self.streams.push((stream, file));
                    }
                }
                Op::SetSize { handle, size } => {
                    if let Some(index) = pick(&self.files, handle) {
                        let _ = HostDescriptor::set_size(&mut view, borrow(&self.files[index]), size).await;
                    }
                }
                Op::Rename(from, to) => {
                    let _ = HostDescriptor::rename_at(&mut view, root, name(from), borrow(&self.root), name(to)).await;
                }
                Op::Link(from, to) => {
                    let _ = HostDescriptor::link_at(
                        &mut view,
                        root,
                        PathFlags::empty(),
                        name(from),
                        borrow(&self.root),
                        name(to),
                    )
                    .await;
                }
                Op::Symlink { target_len, name: index } => {
                    let _ = HostDescriptor::symlink_at(&mut view, root, "t".repeat(target_len), name(index)).await;
                }
                Op::Unlink(index) => {
                    let _ = HostDescriptor::unlink_file_at(&mut view, root, name(index)).await;
                }
                Op::Mkdir(index) => {
                    let _ = HostDescriptor::create_directory_at(&mut view, root, name(index)).await;
                }
                Op::Rmdir(index) => {
                    let _ = HostDescriptor::remove_directory_at(&mut view, root, name(index)).await;
                }
                Op::Close(handle) => {
                    if let Some(index) = pick(&self.files, handle) {
                        HostDescriptor::drop(&mut view, self.files.swap_remove(index)).expect("drop");
                    }
                }
                Op::CloseStream(handle) => {
                    if let Some(index) = pick(&self.streams, handle) {
                        let (stream, _) = self.streams.swap_remove(index);
                        drop(self.state.table.delete(stream).expect("stream"));
                    }
                }
                Op::List { name: index, keep } => {
                    let folder = if NAMES[index].starts_with('d') {
                        let flags = DescriptorFlags::READ;
                        HostDescriptor::open_at(
                            &mut view,
                            borrow(&root),
                            PathFlags::empty(),
                            name(index),
                            OpenFlags::DIRECTORY,
                            flags,
                        )
                        .await
                        .ok()
                    } else {
                        None
                    };
                    let listed = match &folder {
                        Some(folder) => HostDescriptor::read_directory(&mut view, borrow(folder)).await,
                        None => HostDescriptor::read_directory(&mut view, root).await,
                    };
                    if let Ok(listing) = listed {
                        let _ = HostDirectoryEntryStream::read_directory_entry(&mut view, borrow(&listing)).await;
                        if keep {
                            self.listings.push(listing);
                        } else {
                            HostDirectoryEntryStream::drop(&mut view, listing).expect("drop listing");
                        }
                    }
                    if let Some(folder) = folder {
                        HostDescriptor::drop(&mut view, folder).expect("drop folder");
                    }
                }
                Op::CloseListing(handle) => {
                    if let Some(index) = pick(&self.listings, handle) {
                        HostDirectoryEntryStream::drop(&mut view, self.listings.swap_remove(index)).expect("drop");
                    }
                }
            }
        }

        async fn close_and_remove_everything(&mut self) {
            for index in (0..self.files.len()).rev() {
                self.apply(&Op::Close(index)).await;
            }
            for index in (0..self.streams.len()).rev() {
                self.apply(&Op::CloseStream(index)).await;
            }
            for index in (0..self.listings.len()).rev() {
                self.apply(&Op::CloseListing(index)).await;
            }
            // Deepest first: names are at most two folders deep.
            let mut entries = Vec::new();
            let mut pending = vec![PathBuf::new()];
            while let Some(relative) = pending.pop() {
                for entry in std::fs::read_dir(self.out.join(&relative)).expect("list") {
                    let entry = entry.expect("entry");
                    let path = relative.join(entry.file_name());
                    let is_dir = entry.file_type().expect("type").is_dir();
                    if is_dir {
                        pending.push(path.clone());
                    }
                    entries.push((path, is_dir));
                }
            }
            entries.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
            let mut view = self.state.quota_filesystem_view();
            for (path, is_dir) in entries {
                let path = path.to_str().expect("ASCII names").to_owned();
                let root = borrow(&self.root);
                let removed = if is_dir {
                    HostDescriptor::remove_directory_at(&mut view, root, path).await
                } else {
                    HostDescriptor::unlink_file_at(&mut view, root, path).await
                };
                removed.expect("removal through the wrapper");
            }
        }

        /// What the folder really holds now, as the kernel reports it, with
        /// the unlinked files the guest still holds.
        fn real_usage(&self) -> Usage {
            let mut usage = Usage::default();
            let mut seen = HashSet::new();
            let mut pending = vec![self.out.clone()];
            while let Some(folder) = pending.pop() {
                for entry in std::fs::read_dir(&folder).expect("list") {
                    let path = entry.expect("entry").path();
                    let meta = std::fs::symlink_metadata(&path).expect("lstat");
                    usage.files += 1;
                    if meta.is_dir() {
                        usage.folders += 1;
                        pending.push(path);
                    }
                    if seen.insert((meta.dev(), meta.ino())) {
                        usage.bytes += meta.size().max(meta.blocks() * 512);
                    }
                }
            }
            let root = std::fs::metadata(&self.out).expect("stat root");
            usage.bytes += (root.size().max(root.blocks() * 512)).saturating_sub(self.root_bytes);
            let mut open: Vec<Arc<std::fs::File>> = self.streams.iter().map(|(_, file)| Arc::clone(file)).collect();
            for fd in &self.files {
                if let Ok(Descriptor::File(file)) = self.state.table.get(fd) {
                    open.push(Arc::clone(&file.file));
                }
            }
            for file in open {
                let meta = file.metadata().expect("fstat");
                if meta.nlink() == 0 && seen.insert((meta.dev(), meta.ino())) {
                    usage.files += 1;
                    usage.bytes += meta.size().max(meta.blocks() * 512);
                }
            }
            // The preopen descriptor is held too.
            usage.handles = (1 + self.files.len() + self.streams.len() + self.listings.len()) as u64;
            usage
        }

        fn check(&self, step: usize, op: &Op) -> Result<(), TestCaseError> {
            let charged = self.state.ledger.usage();
            let real = self.real_usage();
            let context = format!("after step {step} ({op:?}): charged {charged:?}, real {real:?}");
            prop_assert!(charged.bytes >= real.bytes, "bytes under-charged {}", context);
            prop_assert!(charged.files >= real.files, "files under-counted {}", context);
            prop_assert!(charged.folders >= real.folders, "folders under-counted {}", context);
            prop_assert_eq!(charged.handles, real.handles, "handles miscounted {}", context);
            prop_assert!(real.bytes <= BOUNDS.bytes + SLACK, "past the quota {}", context);
            prop_assert!(real.files <= BOUNDS.files && real.folders <= BOUNDS.folders, "past a limit {}", context);
            prop_assert!(real.handles <= BOUNDS.handles, "past the cap {}", context);
            Ok(())
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    proptest! {
        // A failure prints its minimal sequence; nothing is written into the tree.
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn the_charge_never_falls_below_what_the_folder_holds(ops in proptest::collection::vec(op(), 1..60)) {
            let runtime = runtime();
            let mut guest = Guest::new();
            for (step, op) in ops.iter().enumerate() {
                runtime.block_on(guest.apply(op));
                guest.check(step, op)?;
            }
            // Everything closed and removed through the wrapper: nothing
            // stays charged but the root's growth (a folder on ext4 never
            // shrinks).
            runtime.block_on(guest.close_and_remove_everything());
            let leftover = guest.state.ledger.usage();
            // The preopen is still held.
            prop_assert_eq!((leftover.files, leftover.folders, leftover.handles), (0, 0, 1), "{:?}", leftover);
        }
    }

    #[test]
    fn renaming_a_full_file_onto_itself_gives_nothing_back() {
        let runtime = runtime();
        let mut guest = Guest::new();
        let ops = [
            Op::Create(0),
            Op::Write { handle: 0, offset: 0, len: 60_000 },
            Op::Rename(0, 0),
            Op::Create(1),
            Op::Write { handle: 1, offset: 0, len: 60_000 },
        ];
        for op in &ops {
            runtime.block_on(guest.apply(op));
        }
        assert_eq!(std::fs::metadata(guest.out.join("b")).expect("b").len(), 0, "the second fill was refused");
        assert_eq!(guest.state.ledger.refused(), vec![Refused::Bytes]);
    }

    #[test]
    fn an_unlinked_open_file_keeps_its_bytes_charged() {
        let runtime = runtime();
        let mut guest = Guest::new();
        for op in [
            Op::Create(0),
            Op::Write { handle: 0, offset: 0, len: 60_000 },
            Op::Unlink(0),
            Op::SetSize { handle: 0, size: 0 },
            Op::SetSize { handle: 0, size: 60_000 },
        ] {
            runtime.block_on(guest.apply(&op));
        }
        assert_eq!(guest.state.ledger.usage().bytes, 60_000, "the size came back once, when it was set again");
        for op in [Op::Create(1), Op::Write { handle: 1, offset: 0, len: 60_000 }] {
            runtime.block_on(guest.apply(&op));
        }
        assert_eq!(guest.state.ledger.refused(), vec![Refused::Bytes]);
        runtime.block_on(guest.apply(&Op::Close(0)));
        assert!(guest.state.ledger.usage().bytes < 60_000, "closing the unlinked file gave it back");
    }

    #[test]
    fn preopens_asked_for_again_are_counted() {
        let mut guest = Guest::new();
        let mut kept = HashMap::new();
        for round in 0..BOUNDS.handles {
            match guest.state.preopens_view().get_directories() {
                Ok(dirs) => {
                    kept.insert(round, dirs);
                }
                Err(err) => {
                    assert!(err.to_string().contains("descriptors"), "{err}");
                    assert_eq!(guest.state.ledger.usage().handles, BOUNDS.handles);
                    return;
                }
            }
        }
        panic!("get-directories went past the cap");
    }
}
