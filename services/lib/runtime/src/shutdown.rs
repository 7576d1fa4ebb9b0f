//! Graceful shutdown: a future that completes on SIGTERM or Ctrl-C, for `run(config, shutdown)`.

use std::future::Future;
use std::pin::Pin;

/// The shutdown future [`crate::service_main`] hands to a service's `run`.
pub type Signal = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Resolves when the process is asked to stop (SIGTERM or SIGINT).
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
