//! Who waits for which job's end (`?wait=`): a waiter is told of its own
//! job's end only, with the record as committed when there is one, so many
//! waiters do not each wake for every job that ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

use super::store::JobRecord;

/// How a job's end is told to its waiters.
#[derive(Debug, Clone)]
pub enum End {
    /// Its record as committed.
    Recorded(Arc<JobRecord>),
    /// It ended, was cancelled or deleted: read it again.
    ReadAgain,
    /// It ran, but its one write (the end of a job kept in memory since
    /// it was accepted) failed: nothing of it is on disk.
    NotRecorded,
}

/// The waiters of each job, by id.
#[derive(Debug, Default)]
pub struct Ends(Mutex<HashMap<String, Vec<oneshot::Sender<End>>>>);

impl Ends {
    fn waiters(&self) -> MutexGuard<'_, HashMap<String, Vec<oneshot::Sender<End>>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts waiting for job `id`'s end: call it before reading the job,
    /// so that an end after the read is not missed.
    pub fn watch(&self, id: &str) -> EndWatch<'_> {
        let (sender, receiver) = oneshot::channel();
        self.waiters().entry(id.to_owned()).or_default().push(sender);
        EndWatch { ends: self, id: id.to_owned(), receiver }
    }

    /// Tells every waiter of job `id` that it ended (none is fine); the
    /// last one gets `end` itself, so a lone waiter holds its record alone.
    pub fn announce(&self, id: &str, end: End) {
        let mut waiters = self.waiters().remove(id).unwrap_or_default();
        let last = waiters.pop();
        for waiter in waiters {
            let _ = waiter.send(end.clone());
        }
        if let Some(last) = last {
            let _ = last.send(end);
        }
    }

    /// Jobs with a waiter (for tests: none is left behind).
    #[cfg(test)]
    fn watched(&self) -> usize {
        self.waiters().len()
    }
}

/// One waiter of one job's end; dropping it stops waiting.
#[derive(Debug)]
pub struct EndWatch<'a> {
    ends: &'a Ends,
    id: String,
    receiver: oneshot::Receiver<End>,
}

impl EndWatch<'_> {
    /// The job's end, once announced.
    pub async fn ended(&mut self) -> End {
        (&mut self.receiver).await.unwrap_or(End::ReadAgain)
    }
}

impl Drop for EndWatch<'_> {
    fn drop(&mut self) {
        // Closed first, so that it counts among the waiters gone.
        self.receiver.close();
        let mut waiters = self.ends.waiters();
        if let Some(senders) = waiters.get_mut(&self.id) {
            senders.retain(|sender| !sender.is_closed());
            if senders.is_empty() {
                waiters.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiter_hears_its_own_job_only_and_leaves_nothing_behind() {
        let ends = Ends::default();
        let mut mine = ends.watch("a");
        let other = ends.watch("b");
        ends.announce("b", End::ReadAgain);
        drop(other);
        ends.announce("c", End::ReadAgain);
        let waited = tokio::time::timeout(std::time::Duration::from_millis(20), mine.ended()).await;
        assert!(waited.is_err(), "another job's end is not this one's");
        let both = ends.watch("a");
        ends.announce("a", End::NotRecorded);
        assert!(matches!(mine.ended().await, End::NotRecorded));
        drop((mine, both));
        assert_eq!(ends.watched(), 0);
        let gone = ends.watch("d");
        drop(gone);
        assert_eq!(ends.watched(), 0, "a waiter that stops waiting is removed");
    }
}
