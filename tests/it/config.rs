//! Configuration: every serve flag has an INTEGRAD_* variable and help text; a TOML config
//! file whose keys are the long flag names, overridden by the environment and by flags;
//! unknown keys refused by name.

use crate::common;

use clap::CommandFactory;
use common::*;
use integrad::config::{Cli, Command, ServeArgs};
use integrad::model::BatchingMode;

fn write_config(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("integrad.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn should_give_every_serve_flag_an_environment_variable_and_help() {
    let cli = Cli::command();
    let serve = cli.find_subcommand("serve").unwrap();
    let mut checked = 0;
    for arg in serve.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        // KServe's explainer arguments (--model_name, --http_port, --workers, ...) are passed by
        // its controller on the command line, in its spelling, never set by an operator.
        let kserve = arg.get_help_heading() == Some("KServe explainer arguments");
        if ["help", "version"].contains(&long) || kserve {
            continue;
        }
        let env = arg
            .get_env()
            .unwrap_or_else(|| panic!("--{long} has no environment variable"));
        let env = env.to_str().unwrap();
        // ORT_DYLIB_PATH is ONNX Runtime's own variable; every other one is ours.
        assert!(
            env.starts_with("INTEGRAD_") || env == "ORT_DYLIB_PATH",
            "--{long}: {env}"
        );
        assert!(arg.get_help().is_some(), "--{long} has no help text");
        checked += 1;
    }
    assert!(checked >= 18, "only {checked} flags found");
}

/// `integrad serve --config FILE EXTRA...` parsed as the binary parses it.
fn serve_args(file: &str, extra: &[&str]) -> ServeArgs {
    let mut argv = vec!["integrad", "serve", "--config", file];
    argv.extend_from_slice(extra);
    match Cli::parse_with_config(argv).unwrap().command {
        Command::Serve(args) => args,
        _ => unreachable!(),
    }
}

#[test]
fn should_take_flags_from_the_file_unless_given_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        dir.path(),
        "listen = \"127.0.0.1:7001\"\nmax-steps = 2000\nmax-queued-explains = 3\nhealth-listen = \"127.0.0.1:7003\"\n",
    );
    let parse = |extra: &[&str]| serve_args(&file, extra);
    let from_file = parse(&[]);
    assert_eq!(from_file.listen.to_string(), "127.0.0.1:7001");
    assert_eq!(from_file.max_steps, 2000);
    assert_eq!(from_file.max_queued_explains, 3);
    assert_eq!(
        from_file.health_listen.map(|a| a.to_string()).as_deref(),
        Some("127.0.0.1:7003")
    );
    // Keys the file leaves out keep their defaults.
    assert_eq!(from_file.shutdown_grace, 30);

    let overridden = parse(&["--listen", "127.0.0.1:7002", "--max-steps", "100"]);
    assert_eq!(overridden.listen.to_string(), "127.0.0.1:7002");
    assert_eq!(overridden.max_steps, 100);
    assert_eq!(
        overridden.max_queued_explains, 3,
        "the rest still from the file"
    );

    // A flag that conflicts with a key of the file wins over it rather than clashing.
    let file = write_config(dir.path(), "models = \"/srv/models\"\n");
    let args = serve_args(&file, &["--model-file", "m.onnx"]);
    assert_eq!(args.models.model_file.unwrap().to_str(), Some("m.onnx"));
    assert_eq!(args.models.models, None);
    let file = write_config(dir.path(), "model-file = \"m.onnx\"\n");
    let args = serve_args(&file, &["--models", "/srv/models"]);
    assert_eq!(args.models.models.unwrap().to_str(), Some("/srv/models"));
    assert_eq!(args.models.model_file, None);
}

#[test]
fn should_refuse_an_unknown_key_or_a_bad_value_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let run = |text: &str| {
        let file = write_config(dir.path(), text);
        let out = std::process::Command::new(binary())
            .args(["serve", "--config", &file])
            .env_remove("INTEGRAD_CONFIG")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{text} was accepted");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let unknown = run("listen = \"127.0.0.1:0\"\nmax-stepz = 10\n");
    assert!(unknown.contains("max-stepz"), "{unknown}");
    assert!(unknown.contains("unknown key"), "{unknown}");
    let bad = run("max-steps = \"many\"\n");
    assert!(bad.contains("--max-steps") && bad.contains("many"), "{bad}");
    let not_toml = run("listen = \n");
    assert!(not_toml.contains("integrad.toml"), "{not_toml}");
}

/// Starts the real binary with `--config file` (and `env`), and returns where it serves.
async fn serves_at(file: &str, env: &[(&str, String)], candidates: &[String]) -> String {
    let mut command = std::process::Command::new(binary());
    command
        .args(["serve", "--config", file])
        .args(["--models", demo_models().to_str().unwrap()])
        .env_remove("INTEGRAD_LISTEN")
        .envs(env.iter().map(|(k, v)| (k, v)));
    let mut child = Process::spawn(&mut command);
    // Whichever candidate answers SERVING first; the process is killed afterwards.
    loop {
        for address in candidates {
            let url = format!("http://{address}");
            if let Ok(tonic_health::pb::health_check_response::ServingStatus::Serving) =
                health(&url, None).await
            {
                return address.clone();
            }
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("integrad serve exited: {status}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn should_listen_where_the_file_says_unless_the_environment_says_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let (in_file, in_env) = (free_address().to_string(), free_address().to_string());
    let file = write_config(dir.path(), &format!("listen = \"{in_file}\"\n"));
    let candidates = [in_file.clone(), in_env.clone()];
    assert_eq!(serves_at(&file, &[], &candidates).await, in_file);
    let env = [("INTEGRAD_LISTEN", in_env.clone())];
    assert_eq!(serves_at(&file, &env, &candidates).await, in_env);
    // And through INTEGRAD_CONFIG instead of --config: the same file, the same address.
    let mut command = std::process::Command::new(binary());
    command
        .args(["serve", "--models", demo_models().to_str().unwrap()])
        .env_remove("INTEGRAD_LISTEN")
        .env("INTEGRAD_CONFIG", &file);
    let _child = Process::spawn(&mut command);
    wait_serving(&format!("http://{in_file}"), None).await;
}

#[test]
fn should_read_the_batching_flags_from_the_file_and_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        dir.path(),
        "batching = \"off\"\nbatch-max-rows = 8\nbatch-max-delay-us = 500\n",
    );
    let parse = |extra: &[&str]| serve_args(&file, extra).load_options().batching;
    let from_file = parse(&[]);
    assert_eq!(from_file.mode, BatchingMode::Off);
    assert_eq!(from_file.max_rows, 8);
    assert_eq!(from_file.max_delay, std::time::Duration::from_micros(500));
    let overridden = parse(&["--batching", "on", "--batch-max-rows", "64"]);
    assert_eq!(overridden.mode, BatchingMode::On);
    assert_eq!(overridden.max_rows, 64);
    assert_eq!(overridden.max_delay, std::time::Duration::from_micros(500));
    // No rows would never run anything.
    let argv = ["integrad", "serve", "--batch-max-rows", "0"];
    assert!(Cli::parse_with_config(argv).is_err());
}
