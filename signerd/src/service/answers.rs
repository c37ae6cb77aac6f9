//! Which answers are in the state store: the watermark a snapshot of the audit log waits for.
//!
//! An answer (the stored outcome of a request, replayed to retries) is put in the state store
//! after its `sign.result` record is durable. Between the two, the log holds an answer the
//! store does not. Start-up restores such answers from the log, from the position through
//! which the store says it holds them all (`LogBinding::answers_complete`); this module tells
//! the snapshot builder when it may advance that position. It must never say that every
//! answer below a position is stored while one may still be missing: an answer whose storing
//! failed, or whose outcome is unknown, stops the watermark for the rest of the run.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Answers on their way from the audit log to the state store.
#[derive(Debug, Default)]
pub struct AnswerWatermark {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    /// For each answer in flight: the lowest `seq` its `sign.result` can have.
    open: BTreeMap<u64, u64>,
    /// An answer was given up without being stored: no position is complete any more.
    broken: bool,
}

/// One answer in flight; dropping it without [`InFlight::stored`] or
/// [`InFlight::not_written`] stops the watermark (fail closed).
#[derive(Debug)]
#[must_use = "dropping it at once stops the watermark"]
pub struct InFlight {
    owner: Arc<AnswerWatermark>,
    id: u64,
    ended: bool,
}

impl AnswerWatermark {
    /// Announces an answer whose `sign.result` is about to be queued; `durable_records` is
    /// the log's durable record count now, which its `seq` cannot be below.
    pub fn begin(self: &Arc<Self>, durable_records: u64) -> InFlight {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let id = inner.next_id;
        inner.next_id += 1;
        inner.open.insert(id, durable_records);
        InFlight {
            owner: Arc::clone(self),
            id,
            ended: false,
        }
    }

    /// Whether every answer whose `sign.result` has a `seq` below `position` is in the store
    /// (not necessarily flushed): `None` once an answer was lost for this run.
    pub fn complete_through(&self, position: u64) -> Option<bool> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.broken {
            return None;
        }
        Some(inner.open.values().all(|&lowest| lowest >= position))
    }

    fn end(&self, id: u64, broken: bool) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.open.remove(&id);
        inner.broken |= broken;
    }

    fn at(&self, id: u64, seq: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lowest) = inner.open.get_mut(&id) {
            *lowest = seq;
        }
    }
}

impl InFlight {
    /// The `sign.result` landed at `seq`.
    pub fn at(&self, seq: u64) {
        self.owner.at(self.id, seq);
    }

    /// The answer is in the store.
    pub fn stored(mut self) {
        self.ended = true;
        self.owner.end(self.id, false);
    }

    /// The `sign.result` was not written (the log refused it before it was queued).
    pub fn not_written(mut self) {
        self.ended = true;
        self.owner.end(self.id, false);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.ended {
            self.owner.end(self.id, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_is_complete_once_every_answer_below_it_is_stored() {
        let w = Arc::new(AnswerWatermark::default());
        assert_eq!(w.complete_through(100), Some(true));
        let a = w.begin(10);
        assert_eq!(w.complete_through(10), Some(true));
        assert_eq!(w.complete_through(11), Some(false));
        a.at(50);
        assert_eq!(w.complete_through(50), Some(true));
        assert_eq!(w.complete_through(51), Some(false));
        let b = w.begin(60);
        a.stored();
        assert_eq!(w.complete_through(60), Some(true));
        assert_eq!(w.complete_through(61), Some(false));
        b.not_written();
        assert_eq!(w.complete_through(1000), Some(true));
    }

    #[test]
    fn an_answer_given_up_stops_the_watermark() {
        let w = Arc::new(AnswerWatermark::default());
        drop(w.begin(10));
        assert_eq!(w.complete_through(0), None);
        assert_eq!(w.complete_through(1000), None);
    }
}
