//! `http_request_duration_seconds` as a tower layer, one per route.
//!
//! Each route gets its own layer carrying its path as a static label, so the route label is the route
//! template (never the raw path) without extracting `MatchedPath`, and nothing is boxed per request:
//! `axum::middleware::from_fn` cost about 2 µs of CPU per request here, 15% of a probe's total.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::Request;
use axum::http::Method;
use axum::response::Response;
use pin_project_lite::pin_project;
use prometheus::HistogramVec;
use tower::{Layer, Service};

/// Records the duration of every request to one route, labelled `method`, `route`, `status_code`.
#[derive(Debug, Clone)]
pub struct RecordDurationLayer {
    histogram: HistogramVec,
    route: &'static str,
}

impl RecordDurationLayer {
    /// A layer for the route registered as `route`.
    pub fn new(histogram: HistogramVec, route: &'static str) -> Self {
        Self { histogram, route }
    }
}

impl<S> Layer<S> for RecordDurationLayer {
    type Service = RecordDuration<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RecordDuration {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`RecordDurationLayer`] wraps a route in.
#[derive(Debug, Clone)]
pub struct RecordDuration<S> {
    inner: S,
    layer: RecordDurationLayer,
}

impl<S> Service<Request> for RecordDuration<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = RecordDurationFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        RecordDurationFuture {
            started: Instant::now(),
            method: method_label(request.method()),
            layer: self.layer.clone(),
            inner: self.inner.call(request),
        }
    }
}

/// The `method` label: the standard methods by name, anything else as `other`, so that clients inventing
/// methods (each answered 405 or 404) cannot add series without bound.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

pin_project! {
    /// Completes with the route's response after observing its duration.
    pub struct RecordDurationFuture<F> {
        #[pin]
        inner: F,
        started: Instant,
        method: &'static str,
        layer: RecordDurationLayer,
    }
}

impl<F, E> Future for RecordDurationFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            this.layer
                .histogram
                .with_label_values(&[*this.method, this.layer.route, response.status().as_str()])
                .observe(this.started.elapsed().as_secs_f64());
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invented_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        for invented in ["PURGE", "BREW", "X-ANYTHING"] {
            let method = Method::from_bytes(invented.as_bytes()).unwrap();
            assert_eq!(method_label(&method), "other", "{invented}");
        }
    }
}
