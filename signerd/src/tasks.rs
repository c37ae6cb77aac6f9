//! The daemon's background tasks: every one is spawned here, tracked, told to stop on
//! shutdown, and waited for (within a bound) before the audit log writes its last records.
//!
//! A task spawned here must end soon after [`Background::cancel`]: a loop selects on
//! [`Background::cancelled`], and work that must not be cut short (signing an approved
//! request) is bounded in time. Nothing here may abort a task that is writing to the audit
//! log or the state store.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long shutdown waits for background tasks before closing the audit log regardless.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// The tracker and the stop signal of the daemon's background tasks. Clones share both.
#[derive(Debug, Clone, Default)]
pub struct Background {
    tracker: TaskTracker,
    cancel: CancellationToken,
    /// The tasks still running, by spawn number, so that shutdown can name the ones that
    /// did not end.
    running: Arc<Mutex<Running>>,
}

#[derive(Debug, Default)]
struct Running {
    next: u64,
    names: BTreeMap<u64, &'static str>,
}

/// Removes a task from [`Running`] when its future ends or is dropped.
struct Registered {
    running: Arc<Mutex<Running>>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .names
            .remove(&self.id);
    }
}

impl Background {
    /// No tasks yet, not cancelled.
    pub fn new() -> Background {
        Background::default()
    }

    /// Spawns `task` on the current runtime, tracked under `name`.
    pub fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let registered = {
            let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
            let id = running.next;
            running.next += 1;
            running.names.insert(id, name);
            Registered {
                running: self.running.clone(),
                id,
            }
        };
        self.tracker.spawn(async move {
            let _registered = registered;
            task.await;
        });
    }

    /// Resolves once shutdown has begun; loops select on it to end.
    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    /// An owned form of [`Background::cancelled`], for a task that cannot borrow.
    pub fn cancelled_owned(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.cancel.clone().cancelled_owned()
    }

    /// A stop signal of one task's own, which shutdown also sends: for a task owned by an
    /// object that stops it when dropped (a key backend's monitor).
    pub fn child(&self) -> CancellationToken {
        self.cancel.child_token()
    }

    /// Whether shutdown has begun.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Tells every task to stop.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// The names of the tasks still running (one entry per task).
    pub fn running(&self) -> Vec<&'static str> {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .names
            .values()
            .copied()
            .collect()
    }

    /// Cancels every task and waits up to `limit` for all of them to end. Returns the names
    /// of those still running after `limit` (empty when all ended), each logged.
    pub async fn shutdown(&self, limit: Duration) -> Vec<&'static str> {
        self.cancel();
        self.tracker.close();
        if tokio::time::timeout(limit, self.tracker.wait())
            .await
            .is_ok()
        {
            tracing::debug!("background tasks ended");
            return Vec::new();
        }
        let left = self.running();
        for name in &left {
            tracing::error!(task = name, ?limit, "background task did not end in time");
        }
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cancelled_tasks_end_and_unending_ones_are_named() {
        let bg = Background::new();
        for _ in 0..3 {
            let b = bg.clone();
            bg.spawn("loop", async move {
                loop {
                    tokio::select! {
                        () = b.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(5)) => {}
                    }
                }
            });
        }
        assert_eq!(bg.running().len(), 3);
        assert!(bg.shutdown(Duration::from_secs(5)).await.is_empty());
        assert!(bg.running().is_empty());

        let bg = Background::new();
        bg.spawn("stubborn", std::future::pending());
        bg.spawn("polite", bg.cancelled_owned());
        assert_eq!(bg.shutdown(Duration::from_millis(50)).await, ["stubborn"]);
    }
}
