//! The metrics server: the operator's `/metrics` over HTTPS on a port of its own, readable only
//! with a bearer token whose user may `get` the non-resource URL `/metrics` (the `metrics-reader`
//! ClusterRole), as kubebuilder serves it. The probes stay on the plain admin server.

pub mod auth;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::time::{sleep, timeout};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use self::auth::{Decision, METRICS_PATH, MetricsAuth};
use crate::error::{Error, Result};
use crate::telemetry::metrics::Metrics;

/// A client that has not finished its TLS handshake, or its request's headers, by then is
/// dropped: a slow client must not hold a connection for ever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bind the metrics address; done at start so a taken port fails at once.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::MetricsServer { addr, source })
}

/// `/metrics`, behind [`MetricsAuth`]; every other path is 404.
pub fn app(metrics: Metrics, auth: MetricsAuth) -> Router {
    Router::new()
        .route(METRICS_PATH, get(render))
        .route_layer(middleware::from_fn_with_state(auth, require_reader))
        .with_state(metrics)
}

async fn render(State(metrics): State<Metrics>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        metrics.render(),
    )
}

async fn require_reader(State(auth): State<MetricsAuth>, request: Request, next: Next) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    match auth.decide(authorization).await {
        Ok(Decision::Allowed) => next.run(request).await,
        Ok(Decision::Unauthenticated) => (
            StatusCode::UNAUTHORIZED,
            "Unauthorized: send a bearer token the API server accepts\n",
        )
            .into_response(),
        Ok(Decision::Forbidden) => (
            StatusCode::FORBIDDEN,
            "Forbidden: the token's user may not get /metrics (bind it to the metrics-reader ClusterRole)\n",
        )
            .into_response(),
        Ok(Decision::Busy) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "too many token reviews under way; try again\n",
        )
            .into_response(),
        Err(error) => {
            warn!(%error, "reviewing a metrics request with the API server failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the API server could not review the token\n",
            )
                .into_response()
        }
    }
}

/// Serve `app` over TLS on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(error) => {
                    // E.g. out of file descriptors: wait instead of spinning.
                    warn!(%error, "accepting a metrics connection failed");
                    sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let stream = match timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => return debug!(%error, "metrics TLS handshake failed"),
                Err(_) => return debug!("metrics TLS handshake timed out"),
            };
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
                .await;
            if let Err(error) = served {
                debug!(%error, "metrics connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;

    use super::*;
    use crate::process::admin::tests::respond;

    async fn get_metrics(authorization: Option<&str>) -> (StatusCode, String) {
        let metrics = Metrics::new();
        metrics.reconciled(Duration::from_millis(3), Duration::ZERO);
        let auth = MetricsAuth::new(auth::tests::api_server(Arc::default()));
        let mut request = axum::http::Request::get(METRICS_PATH);
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        respond(app(metrics, auth), request.body(Body::empty()).unwrap()).await
    }

    #[tokio::test]
    async fn metrics_need_a_token_whose_user_may_read_them() {
        assert_eq!(get_metrics(None).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(
            get_metrics(Some("Bearer forged")).await.0,
            StatusCode::UNAUTHORIZED
        );
        let (status, body) = get_metrics(Some("Bearer stranger")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(body.contains("metrics-reader"), "{body}");
        let (status, body) = get_metrics(Some("Bearer reader")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains("sandbox_operator_reconciliations_total 1"),
            "{body}"
        );
    }
}
