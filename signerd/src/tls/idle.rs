//! Idle connections: which connections have a request in flight, and since when one has had
//! none.
//!
//! Every request passes [`TrackRequests`], a tower layer in front of all services: it counts
//! the request on its connection's [`ConnActivity`] until the response body is finished or
//! dropped (a `WatchSignRequest` stream is in flight for as long as it lasts). The connection
//! itself ([`super::TlsConn`]) holds an [`IdleTimer`] and ends once it has had no request in
//! flight for `server.idle_timeout`. HTTP/2 PINGs and other frames do not count: only
//! requests keep a connection open. This module never ends a request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The requests of one connection.
#[derive(Debug)]
pub struct ConnActivity {
    /// When the connection was handed to the HTTP/2 server.
    opened: Instant,
    /// Requests in flight.
    in_flight: AtomicUsize,
    /// Milliseconds after `opened` when the last request ended (0: none yet).
    idle_since_ms: AtomicU64,
}

impl ConnActivity {
    /// A connection opened now, with no request yet.
    pub fn new() -> Arc<ConnActivity> {
        Arc::new(ConnActivity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        })
    }

    /// Counts a request until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// When the connection became idle, or `None` while a request is in flight.
    fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let ms = self.idle_since_ms.load(Ordering::Acquire);
        Some(self.opened + Duration::from_millis(ms))
    }
}

/// One request in flight on a connection.
#[derive(Debug)]
pub struct InFlight(Arc<ConnActivity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        // The end time is stored before the count drops, so that a reader that sees no request
        // in flight also sees when the last one ended.
        let ms = u64::try_from(a.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        a.idle_since_ms.fetch_max(ms, Ordering::AcqRel);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Tells a connection when it has been idle for its timeout.
#[derive(Debug)]
pub struct IdleTimer {
    activity: Arc<ConnActivity>,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl IdleTimer {
    /// A timer for `activity` that expires after `timeout` with no request in flight.
    pub fn new(activity: Arc<ConnActivity>, timeout: Duration) -> IdleTimer {
        let sleep = Box::pin(tokio::time::sleep(timeout));
        IdleTimer {
            activity,
            timeout,
            sleep,
        }
    }

    /// Ready once the connection has had no request in flight for the timeout. The timer is
    /// only re-armed when it fires, so a busy connection pays nothing per read.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let next = match self.activity.idle_since() {
                Some(since) if since.elapsed() >= self.timeout => return Poll::Ready(()),
                Some(since) => since + self.timeout,
                None => Instant::now() + self.timeout,
            };
            self.sleep.as_mut().reset(next);
        }
    }
}

/// The tower layer that counts requests on their connections.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrackRequests;

impl<S> tower_layer::Layer<S> for TrackRequests {
    type Service = Tracked<S>;
    fn layer(&self, inner: S) -> Tracked<S> {
        Tracked { inner }
    }
}

/// A service whose requests are counted on their connections.
#[derive(Debug, Clone)]
pub struct Tracked<S> {
    inner: S,
}

impl<S, B, R> tonic::codegen::Service<http::Request<B>> for Tracked<S>
where
    S: tonic::codegen::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<TrackedBody<R>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let guard = req
            .extensions()
            .get::<super::ConnInfo>()
            .map(|info| info.activity.begin());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|body| TrackedBody {
                inner: body,
                _guard: guard,
            }))
        })
    }
}

/// A response body that keeps its request counted until it is finished or dropped.
#[derive(Debug)]
pub struct TrackedBody<B> {
    inner: B,
    _guard: Option<InFlight>,
}

impl<B> http_body::Body for TrackedBody<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            // The body is finished: the request is no longer in flight.
            self._guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expired(t: &mut IdleTimer) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        t.poll_expired(&mut cx).is_ready()
    }

    #[tokio::test]
    async fn the_timer_counts_only_time_without_a_request_in_flight() {
        let ms = Duration::from_millis;
        let activity = ConnActivity::new();
        let mut timer = IdleTimer::new(activity.clone(), ms(1_000));
        let request = activity.begin();
        tokio::time::sleep(ms(1_300)).await;
        // A request in flight for longer than the timeout keeps the connection.
        assert!(!expired(&mut timer));
        drop(request);
        tokio::time::sleep(ms(300)).await;
        assert!(!expired(&mut timer), "idle for 300 ms of 1 s");
        tokio::time::sleep(ms(900)).await;
        assert!(expired(&mut timer));
    }

    #[tokio::test]
    async fn a_connection_without_requests_expires_after_the_timeout() {
        let ms = Duration::from_millis;
        let mut timer = IdleTimer::new(ConnActivity::new(), ms(500));
        assert!(!expired(&mut timer));
        tokio::time::sleep(ms(600)).await;
        assert!(expired(&mut timer));
    }
}
