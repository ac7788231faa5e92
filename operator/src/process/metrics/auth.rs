//! Who may read the operator's metrics, as kubebuilder's metrics filter decides it: the API
//! server checks each request's bearer token (a TokenReview), then whether the user it names may
//! `get` the non-resource URL `/metrics` (a SubjectAccessReview). Decisions are cached briefly,
//! so a scrape every 15 s costs the API server two reviews a minute per token, not per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use kube::{Client, api::ObjectMeta};
use tokio::time::{Instant, timeout};

/// The URL and verb a reader must be allowed, as kubebuilder's `metrics-reader` role grants.
pub const METRICS_PATH: &str = "/metrics";

/// How long an allowed token stays allowed without asking again (controller-runtime: 1 min).
const ALLOWED_TTL: Duration = Duration::from_secs(60);

/// How long a refused token stays refused: short, so a new grant takes effect soon.
const DENIED_TTL: Duration = Duration::from_secs(10);

/// Tokens remembered at most; past this, expired entries go, and then all of them.
const MAX_CACHED: usize = 1024;

/// A review the API server does not answer within this fails the request (500), uncached.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// Reviews under way at most: past this a request with an unknown token is turned away (503),
/// so a flood of made-up tokens cannot flood the API server in the operator's name (its Lease
/// renewals share the client and the identity).
const MAX_REVIEWS_IN_FLIGHT: usize = 4;

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The token is valid and its user may read the metrics.
    Allowed,
    /// No bearer token, or one the API server does not accept: 401.
    Unauthenticated,
    /// A valid token whose user may not read the metrics: 403.
    Forbidden,
    /// Not reviewed: too many reviews are under way (503, try again).
    Busy,
}

/// Reviews bearer tokens with the API server, and remembers its answers for a while.
#[derive(Clone)]
pub struct MetricsAuth {
    client: Client,
    cache: Arc<Mutex<HashMap<String, (Decision, Instant)>>>,
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl MetricsAuth {
    /// Reviews with `client`, whose identity needs `create` on `tokenreviews` and
    /// `subjectaccessreviews`.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            cache: Arc::default(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_REVIEWS_IN_FLIGHT)),
        }
    }

    /// The decision for a request whose `Authorization` header is `authorization`.
    ///
    /// # Errors
    /// When the API server fails or does not answer a review in time; nothing is cached then.
    pub async fn decide(&self, authorization: Option<&str>) -> Result<Decision, kube::Error> {
        let Some(token) = authorization.and_then(bearer_token) else {
            return Ok(Decision::Unauthenticated);
        };
        if let Some(decision) = self.cached(token) {
            return Ok(decision);
        }
        let Ok(_permit) = self.in_flight.try_acquire() else {
            return Ok(Decision::Busy);
        };
        let decision = timeout(REVIEW_TIMEOUT, self.review(token))
            .await
            .map_err(|_| timed_out())??;
        self.remember(token, decision);
        Ok(decision)
    }

    fn cached(&self, token: &str) -> Option<Decision> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(token)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(decision, _)| *decision)
    }

    fn remember(&self, token: &str, decision: Decision) {
        let ttl = if decision == Decision::Allowed {
            ALLOWED_TTL
        } else {
            DENIED_TTL
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        // Full: the expired go first, then the refusals (made-up tokens must not push out
        // the scrapers' allowed ones), and only then everything.
        if cache.len() >= MAX_CACHED {
            let now = Instant::now();
            cache.retain(|_, (_, until)| now < *until);
        }
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, (decision, _)| *decision == Decision::Allowed);
        }
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(token.to_owned(), (decision, Instant::now() + ttl));
    }

    async fn review(&self, token: &str) -> Result<Decision, kube::Error> {
        let review = TokenReview {
            metadata: ObjectMeta::default(),
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: None,
            },
            status: None,
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let status = reviewed.status.unwrap_or_default();
        let Some(user) = status.user.filter(|_| status.authenticated == Some(true)) else {
            return Ok(Decision::Unauthenticated);
        };
        let access = SubjectAccessReview {
            metadata: ObjectMeta::default(),
            spec: SubjectAccessReviewSpec {
                user: user.username,
                uid: user.uid,
                groups: user.groups,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(METRICS_PATH.to_owned()),
                    verb: Some("get".to_owned()),
                }),
                ..SubjectAccessReviewSpec::default()
            },
            status: None,
        };
        let answered = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &access)
            .await?;
        let allowed = answered.status.is_some_and(|status| status.allowed);
        Ok(if allowed {
            Decision::Allowed
        } else {
            Decision::Forbidden
        })
    }
}

/// The token of an `Authorization: Bearer TOKEN` header (the scheme in any case).
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn timed_out() -> kube::Error {
    kube::Error::Service(Box::new(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("the API server did not answer a review within {REVIEW_TIMEOUT:?}"),
    )))
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use kube::client::Body;
    use serde_json::{Value, json};

    use super::*;

    /// An API server that knows two tokens: `reader` (allowed) and `stranger` (not allowed);
    /// every other token is invalid. Counts the reviews it answers.
    pub(in crate::process::metrics) fn api_server(reviews: Arc<AtomicUsize>) -> Client {
        let service = tower::service_fn(move |request: http::Request<Body>| {
            let reviews = reviews.clone();
            async move {
                reviews.fetch_add(1, Ordering::SeqCst);
                let path = request.uri().path().to_owned();
                let body: Value =
                    serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap())
                        .unwrap();
                let answer = if path.ends_with("/tokenreviews") {
                    let user = match body["spec"]["token"].as_str() {
                        Some("reader") => Some("system:serviceaccount:monitoring:prometheus"),
                        Some("stranger") => Some("system:serviceaccount:default:default"),
                        _ => None,
                    };
                    json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                           "spec": body["spec"],
                           "status": {"authenticated": user.is_some(),
                                      "user": user.map(|u| json!({"username": u, "groups": ["system:authenticated"]}))}})
                } else {
                    assert_eq!(body["spec"]["nonResourceAttributes"]["path"], "/metrics");
                    assert_eq!(body["spec"]["nonResourceAttributes"]["verb"], "get");
                    let allowed =
                        body["spec"]["user"] == "system:serviceaccount:monitoring:prometheus";
                    json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                           "spec": body["spec"], "status": {"allowed": allowed}})
                };
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder()
                        .status(201)
                        .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                        .unwrap(),
                )
            }
        });
        Client::new(service, "default")
    }

    #[tokio::test]
    async fn a_token_is_allowed_refused_or_unknown_as_the_api_server_says() {
        let auth = MetricsAuth::new(api_server(Arc::default()));
        let decide = |header: Option<&'static str>| {
            let auth = auth.clone();
            async move { auth.decide(header).await.unwrap() }
        };
        assert_eq!(decide(None).await, Decision::Unauthenticated);
        assert_eq!(
            decide(Some("Basic cmVhZGVy")).await,
            Decision::Unauthenticated
        );
        assert_eq!(decide(Some("Bearer ")).await, Decision::Unauthenticated);
        assert_eq!(
            decide(Some("Bearer forged")).await,
            Decision::Unauthenticated
        );
        assert_eq!(decide(Some("Bearer stranger")).await, Decision::Forbidden);
        assert_eq!(decide(Some("Bearer reader")).await, Decision::Allowed);
        assert_eq!(decide(Some("bearer reader")).await, Decision::Allowed);
    }

    #[tokio::test(start_paused = true)]
    async fn decisions_are_cached_for_their_ttl() {
        let reviews = Arc::new(AtomicUsize::new(0));
        let auth = MetricsAuth::new(api_server(reviews.clone()));
        let reviewed = || reviews.load(Ordering::SeqCst);

        assert_eq!(
            auth.decide(Some("Bearer reader")).await.unwrap(),
            Decision::Allowed
        );
        assert_eq!(reviewed(), 2, "a TokenReview and a SubjectAccessReview");
        tokio::time::advance(ALLOWED_TTL - Duration::from_secs(1)).await;
        auth.decide(Some("Bearer reader")).await.unwrap();
        assert_eq!(reviewed(), 2, "cached while the TTL runs");
        tokio::time::advance(Duration::from_secs(2)).await;
        auth.decide(Some("Bearer reader")).await.unwrap();
        assert_eq!(reviewed(), 4, "asked again once it ran out");

        // A refusal is remembered for a shorter time, so a new grant takes effect soon.
        assert_eq!(
            auth.decide(Some("Bearer forged")).await.unwrap(),
            Decision::Unauthenticated
        );
        assert_eq!(
            reviewed(),
            5,
            "an invalid token needs no SubjectAccessReview"
        );
        auth.decide(Some("Bearer forged")).await.unwrap();
        assert_eq!(reviewed(), 5);
        tokio::time::advance(DENIED_TTL + Duration::from_secs(1)).await;
        auth.decide(Some("Bearer forged")).await.unwrap();
        assert_eq!(reviewed(), 6);
    }

    #[tokio::test]
    async fn the_cache_stays_bounded_and_keeps_allowed_tokens_over_refused_ones() {
        let auth = MetricsAuth::new(api_server(Arc::default()));
        auth.remember("reader", Decision::Allowed);
        for n in 0..MAX_CACHED + 10 {
            auth.remember(&format!("made-up-{n}"), Decision::Unauthenticated);
        }
        assert!(auth.cache.lock().unwrap().len() <= MAX_CACHED);
        assert_eq!(auth.cached("reader"), Some(Decision::Allowed));
    }

    #[tokio::test]
    async fn past_the_reviews_in_flight_an_unknown_token_is_turned_away() {
        let auth = MetricsAuth::new(api_server(Arc::default()));
        let held: Vec<_> = (0..MAX_REVIEWS_IN_FLIGHT)
            .map(|_| auth.in_flight.clone().try_acquire_owned().unwrap())
            .collect();
        assert_eq!(
            auth.decide(Some("Bearer reader")).await.unwrap(),
            Decision::Busy
        );
        drop(held);
        assert_eq!(
            auth.decide(Some("Bearer reader")).await.unwrap(),
            Decision::Allowed
        );
    }
}
