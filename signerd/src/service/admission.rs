//! Admission of signing work: at most `max_in_flight` signing requests do their work (policy
//! evaluation, reservation, the key backend, the audit commit) at once, and a request that
//! cannot start within `queue_timeout` is shed: refused at once with RESOURCE_EXHAUSTED,
//! before anything is evaluated, reserved, signed, recorded or stored, so that a retry of the
//! same `request_id` is a fresh try.
//!
//! Without this gate the only bound on the queue is the clients' patience: under overload
//! every request waits behind every other and the tail latency grows with the number of
//! clients. With it, accepted requests wait at most `queue_timeout` before their work starts
//! and the rest learn at once that they should back off.
//!
//! A shed request writes no audit record (one record per shed request would let any client
//! flood the log exactly when the daemon is busiest): it is counted in
//! `signerd_requests_shed_total{method}` and summed in at most one log line per second. Only
//! signing calls pass this gate; approvals, administration and health never wait behind it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ServiceError;
use crate::request::Method;

/// How much signing work runs at once, and how long a request may wait for its turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Most signing requests doing their work at once.
    pub max_in_flight: usize,
    /// Longest a request waits for its turn before it is shed.
    pub queue_timeout: Duration,
}

impl Admission {
    /// The defaults of a daemon configured without `[server] max_in_flight` and
    /// `queue_timeout` (see `docs/configuration.md`).
    pub const DEFAULT: Admission = Admission {
        max_in_flight: 64,
        queue_timeout: Duration::from_millis(250),
    };
}

/// Shortest interval between two log lines about shed requests.
const SHED_LOG_EVERY: Duration = Duration::from_secs(1);

/// The gate every signing request passes before its work starts.
pub(super) struct Gate {
    permits: Arc<Semaphore>,
    admission: Admission,
    /// Shed requests not yet reported in the log.
    unreported: AtomicU64,
    /// When the last log line about shed requests was written, in milliseconds since `epoch`
    /// (0: never).
    last_report_ms: AtomicU64,
    epoch: Instant,
}

impl Gate {
    pub(super) fn new(admission: Admission) -> Gate {
        Gate {
            permits: Arc::new(Semaphore::new(admission.max_in_flight)),
            admission,
            unreported: AtomicU64::new(0),
            last_report_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// The settings the gate was built with.
    pub(super) fn admission(&self) -> Admission {
        self.admission
    }

    /// Waits up to `queue_timeout` for a turn. The permit is the turn: the work holds it until
    /// it ends, on every path (it is released when dropped).
    pub(super) async fn enter(&self, method: Method) -> Result<OwnedSemaphorePermit, ServiceError> {
        // The common case, a free turn, costs no timer.
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                self.report_pending();
                return Ok(permit);
            }
            Err(tokio::sync::TryAcquireError::Closed) => return Err(closed()),
            Err(tokio::sync::TryAcquireError::NoPermits) => {}
        }
        let waited = tokio::time::timeout(
            self.admission.queue_timeout,
            self.permits.clone().acquire_owned(),
        )
        .await;
        match waited {
            Ok(Ok(permit)) => {
                self.report_pending();
                Ok(permit)
            }
            Ok(Err(_)) => Err(closed()),
            Err(_) => {
                self.shed(method);
                Err(ServiceError::ResourceExhausted(format!(
                    "signerd is overloaded: the request waited {} ms for one of the {} signing \
                     slots; nothing was signed, recorded or stored; retry the same request with \
                     exponential backoff and jitter",
                    self.admission.queue_timeout.as_millis(),
                    self.admission.max_in_flight
                )))
            }
        }
    }

    /// Counts a shed request, and logs the count at most once per [`SHED_LOG_EVERY`].
    fn shed(&self, method: Method) {
        crate::metrics::shed(method.as_str());
        self.unreported.fetch_add(1, Ordering::Relaxed);
        self.report();
    }

    /// Logs the shed requests not yet reported once the load is gone (by the next admitted
    /// request), so that the end of a burst reaches the log too.
    fn report_pending(&self) {
        if self.unreported.load(Ordering::Relaxed) != 0 {
            self.report();
        }
    }

    /// Logs how many requests were shed since the last line, unless a line was written less
    /// than [`SHED_LOG_EVERY`] ago.
    fn report(&self) {
        // Milliseconds since `epoch`, plus one so that 0 keeps meaning "never".
        let now = u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let last = self.last_report_ms.load(Ordering::Relaxed);
        let every = u64::try_from(SHED_LOG_EVERY.as_millis()).unwrap_or(u64::MAX);
        if last != 0 && now.saturating_sub(last) < every {
            return;
        }
        // One caller wins the turn to report; the others' counts wait for the next line.
        if self
            .last_report_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let shed = self.unreported.swap(0, Ordering::Relaxed);
        if shed == 0 {
            return;
        }
        tracing::warn!(
            shed,
            max_in_flight = self.admission.max_in_flight,
            queue_timeout_ms =
                u64::try_from(self.admission.queue_timeout.as_millis()).unwrap_or(u64::MAX),
            "overloaded: signing requests shed (RESOURCE_EXHAUSTED) since the last report"
        );
    }
}

fn closed() -> ServiceError {
    ServiceError::Unavailable("signerd is shutting down; nothing was signed".into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_full_gate_sheds_after_the_timeout_and_a_freed_turn_admits() {
        let gate = Gate::new(Admission {
            max_in_flight: 2,
            queue_timeout: Duration::from_millis(100),
        });
        let a = gate.enter(Method::SignDigest).await.unwrap();
        let b = gate.enter(Method::SignDigest).await.unwrap();
        let t = Instant::now();
        let e = gate.enter(Method::SignDigest).await.unwrap_err();
        let took = t.elapsed();
        assert!(matches!(e, ServiceError::ResourceExhausted(_)), "{e}");
        assert!(took >= Duration::from_millis(100), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert!(e.to_string().contains("overloaded"), "{e}");
        // A turn freed while a request waits is its turn.
        let waiting = gate.enter(Method::SignDigest);
        let release = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(a);
        };
        let (got, ()) = tokio::join!(waiting, release);
        let c = got.unwrap();
        // Dropping the permits gives the turns back.
        drop((b, c));
        let _turns = (
            gate.enter(Method::SignDigest).await.unwrap(),
            gate.enter(Method::SignDigest).await.unwrap(),
        );
    }
}
