//! Bearer-token authentication as a tower layer over the whole router, so every service on
//! the port (ours, and any added later) is covered; only the services in [`OPEN_SERVICES`]
//! answer without a token, so that probes need no secret.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::codegen::http;
use tonic::Status;

/// gRPC services reachable without a token: health, for Kubernetes and load-balancer probes.
pub const OPEN_SERVICES: &[&str] = &["grpc.health.v1.Health"];

/// The bearer-token check, shared by the gRPC layer and the HTTP API.
#[derive(Clone, Default)]
pub struct TokenCheck {
    /// SHA-256 of the token: comparing fixed-length digests in constant time reveals neither
    /// the token's bytes nor its length through timing.
    digest: Option<Arc<[u8; 32]>>,
}

impl TokenCheck {
    /// Requires `authorization: Bearer <token>` with a token; passes everything without one.
    pub fn new(token: Option<&str>) -> Self {
        Self {
            digest: token.map(|t| Arc::new(Sha256::digest(t.as_bytes()).into())),
        }
    }

    /// Whether a request with these headers may pass; if not, why.
    pub fn check(&self, headers: &http::HeaderMap) -> Result<(), &'static str> {
        let Some(expected) = self.digest.as_ref() else {
            return Ok(());
        };
        let Some(header) = headers.get(http::header::AUTHORIZATION) else {
            return Err("this server needs a bearer token: send `authorization: Bearer <token>`");
        };
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        let Some(token) = token else {
            return Err("the authorization header must read `Bearer <token>`");
        };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if bool::from(digest.ct_eq(expected.as_ref())) {
            Ok(())
        } else {
            Err("the bearer token is not valid")
        }
    }
}

/// The [`TokenCheck`] as a tower layer for the gRPC router.
#[derive(Clone)]
pub struct AuthLayer {
    check: TokenCheck,
}

impl AuthLayer {
    pub fn new(check: TokenCheck) -> Self {
        Self { check }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            check: self.check.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    check: TokenCheck,
}

impl<S> Auth<S> {
    /// Why `request` may not pass, or `None` when it may.
    fn refusal<B>(&self, request: &http::Request<B>) -> Option<Status> {
        let service = request.uri().path().trim_start_matches('/');
        let service = service.split('/').next().unwrap_or_default();
        if OPEN_SERVICES.contains(&service) {
            return None;
        }
        self.check
            .check(request.headers())
            .err()
            .map(Status::unauthenticated)
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match self.refusal(&request) {
            None => Box::pin(self.inner.call(request)),
            Some(status) => {
                tracing::debug!(path = %request.uri().path(), reason = status.message(), "unauthenticated call refused");
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}
