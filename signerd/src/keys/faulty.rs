//! A key backend that fails on demand, for tests of the signing pipeline in process: it wraps
//! a real backend and, while told to, answers every signature with a chosen error, a signature
//! of the wrong kind, or a wait, counting the signatures that did reach the real backend.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::{KeyBackend, KeyError, KeyHandle, KeyInfo, Payload, RawSignature};

/// What the next signatures do.
#[derive(Debug, Clone)]
pub(crate) enum Fault {
    /// Pass to the real backend.
    None,
    /// Fail with this error, without reaching the real backend.
    Fail(KeyError),
    /// Return an Ed25519 signature for every request (the wrong kind for ECDSA keys).
    WrongKind,
    /// Wait this long, then pass to the real backend.
    Delay(Duration),
}

/// [`KeyBackend`] over a real one, failing as told.
pub(crate) struct FaultyBackend {
    inner: Arc<dyn KeyBackend>,
    state: Arc<State>,
}

struct State {
    fault: Mutex<Fault>,
    signed: AtomicUsize,
}

impl FaultyBackend {
    pub(crate) fn new(inner: Arc<dyn KeyBackend>) -> FaultyBackend {
        FaultyBackend {
            inner,
            state: Arc::new(State {
                fault: Mutex::new(Fault::None),
                signed: AtomicUsize::new(0),
            }),
        }
    }

    /// From now on, signatures do `fault`.
    pub(crate) fn set(&self, fault: Fault) {
        *self.state.fault.lock().unwrap_or_else(|p| p.into_inner()) = fault;
    }

    /// How many signatures the real backend made.
    pub(crate) fn signed(&self) -> usize {
        self.state.signed.load(Ordering::SeqCst)
    }
}

/// A real key's handle behind the backend's faults.
struct FaultyHandle {
    inner: Arc<dyn KeyHandle>,
    state: Arc<State>,
}

#[async_trait]
impl KeyHandle for FaultyHandle {
    fn info(&self) -> &KeyInfo {
        self.inner.info()
    }

    fn protection(&self) -> &super::Protection {
        self.inner.protection()
    }

    async fn sign(&self, payload: Payload<'_>) -> Result<RawSignature, KeyError> {
        let fault = self
            .state
            .fault
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match fault {
            Fault::None => {}
            Fault::Fail(e) => return Err(e),
            Fault::WrongKind => return Ok(RawSignature::Ed25519([7; 64])),
            Fault::Delay(d) => tokio::time::sleep(d).await,
        }
        let sig = self.inner.sign(payload).await?;
        self.state.signed.fetch_add(1, Ordering::SeqCst);
        Ok(sig)
    }
}

#[async_trait]
impl KeyBackend for FaultyBackend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn keys(&self) -> Vec<KeyInfo> {
        self.inner.keys()
    }
    fn key(&self, id: &str) -> Option<KeyInfo> {
        self.inner.key(id)
    }
    fn handle(&self, id: &str) -> Option<Arc<dyn KeyHandle>> {
        Some(Arc::new(FaultyHandle {
            inner: self.inner.handle(id)?,
            state: self.state.clone(),
        }))
    }
}
