//! The `integrad` binary: parse the command line, set up logging, run.

use integrad::config::{Cli, Command, ConfigError};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,ort=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = match Cli::parse_with_config(std::env::args_os()) {
        Ok(cli) => cli,
        Err(ConfigError::Clap(e)) => e.exit(),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => {
                let listener = tokio::net::TcpListener::bind(args.listen)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
                let served = integrad::server::serve(args, listener, shutdown_signal()).await;
                // Telemetry flushing goes here: after the last request has ended (served or
                // cancelled) and before the process exits, whether serving ended well or not.
                served?;
                Ok(())
            }
            Command::Predict(args) => integrad::cli::run_predict(args).await,
            Command::Explain(args) => integrad::cli::run_explain(args).await,
            Command::Autodiff(args) => {
                tokio::task::spawn_blocking(move || integrad::cli::run_autodiff(args)).await?
            }
        }
    })
}

/// SIGTERM (what Kubernetes sends) or Ctrl-C.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = terminate => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C: shutting down"),
    }
}
