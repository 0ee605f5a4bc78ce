//! The integration tests, as one test binary (one link instead of one per file). Each module
//! was a file of its own under tests/; none sets process-wide state (environment variables,
//! a global tracing subscriber or OpenTelemetry provider, signal handlers) in this process:
//! the tests that need those run the `integrad` binary as a child process. The ONNX Runtime
//! environment is process-wide, and every test here loads it with the default options.
//! A test that must change process-wide state belongs in a file of its own, tests/<name>.rs.

mod ad_support;
mod common;

mod autodiff_api;
mod autodiff_models;
mod autodiff_ops;
mod bad_input;
mod batching;
mod cli;
mod config;
mod devices;
mod evaluate;
mod explain;
mod explain_captum;
mod faults;
mod fuzz;
mod heads;
mod health_port;
mod helm;
mod hostile_models;
mod http_api;
mod ig_step;
mod images;
mod limits;
mod oip;
mod predict;
mod predictor;
mod python_client;
mod python_package;
mod security;
mod shutdown;
mod soak;
mod tabular;
mod techniques;
mod telemetry;
mod tensor_models;
mod text;
mod tls_failures;
mod triton_repo;
mod web;
