//! Structured logs for every service: JSON lines to stderr, filtered by `RUST_LOG`
//! (default `info`).

/// Installs the global log subscriber once; later calls are no-ops.
pub fn init_logs(service: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let installed = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init()
        .is_ok();
    if installed {
        tracing::info!(service, "logging started");
    }
}
