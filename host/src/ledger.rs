//! What one guest holds, charged to the thing that holds it.
//!
//! Every file, folder and symbolic link a guest makes is an *inode* on the
//! host's disk (or in its memory, on tmpfs), and every descriptor, stream and
//! directory listing it holds is a descriptor of the host process. The
//! [`Ledger`] charges each of them where it lives:
//!
//! - an inode, by `(device, inode)`: the bytes it occupies (its size, or its
//!   allocated blocks when they are more, so a one-byte file costs its block
//!   and a sparse file its size; a folder its own size, a link its target),
//!   one file per name it has, and one folder if it is a folder;
//! - a [`Hold`], one per host descriptor the guest holds, against the
//!   descriptor cap; a hold on a file keeps that file's charge alive.
//!
//! An inode's charge is a function of what the kernel reports about it, and
//! the totals are kept as the sum of those charges: an operation *observes*
//! the inodes it touched and the totals move by the difference. So nothing
//! can be given back twice, a rename onto the same file changes nothing, and
//! bytes and the file count go back only when the inode's last name is gone
//! *and* the guest holds no descriptor on it (the kernel keeps the data of an
//! unlinked file while it is open). The invariant, checked by a
//! property-based test over random operation sequences in `quota.rs`: the
//! charge is never below what the sandbox really holds.
//!
//! The checks come before the operation (the growth it will cause must fit);
//! the charge after it is what the kernel then reports, which may exceed the
//! prediction by the rounding to a block. The next growth is then refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// A file's identity on the host: `(device, inode)`.
pub(crate) type InodeKey = (u64, u64);

/// What an inode is, as far as charging goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Folder,
    Symlink,
    /// A folder the host made and handed to the guest (a preopen): only what
    /// the guest made it grow by is charged, and it is never a file or folder
    /// of the guest's.
    Root,
}

/// What the kernel reports about an inode, as much as charging needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Observed {
    pub key: InodeKey,
    pub kind: Kind,
    /// What it occupies: `max(size, allocated blocks)`.
    pub bytes: u64,
    /// Its link count (0 once the last name is gone).
    pub links: u64,
}

impl Observed {
    /// From `fstat`/`fstatat` figures.
    pub(crate) fn new(key: InodeKey, kind: Kind, size: u64, blocks_512: u64, links: u64) -> Self {
        Self { key, kind, bytes: size.max(blocks_512.saturating_mul(512)), links }
    }
}

/// The bounds of one sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    pub bytes: u64,
    pub files: u64,
    pub folders: u64,
    pub handles: u64,
}

/// What a guest's sandbox is charged, over every inode and hold, as the
/// host's own ledger counts it (not what the guest says): the charge now, or
/// (as [`crate::RunOutcome::sandbox_peak`] and [`crate::RunError::sandbox_peak`])
/// the most of each figure the guest held at once during its run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Usage {
    /// Bytes charged to the disk quota.
    pub bytes: u64,
    /// Files, folders and links (every name, and every unlinked file still held).
    pub files: u64,
    /// Folders.
    pub folders: u64,
    /// Host descriptors held: descriptors, file streams, listings.
    pub handles: u64,
}

impl Usage {
    /// Each figure the larger of the two.
    fn max_each(self, other: Self) -> Self {
        Self {
            bytes: self.bytes.max(other.bytes),
            files: self.files.max(other.files),
            folders: self.folders.max(other.folders),
            handles: self.handles.max(other.handles),
        }
    }

    fn add(&mut self, other: Self) {
        self.bytes = self.bytes.saturating_add(other.bytes);
        self.files = self.files.saturating_add(other.files);
        self.folders = self.folders.saturating_add(other.folders);
        self.handles = self.handles.saturating_add(other.handles);
    }

    fn subtract(&mut self, other: Self) {
        self.bytes = self.bytes.saturating_sub(other.bytes);
        self.files = self.files.saturating_sub(other.files);
        self.folders = self.folders.saturating_sub(other.folders);
        self.handles = self.handles.saturating_sub(other.handles);
    }
}

/// A bound an operation ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The disk quota.
    Bytes,
    /// The file limit.
    Files,
    /// The folder limit.
    Folders,
    /// The descriptor cap.
    Handles,
    /// The bound on open directory listings.
    Listings,
}

/// The charge of one inode.
#[derive(Debug, Clone, Copy)]
struct Charge {
    kind: Kind,
    /// For a [`Kind::Root`], what it occupied when the guest got it.
    base: u64,
    bytes: u64,
    /// Its names (the kernel's link count; for a folder 1 while it exists).
    names: u64,
    /// Holds the guest has on it.
    holds: u64,
}

impl Charge {
    fn alive(&self) -> bool {
        self.names > 0 || self.holds > 0 || self.kind == Kind::Root
    }

    fn usage(&self) -> Usage {
        if !self.alive() {
            return Usage::default();
        }
        let counted = self.kind != Kind::Root;
        // An unlinked file the guest still holds is still a file on disk.
        let files = if counted { self.names.max(1) } else { 0 };
        let folders = u64::from(self.kind == Kind::Folder);
        Usage { bytes: self.bytes, files, folders, handles: 0 }
    }
}

#[derive(Debug, Default)]
struct State {
    inodes: HashMap<InodeKey, Charge>,
    used: Usage,
    /// The most of each figure `used` has been.
    peak: Usage,
    /// Every bound an operation was refused by, in the order first seen.
    refused: Vec<Refused>,
}

impl State {
    /// Changes the charge of `key` by `change` (a new one starts from
    /// `fresh`), moving the totals by the difference and forgetting an inode
    /// nothing holds any more.
    fn update(&mut self, key: InodeKey, fresh: impl FnOnce() -> Charge, change: impl FnOnce(&mut Charge)) {
        self.inodes.entry(key).or_insert_with(fresh);
        self.update_known(key, change);
    }

    /// As [`State::update`], for an inode already charged; nothing for another.
    fn update_known(&mut self, key: InodeKey, change: impl FnOnce(&mut Charge)) {
        let Some(charge) = self.inodes.get_mut(&key) else { return };
        let before = charge.usage();
        change(charge);
        let after = charge.usage();
        let alive = charge.alive();
        self.used.subtract(before);
        self.used.add(after);
        self.peak = self.peak.max_each(self.used);
        if !alive {
            self.inodes.remove(&key);
        }
    }

    fn refuse(&mut self, bound: Refused) -> Refused {
        if !self.refused.contains(&bound) {
            self.refused.push(bound);
        }
        bound
    }
}

/// The charges of one sandbox. Shared (`Arc`) by the filesystem calls and the
/// streams and holds they hand out.
#[derive(Debug)]
pub(crate) struct Ledger {
    bounds: Bounds,
    state: Mutex<State>,
}

impl Ledger {
    pub(crate) fn new(bounds: Bounds) -> Arc<Self> {
        Arc::new(Self { bounds, state: Mutex::new(State::default()) })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What is charged now.
    pub(crate) fn usage(&self) -> Usage {
        self.lock().used
    }

    /// The most of each figure charged at once so far.
    pub(crate) fn peak(&self) -> Usage {
        self.lock().peak
    }

    /// The bounds that refused an operation, in the order first seen.
    pub(crate) fn refused(&self) -> Vec<Refused> {
        self.lock().refused.clone()
    }

    /// Records that `bound`, kept outside the ledger (the open listings),
    /// refused an operation.
    pub(crate) fn refused_by(&self, bound: Refused) -> Refused {
        self.lock().refuse(bound)
    }

    /// Whether one more entry of `kind` fits (a file, folder or link about to
    /// be created, or a new name for a file).
    ///
    /// An entry may grow its folder by a block, charged after it is made, so
    /// none is made once the charge has gone past the quota that way.
    pub(crate) fn check_new_entry(&self, kind: Kind) -> Result<(), Refused> {
        let mut state = self.lock();
        if state.used.bytes > self.bounds.bytes {
            return Err(state.refuse(Refused::Bytes));
        }
        if state.used.files >= self.bounds.files {
            return Err(state.refuse(Refused::Files));
        }
        if kind == Kind::Folder && state.used.folders >= self.bounds.folders {
            return Err(state.refuse(Refused::Folders));
        }
        Ok(())
    }

    /// Whether the inode `key` may come to occupy `bytes` (its charge now
    /// counts as already paid; an unknown inode has paid nothing).
    pub(crate) fn check_growth(&self, key: InodeKey, bytes: u64) -> Result<(), Refused> {
        let mut state = self.lock();
        let paid = state.inodes.get(&key).map_or(0, |charge| charge.bytes);
        let needed = bytes.saturating_sub(paid);
        if needed > 0 && state.used.bytes.saturating_add(needed) > self.bounds.bytes {
            return Err(state.refuse(Refused::Bytes));
        }
        Ok(())
    }

    /// Whether `bytes` more fit, for an inode not made yet (a link's target).
    pub(crate) fn check_new_bytes(&self, bytes: u64) -> Result<(), Refused> {
        let mut state = self.lock();
        if state.used.bytes.saturating_add(bytes) > self.bounds.bytes {
            return Err(state.refuse(Refused::Bytes));
        }
        Ok(())
    }

    /// Takes the kernel's word for an inode after an operation touched it.
    pub(crate) fn observe(&self, seen: Observed) {
        self.lock().update(
            seen.key,
            || Charge {
                kind: seen.kind,
                base: if seen.kind == Kind::Root { seen.bytes } else { 0 },
                bytes: 0,
                names: 0,
                holds: 0,
            },
            |charge| {
                charge.bytes = seen.bytes.saturating_sub(charge.base);
                charge.names = match charge.kind {
                    Kind::Root => 1,
                    // A folder's link count counts its subfolders' `..`.
                    Kind::Folder => u64::from(seen.links > 0),
                    Kind::File | Kind::Symlink => seen.links,
                };
            },
        );
    }

    /// One name of `key` is gone and the inode cannot be looked at any more
    /// (it was unlinked, removed or replaced): its names are now `links`.
    pub(crate) fn names_left(&self, key: InodeKey, links: u64) {
        self.lock().update_known(key, |charge| charge.names = links);
    }

    /// A hold for one more host descriptor, within the cap.
    pub(crate) fn hold(self: &Arc<Self>) -> Result<Hold, Refused> {
        let mut state = self.lock();
        if state.used.handles >= self.bounds.handles {
            return Err(state.refuse(Refused::Handles));
        }
        state.used.handles += 1;
        state.peak = state.peak.max_each(state.used);
        Ok(Hold { ledger: Arc::clone(self), inode: None })
    }

    fn attach(&self, key: InodeKey) -> bool {
        let mut state = self.lock();
        if !state.inodes.contains_key(&key) {
            return false;
        }
        state.update_known(key, |charge| charge.holds += 1);
        true
    }

    fn release(&self, inode: Option<InodeKey>) {
        let mut state = self.lock();
        state.used.handles = state.used.handles.saturating_sub(1);
        if let Some(key) = inode {
            state.update_known(key, |charge| charge.holds = charge.holds.saturating_sub(1));
        }
    }
}

/// One host descriptor the guest holds (a descriptor, a stream, a listing),
/// counted against the cap until it is dropped. A hold on a file the guest
/// may write keeps that file's charge alive while the guest can still reach
/// its data.
#[derive(Debug)]
pub(crate) struct Hold {
    ledger: Arc<Ledger>,
    inode: Option<InodeKey>,
}

impl Hold {
    /// Keeps the charge of `key` alive while this hold lives. Unknown inodes
    /// (the read-only input) have no charge to keep.
    pub(crate) fn attach(&mut self, key: InodeKey) {
        if self.inode.is_none() && self.ledger.attach(key) {
            self.inode = Some(key);
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.ledger.release(self.inode);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(bytes: u64, files: u64) -> Arc<Ledger> {
        Ledger::new(Bounds { bytes, files, folders: 2, handles: 3 })
    }

    fn file(ino: u64, bytes: u64, links: u64) -> Observed {
        Observed::new((1, ino), Kind::File, bytes, 0, links)
    }

    #[test]
    fn observing_again_moves_the_totals_by_the_difference() {
        let ledger = ledger(100, 10);
        ledger.observe(file(1, 60, 1));
        ledger.observe(file(1, 60, 1));
        ledger.observe(file(1, 70, 1));
        assert_eq!(ledger.usage(), Usage { bytes: 70, files: 1, folders: 0, handles: 0 });
        assert_eq!(ledger.check_growth((1, 1), 100), Ok(()), "what the inode holds is paid for");
        assert_eq!(ledger.check_growth((1, 1), 101), Err(Refused::Bytes));
        assert_eq!(ledger.refused(), vec![Refused::Bytes]);
    }

    #[test]
    fn an_unlinked_file_keeps_its_charge_while_held() {
        let ledger = ledger(100, 10);
        ledger.observe(file(1, 50, 1));
        let mut hold = ledger.hold().expect("hold");
        hold.attach((1, 1));
        ledger.names_left((1, 1), 0);
        assert_eq!(ledger.usage(), Usage { bytes: 50, files: 1, folders: 0, handles: 1 });
        drop(hold);
        assert_eq!(ledger.usage(), Usage::default());
        ledger.names_left((1, 1), 0);
        assert_eq!(ledger.usage(), Usage::default(), "nothing is given back twice");
    }

    #[test]
    fn hard_links_count_one_file_per_name_and_the_bytes_once() {
        let ledger = ledger(100, 10);
        ledger.observe(file(1, 30, 1));
        ledger.observe(file(1, 30, 2));
        assert_eq!(ledger.usage(), Usage { bytes: 30, files: 2, folders: 0, handles: 0 });
        ledger.names_left((1, 1), 1);
        assert_eq!(ledger.usage(), Usage { bytes: 30, files: 1, folders: 0, handles: 0 });
    }

    #[test]
    fn roots_charge_only_their_growth_and_count_no_file() {
        let ledger = ledger(10_000, 1);
        ledger.observe(Observed::new((1, 9), Kind::Root, 4096, 8, 2));
        assert_eq!(ledger.usage(), Usage::default());
        ledger.observe(Observed::new((1, 9), Kind::Root, 8192, 16, 2));
        assert_eq!(ledger.usage().bytes, 4096);
        assert_eq!(ledger.check_new_entry(Kind::File), Ok(()));
    }

    #[test]
    fn folders_have_their_own_bound_and_blocks_count() {
        let ledger = ledger(1 << 20, 10);
        for ino in 1..=2 {
            assert_eq!(ledger.check_new_entry(Kind::Folder), Ok(()));
            ledger.observe(Observed::new((1, ino), Kind::Folder, 4096, 8, 2));
        }
        assert_eq!(ledger.check_new_entry(Kind::Folder), Err(Refused::Folders));
        assert_eq!(ledger.check_new_entry(Kind::File), Ok(()));
        ledger.observe(Observed::new((1, 3), Kind::File, 1, 8, 1));
        assert_eq!(ledger.usage(), Usage { bytes: 3 * 4096, files: 3, folders: 2, handles: 0 });
    }

    #[test]
    fn holds_stop_at_the_cap_and_come_back() {
        let ledger = ledger(100, 10);
        let holds: Vec<Hold> = (0..3).map(|_| ledger.hold().expect("within the cap")).collect();
        assert_eq!(ledger.hold().map(drop), Err(Refused::Handles));
        drop(holds);
        assert_eq!(ledger.usage().handles, 0);
        assert!(ledger.hold().is_ok());
        assert_eq!(ledger.peak().handles, 3, "the peak stays when the holds go");
    }

    #[test]
    fn the_peak_keeps_the_most_of_each_figure() {
        let ledger = ledger(1 << 20, 10);
        ledger.observe(file(1, 700, 1));
        ledger.names_left((1, 1), 0);
        ledger.observe(file(2, 300, 1));
        ledger.observe(file(3, 300, 1));
        assert_eq!(ledger.usage(), Usage { bytes: 600, files: 2, folders: 0, handles: 0 });
        assert_eq!(ledger.peak(), Usage { bytes: 700, files: 2, folders: 0, handles: 0 });
    }
}
