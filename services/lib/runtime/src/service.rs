//! The start-up every service shares, so its `main.rs` is one call:
//! `service_main::<Config, _, _, _>("name", "what it is", crate::run)`.
//!
//! Order: arguments (`--config FILE`, `--help`, `--version`) → telemetry (JSON logs, OTLP
//! when configured) → config (defaults < file < `<ENV_PREFIX>_*` environment, then
//! [`ServiceConfig::validate`]) → bind the listen address → `run(config, listener, shutdown)`
//! until SIGTERM / Ctrl-C → flush traces. A failure at any step is logged, printed to stderr
//! with its causes, and ends the process with status 1.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use neuroshard_common::{Error, ErrorKind};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// What a service's configuration must offer for [`service_main`] to start it.
pub trait ServiceConfig: Serialize + DeserializeOwned + Default {
    /// Environment variables `<ENV_PREFIX>_<FIELD>` override the file (`__` between nested
    /// keys).
    const ENV_PREFIX: &'static str;

    /// Where the service's main listener (gRPC or HTTP) binds.
    fn listen(&self) -> SocketAddr;

    /// Checks what types cannot express; messages name the field and never show a secret.
    fn validate(&self) -> Result<(), Error>;

    /// Defaults < `file` < environment, validated.
    fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, Error> {
        let config: Self = crate::config::load(file, Self::ENV_PREFIX, env)?;
        config.validate()?;
        Ok(config)
    }
}

/// Runs a service process: see the module docs. `name` is the binary's name (and the
/// service name in logs and traces), `about` its one-line description for `--help`.
pub fn service_main<C, F, Fut, E>(name: &'static str, about: &'static str, run: F) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C, tokio::net::TcpListener, crate::shutdown::Signal) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::error::Error,
{
    let config_file = parse_args(name, about);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(name, &e),
    };
    runtime.block_on(async move {
        let telemetry = match crate::telemetry::init(name) {
            Ok(telemetry) => telemetry,
            Err(e) => return fail(name, &e),
        };
        let outcome = start(config_file.as_deref(), run).await;
        telemetry.shutdown();
        match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(StartError::Setup(e)) => fail(name, &e),
            Err(StartError::Run(e)) => fail(name, &e),
        }
    })
}

enum StartError<E> {
    Setup(Error),
    Run(E),
}

async fn start<C, F, Fut, E>(config_file: Option<&Path>, run: F) -> Result<(), StartError<E>>
where
    C: ServiceConfig,
    F: FnOnce(C, tokio::net::TcpListener, crate::shutdown::Signal) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let config = C::load(config_file, std::env::vars()).map_err(StartError::Setup)?;
    let listen = config.listen();
    let listener = bind(listen).await.map_err(StartError::Setup)?;
    run(config, listener, Box::pin(crate::shutdown::signal()))
        .await
        .map_err(StartError::Run)
}

/// Binds `listen`, naming the address (and the usual cause) when it cannot.
pub async fn bind(listen: SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            " (another process is using it; choose another `listen`)"
        } else {
            ""
        };
        Error::new(
            ErrorKind::Unavailable,
            format!("listen {listen}: {e}{hint}"),
        )
    })
}

/// `--config FILE` (optional: defaults and environment alone are a valid configuration).
/// `--help` and `--version` print and exit 0; a wrong flag prints usage and exits 2.
fn parse_args(name: &'static str, about: &'static str) -> Option<PathBuf> {
    let matches = clap::Command::new(name)
        .about(about)
        .version(env!("CARGO_PKG_VERSION"))
        .arg(
            clap::Arg::new("config")
                .long("config")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help(format!("TOML config file (see deploy/{name}.example.toml)")),
        )
        .get_matches();
    matches.get_one::<PathBuf>("config").cloned()
}

/// Logs and prints `error` with its causes; the process's exit status is 1.
fn fail(name: &str, error: &dyn std::error::Error) -> ExitCode {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    tracing::error!(error = %message, "{name} stopped");
    eprintln!("{name}: error: {message}");
    ExitCode::FAILURE
}
