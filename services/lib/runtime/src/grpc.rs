//! The one gRPC server set-up every NeuroShard service uses: health and reflection beside the
//! service, TLS when configured, a trace span per call continuing the caller's `traceparent`,
//! call counts and latencies for Prometheus, and connections without Nagle's delay.
//! (`neuroshard_common::Error` becomes a `tonic::Status` through common's `grpc` feature, so
//! the taxonomy's mapping stays in one place.)

use std::convert::Infallible;
use std::future::Future;

use neuroshard_common::{Error, ErrorKind};
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Server, ServerTlsConfig};

use crate::telemetry::{metrics::GrpcMetricsLayer, propagation};

/// Connections accepted on `listener`, with Nagle's algorithm off. Hidden states cross every
/// hop as one small write per request; with Nagle on, each waits for the peer's delayed ACK
/// (about 40 ms on Linux), which measured as 43 ms added to a 1 × 1024 hop.
pub fn incoming(listener: tokio::net::TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// The gRPC services one process serves on its port (a worker serves inference and training
/// side by side), each reported SERVING by the health service:
/// `GrpcServices::default().with(a).with(b)`.
#[derive(Debug, Default)]
pub struct GrpcServices {
    routes: Routes,
    names: Vec<&'static str>,
    /// Health names whose status follows a flag (SERVING while true).
    readiness: Vec<(&'static str, tokio::sync::watch::Receiver<bool>)>,
    /// A second, plaintext port serving only the health service (see `with_health_listener`).
    health_listener: Option<tokio::net::TcpListener>,
}

impl GrpcServices {
    /// One more service on the same port.
    pub fn with<S>(mut self, service: S) -> Self
    where
        S: tower::Service<http::Request<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.routes = self.routes.add_service(service);
        self.names.push(S::NAME);
        self
    }

    /// A health name (no service of its own) that is SERVING while `ready` holds true and
    /// NOT_SERVING otherwise: a readiness probe's question.
    pub fn with_readiness(
        mut self,
        name: &'static str,
        ready: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        self.readiness.push((name, ready));
        self
    }

    /// Also answers health checks, and nothing else, in plaintext on `listener` (when given).
    /// Kubernetes' gRPC probes cannot present a client certificate, so with mutual TLS on the
    /// main port they need a port of their own; it reveals only SERVING / NOT_SERVING.
    pub fn with_health_listener(mut self, listener: Option<tokio::net::TcpListener>) -> Self {
        self.health_listener = listener;
        self
    }
}

/// Binds the plaintext health port a service's `health_listen` names (none when unset), at
/// start, so that a taken port is reported with the setting's name before anything is served.
pub async fn bind_health(
    listen: Option<std::net::SocketAddr>,
) -> Result<Option<tokio::net::TcpListener>, Error> {
    let Some(listen) = listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        Error::new(
            ErrorKind::Unavailable,
            format!("health_listen {listen}: {e}"),
        )
    })?;
    tracing::info!(%listen, "serving gRPC health checks in plaintext");
    Ok(Some(listener))
}

/// Serves `services` on `listener` until `shutdown` resolves: the gRPC health service reports
/// each SERVING, reflection describes every NeuroShard proto, `tls` (when given) secures the
/// link, and each call is traced and counted.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<ServerTlsConfig>,
    services: GrpcServices,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let names = services.names.join(", ");
    let transport = |e: tonic::transport::Error| {
        Error::new(
            ErrorKind::Unavailable,
            format!("gRPC server ({names}): {e}"),
        )
    };
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    for name in &services.names {
        health_reporter
            .set_service_status(*name, tonic_health::ServingStatus::Serving)
            .await;
    }
    let followers: Vec<_> = services
        .readiness
        .into_iter()
        .map(|(name, mut ready)| {
            let reporter = health_reporter.clone();
            tokio::spawn(async move {
                loop {
                    let status = if *ready.borrow_and_update() {
                        tonic_health::ServingStatus::Serving
                    } else {
                        tonic_health::ServingStatus::NotServing
                    };
                    reporter.set_service_status(name, status).await;
                    if ready.changed().await.is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    let plaintext_health = services.health_listener.map(|listener| {
        let health = health_service.clone();
        tokio::spawn(async move {
            let served = Server::builder()
                .add_service(health)
                .serve_with_incoming(incoming(listener))
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "health port stopped");
            }
        })
    });
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(neuroshard_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::internal(format!("gRPC reflection: {e}")))?;
    let mut server = Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls).map_err(transport)?;
    }
    let served = server
        .trace_fn(propagation::server_span)
        .layer(GrpcMetricsLayer)
        .add_routes(
            services
                .routes
                .add_service(health_service)
                .add_service(reflection),
        )
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
        .map_err(transport);
    for follower in followers.into_iter().chain(plaintext_health) {
        follower.abort();
    }
    served
}

#[cfg(test)]
mod tests {
    use neuroshard_common::{Error, ErrorKind};

    #[tokio::test]
    #[allow(clippy::unwrap_used)]
    async fn a_readiness_name_follows_its_flag() {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::health_client::HealthClient;

        let (ready, flag) = tokio::sync::watch::channel(false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let health = super::bind_health(Some("127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap()
            .unwrap();
        let health_url = format!("http://{}", health.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(super::serve(
            listener,
            None,
            super::GrpcServices::default()
                .with_readiness("test.Loaded", flag)
                .with_health_listener(Some(health)),
            async {
                let _ = stopped.await;
            },
        ));
        let channel = tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = HealthClient::new(channel);
        let status = |client: &mut HealthClient<tonic::transport::Channel>| {
            let mut client = client.clone();
            async move {
                client
                    .check(HealthCheckRequest {
                        service: "test.Loaded".into(),
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .status()
            }
        };
        assert_eq!(status(&mut client).await, ServingStatus::NotServing);
        // The plaintext health port (for probes) tells the same, and serves nothing else.
        let mut probe = HealthClient::new(
            tonic::transport::Endpoint::from_shared(health_url)
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
        assert_eq!(status(&mut probe).await, ServingStatus::NotServing);
        ready.send_replace(true);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while status(&mut client).await != ServingStatus::Serving {
            assert!(std::time::Instant::now() < deadline, "never SERVING");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(status(&mut probe).await, ServingStatus::Serving);
        ready.send_replace(false);
        while status(&mut client).await != ServingStatus::NotServing {
            assert!(
                std::time::Instant::now() < deadline,
                "never NOT_SERVING again"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    #[test]
    fn every_error_kind_becomes_the_status_of_its_name() {
        let pairs = [
            (ErrorKind::InvalidArgument, tonic::Code::InvalidArgument),
            (ErrorKind::Unauthenticated, tonic::Code::Unauthenticated),
            (ErrorKind::PermissionDenied, tonic::Code::PermissionDenied),
            (ErrorKind::NotFound, tonic::Code::NotFound),
            (ErrorKind::AlreadyExists, tonic::Code::AlreadyExists),
            (
                ErrorKind::FailedPrecondition,
                tonic::Code::FailedPrecondition,
            ),
            (ErrorKind::ResourceExhausted, tonic::Code::ResourceExhausted),
            (ErrorKind::Unavailable, tonic::Code::Unavailable),
            (ErrorKind::DeadlineExceeded, tonic::Code::DeadlineExceeded),
            (ErrorKind::Internal, tonic::Code::Internal),
        ];
        for (kind, code) in pairs {
            let status: tonic::Status = Error::new(kind, "hidden: shape [1, 2]").into();
            assert_eq!(status.code(), code, "{kind:?}");
            assert_eq!(status.message(), "hidden: shape [1, 2]");
        }
    }
}
