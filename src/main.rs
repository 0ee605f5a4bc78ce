//! The `integrad` binary: parse the command line, set up logging and telemetry, run.

use integrad::config::{Cli, Command, ConfigError, ServeArgs};
use integrad::telemetry;

fn main() {
    if let Err(error) = run() {
        // A user's mistake is not a crash: the error and its causes, never a backtrace (which
        // anyhow would print under RUST_BACKTRACE=1).
        eprintln!("Error: {error}");
        let causes: Vec<String> = error.chain().skip(1).map(|c| c.to_string()).collect();
        match causes.as_slice() {
            [] => {}
            [one] => eprintln!("\nCaused by:\n    {one}"),
            many => {
                eprintln!("\nCaused by:");
                for (i, cause) in many.iter().enumerate() {
                    eprintln!("    {i}: {cause}");
                }
            }
        }
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
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
    let command = match cli.command {
        Command::Serve(args) => return serve(&runtime, args),
        command => command,
    };
    telemetry::init_cli_logs()?;
    runtime.block_on(async move {
        match command {
            Command::Serve(_) => unreachable!("served above"),
            Command::Predict(args) => integrad::cli::run_predict(args).await,
            Command::Explain(args) => integrad::cli::run_explain(args).await,
            Command::ExplainBatch(args) => integrad::cli::run_explain_batch(args).await,
            Command::Evaluate(args) => integrad::cli::run_evaluate(args).await,
            Command::FetchWeights(args) => {
                tokio::task::spawn_blocking(move || integrad::cli::run_fetch_weights(args)).await?
            }
            Command::Autodiff(args) => {
                tokio::task::spawn_blocking(move || integrad::cli::run_autodiff(args)).await?
            }
        }
    })
}

fn serve(runtime: &tokio::runtime::Runtime, args: ServeArgs) -> anyhow::Result<()> {
    let telemetry = runtime.block_on(telemetry::init(&args.telemetry))?;
    let served = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
        integrad::server::serve(args, listener, shutdown_signal()).await?;
        anyhow::Ok(())
    });
    // Outside the async threads, with the runtime (and the OTLP connection) still up.
    telemetry.shutdown();
    served
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
