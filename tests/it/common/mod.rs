//! Shared set-up for integration tests: a real integrad server on a loopback port (in-process,
//! or the `integrad` binary), real tonic clients, Pythons for third-party clients, and the
//! shipped fixtures.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use integrad::config::{Cli, Command};
use integrad::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use integrad::proto::integrad::v1 as pb;
use integrad::proto::integrad::v1::explainer_client::ExplainerClient;
use integrad::proto::onnx;
use prost::Message;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn demo_models() -> PathBuf {
    root().join("models")
}

/// A temporary repository holding links to the demo models `names` (a server that loads
/// only what a test needs starts faster).
pub fn demo_repository(names: &[&str]) -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    for name in names {
        std::os::unix::fs::symlink(demo_models().join(name), repo.path().join(name)).unwrap();
    }
    repo
}

/// The models of the demo repository, in ListModels' (name) order.
pub const DEMO_MODELS: [&str; 3] = ["efficientnet-lite0", "penguins", "sentiment"];

/// The names of the models a ListModels answer lists.
pub fn names(list: &integrad::proto::integrad::v1::ListModelsResponse) -> Vec<&str> {
    list.models.iter().map(|m| m.name.as_str()).collect()
}

pub fn sample(name: &str) -> Vec<u8> {
    std::fs::read(root().join("samples").join(name)).unwrap()
}

/// A float32 Tensor message of `shape` holding `data`.
pub fn tensor(shape: &[usize], data: &[f32]) -> pb::Tensor {
    pb::Tensor {
        shape: shape.iter().map(|&d| d as i64).collect(),
        dtype: pb::DataType::Float32 as i32,
        data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// The values of a float32 Tensor message.
pub fn floats(t: &pb::Tensor) -> Vec<f32> {
    t.data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

pub fn fixture(name: &str) -> (Vec<usize>, Vec<f32>) {
    match integrad::npy::read(&root().join("tests/data").join(name)).unwrap() {
        integrad::npy::NpyArray::F32 { shape, data } => (shape, data),
        other => panic!("{name}: expected float32, got {other:?}"),
    }
}

pub struct TestServer {
    pub url: String,
    /// How this process's clients reach the server over TLS (None: plaintext).
    pub tls: Option<ClientTlsConfig>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), integrad::server::ServeError>>,
}

impl TestServer {
    /// The demo models with room for one Explain (or Evaluate) and no queue: while one runs,
    /// a second is refused at once with RESOURCE_EXHAUSTED.
    pub async fn one_explain_slot() -> Self {
        Self::start(&[
            "--models",
            demo_models().to_str().unwrap(),
            "--max-concurrent-explains",
            "1",
            "--max-queued-explains",
            "0",
        ])
        .await
    }

    /// Starts `integrad serve <args>` in-process on a free loopback port and waits for SERVING.
    pub async fn start(args: &[&str]) -> Self {
        Self::start_with(args, None).await
    }

    /// Like [`TestServer::start`] for a server with TLS: `tls` is how clients connect.
    pub async fn start_with(args: &[&str], tls: Option<ClientTlsConfig>) -> Self {
        let mut argv = vec!["integrad", "serve"];
        argv.extend_from_slice(args);
        let Command::Serve(serve) = Cli::parse_with_config(argv).unwrap().command else {
            unreachable!()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(integrad::server::serve(serve, listener, async move {
            let _ = stopped.await;
        }));
        let server = Self {
            url,
            tls,
            stop: Some(stop),
            task,
        };
        wait_serving(&server.url, server.tls.clone()).await;
        server
    }

    pub async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        connect_channel(&self.url, self.tls.clone()).await
    }

    pub async fn client(&self) -> ExplainerClient<Channel> {
        ExplainerClient::new(self.channel().await.unwrap())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    pub async fn health(&self) -> ServingStatus {
        health(&self.url, self.tls.clone()).await.unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.unwrap().unwrap();
    }
}

pub async fn connect_channel(
    url: &str,
    tls: Option<ClientTlsConfig>,
) -> Result<Channel, tonic::transport::Error> {
    let mut endpoint = Channel::from_shared(url.to_string()).unwrap();
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls)?;
    }
    endpoint.connect().await
}

/// The server-wide health status (no token: health is open to probes).
pub async fn health(
    url: &str,
    tls: Option<ClientTlsConfig>,
) -> Result<ServingStatus, tonic::Status> {
    let channel = connect_channel(url, tls)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(ServingStatus::try_from(response.into_inner().status).unwrap())
}

/// Waits until the server at `url` reports SERVING.
pub async fn wait_serving(url: &str, tls: Option<ClientTlsConfig>) {
    // Loading and warming up the demo model takes well under a second warm; a cold first
    // run also fetches ONNX Runtime with pip, hence the generous bound.
    for _ in 0..1200 {
        if let Ok(ServingStatus::Serving) = health(url, tls.clone()).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("server at {url} never reported SERVING");
}

/// A free loopback address for a server started as a separate process.
pub fn free_address() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A child process killed when the test lets go of it (also when it panics).
pub struct Process(pub std::process::Child);

impl Process {
    pub fn spawn(command: &mut std::process::Command) -> Self {
        Self(command.spawn().unwrap())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends SIGTERM (what Kubernetes sends) to `child`.
pub fn sigterm(child: &Process) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits for `child` to exit.
pub async fn exit_status(child: &mut Process) -> std::process::ExitStatus {
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts an Explain of rocket.jpg with `steps` on the plaintext server at `url` and returns
/// its stream once the first progress event arrived (so it is surely in flight when the test
/// sends SIGTERM).
pub async fn explain_in_flight(url: &str, steps: u32) -> tonic::codec::Streaming<pb::ExplainEvent> {
    let mut client = ExplainerClient::connect(url.to_string())
        .await
        .unwrap()
        .max_decoding_message_size(64 << 20);
    let request = pb::ExplainRequest {
        input: Some(pb::Input {
            kind: Some(pb::input::Kind::Image(sample("rocket.jpg"))),
        }),
        steps: Some(steps),
        ..Default::default()
    };
    let mut stream = client.explain(request).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(matches!(
        first.event,
        Some(pb::explain_event::Event::Progress(_))
    ));
    stream
}

/// The first explanation of an Explain (its progress events skipped).
pub async fn first_explanation(
    client: &mut ExplainerClient<Channel>,
    request: pb::ExplainRequest,
) -> Result<pb::Explanation, tonic::Status> {
    let mut stream = client.explain(request).await?.into_inner();
    while let Some(event) = stream.message().await? {
        if let Some(pb::explain_event::Event::Result(r)) = event.event {
            return Ok(r);
        }
    }
    panic!("the stream ended without a result")
}

/// Certificates made for one test: a CA, a server certificate for 127.0.0.1 and localhost,
/// and a client certificate, all signed by the CA, plus a second CA that signed nothing.
pub struct TestPki {
    pub dir: tempfile::TempDir,
    pub ca: String,
    pub other_ca: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

impl TestPki {
    pub fn new() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        };
        let ca_authority = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.self_signed(&key).unwrap();
            (cert, key)
        };
        let (ca, ca_key) = ca_authority("integrad test CA");
        let (other_ca, _) = ca_authority("some other CA");
        let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) =
            leaf(vec!["client".into()], ExtendedKeyUsagePurpose::ClientAuth);
        Self {
            dir: tempfile::tempdir().unwrap(),
            ca: ca.pem(),
            other_ca: other_ca.pem(),
            server_cert,
            server_key,
            client_cert,
            client_key,
        }
    }

    /// Writes `pem` to a file in this PKI's directory and returns its path.
    pub fn file(&self, name: &str, pem: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path.to_str().unwrap().to_string()
    }

    /// Server flags for TLS, and mutual TLS when `mutual`.
    pub fn server_args(&self, mutual: bool) -> Vec<String> {
        let mut args = vec![
            "--tls-cert".into(),
            self.file("server.pem", &self.server_cert),
            "--tls-key".into(),
            self.file("server.key", &self.server_key),
        ];
        if mutual {
            args.push("--tls-client-ca".into());
            args.push(self.file("ca.pem", &self.ca));
        }
        args
    }

    /// A client that trusts `ca`, presenting the client certificate when `with_cert`.
    pub fn client(&self, ca: &str, with_cert: bool) -> ClientTlsConfig {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if with_cert {
            tls = tls.identity(Identity::from_pem(&self.client_cert, &self.client_key));
        }
        tls
    }
}

pub fn image_request(model: &str, bytes: Vec<u8>, top_k: u32) -> pb::PredictRequest {
    pb::PredictRequest {
        model: model.into(),
        input: Some(pb::Input {
            kind: Some(pb::input::Kind::Image(bytes)),
        }),
        top_k,
        ..Default::default()
    }
}

pub fn tensor_request(model: &str, shape: &[usize], data: &[f32]) -> pb::PredictRequest {
    let tensor = pb::Tensor {
        shape: shape.iter().map(|&d| d as i64).collect(),
        dtype: pb::DataType::Float32 as i32,
        data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
    };
    pb::PredictRequest {
        model: model.into(),
        input: Some(pb::Input {
            kind: Some(pb::input::Kind::Tensor(tensor)),
        }),
        top_k: 0,
        ..Default::default()
    }
}

pub fn logits(response: &pb::PredictResponse) -> Vec<f32> {
    let t = response.logits.as_ref().unwrap();
    t.data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_integrad"))
}

/// Runs the integrad binary off the test's runtime thread (which also serves the server).
pub async fn integrad(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(binary())
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

pub fn value_info(name: &str, dims: &[Option<i64>]) -> onnx::ValueInfoProto {
    typed_value_info(name, dims, onnx::tensor_proto::DataType::Float)
}

/// A graph input or output of element type `elem`; `None` dimensions are the free "batch".
pub fn typed_value_info(
    name: &str,
    dims: &[Option<i64>],
    elem: onnx::tensor_proto::DataType,
) -> onnx::ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| onnx::tensor_shape_proto::Dimension {
            value: Some(match d {
                Some(v) => onnx::tensor_shape_proto::dimension::Value::DimValue(*v),
                None => onnx::tensor_shape_proto::dimension::Value::DimParam("batch".into()),
            }),
            ..Default::default()
        })
        .collect();
    onnx::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(onnx::TypeProto {
            value: Some(onnx::type_proto::Value::TensorType(
                onnx::type_proto::Tensor {
                    elem_type: Some(elem as i32),
                    shape: Some(onnx::TensorShapeProto { dim }),
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// out = op(x @ W) with W = [[1, 0, -1], [0, 2, 0]]: a 2-feature, 3-class classifier; with
/// op "Softmax" its output is probabilities.
pub fn tiny_classifier(op: &str) -> Vec<u8> {
    let weights = [1.0f32, 0.0, -1.0, 0.0, 2.0, 0.0];
    let w = onnx::TensorProto {
        name: Some("W".into()),
        dims: vec![2, 3],
        data_type: Some(onnx::tensor_proto::DataType::Float as i32),
        float_data: weights.to_vec(),
        ..Default::default()
    };
    let node = |op: &str, inputs: &[&str], output: &str| onnx::NodeProto {
        op_type: Some(op.into()),
        name: Some(format!("{op}_0")),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    };
    let graph = onnx::GraphProto {
        name: Some("tiny".into()),
        node: vec![
            node("MatMul", &["features", "W"], "scores"),
            node(op, &["scores"], "probs"),
        ],
        initializer: vec![w],
        input: vec![value_info("features", &[None, Some(2)])],
        output: vec![value_info("probs", &[None, Some(3)])],
        ..Default::default()
    };
    model_bytes(graph)
}

/// `graph` as an ONNX file's bytes (IR 8, default-domain opset 17).
pub fn model_bytes(graph: onnx::GraphProto) -> Vec<u8> {
    onnx::ModelProto {
        ir_version: Some(8),
        opset_import: vec![onnx::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(graph),
        ..Default::default()
    }
    .encode_to_vec()
}

impl TestServer {
    /// A tonic client of the Open Inference Protocol service on this server.
    pub async fn inference(&self) -> GrpcInferenceServiceClient<Channel> {
        GrpcInferenceServiceClient::connect(self.url.clone())
            .await
            .unwrap()
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }
}

/// Whether the server at `url` (plaintext) answers health checks with SERVING.
pub async fn serving(url: &str) -> bool {
    matches!(health(url, None).await, Ok(ServingStatus::Serving))
}

/// The real `integrad serve` binary on a free loopback port, killed when dropped however the
/// test ends.
pub struct BinaryServer {
    child: std::process::Child,
    /// host:port, as non-Rust clients take it.
    pub address: String,
    pub url: String,
}

impl BinaryServer {
    /// Runs `integrad serve --listen ADDR <args>` and waits for SERVING.
    pub async fn start(args: &[&str]) -> Self {
        let mut server = Self::spawn(args);
        // Warm start is well under a second; a cold first run also fetches ONNX Runtime.
        for _ in 0..1200 {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("integrad serve exited before SERVING: {status}");
            }
            if serving(&server.url).await {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("integrad serve at {} never reported SERVING", server.url);
    }

    /// Runs `integrad serve --listen ADDR <args>` without waiting for anything.
    pub fn spawn(args: &[&str]) -> Self {
        let address = free_address().to_string();
        let child = std::process::Command::new(binary())
            .args(["serve", "--listen", &address])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        Self {
            child,
            url: format!("http://{address}"),
            address,
        }
    }
}

impl BinaryServer {
    /// The server process's id (for reading its /proc entries).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for BinaryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Python for a test of a third-party client: `$<override_env>` if set, otherwise a venv
/// `venv` under cargo's test scratch directory, made once with the pinned packages of
/// `requirements` (a path from the repository root), so a plain `cargo test --release` on a fresh machine needs
/// nothing installed by hand. `imports` (Python) must then run, or the test fails saying why:
/// it never skips.
pub fn python_venv(override_env: &str, venv: &str, requirements: &str, imports: &str) -> String {
    use std::process::Command;
    let requirements = root().join(requirements);
    let ready = |python: &Path| {
        Command::new(python)
            .args(["-c", imports])
            .output()
            .map(|out| {
                (
                    out.status.success(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            })
    };
    if let Ok(python) = std::env::var(override_env) {
        match ready(Path::new(&python)) {
            Ok((true, _)) => return python,
            Ok((false, stderr)) => panic!(
                "{override_env}={python} lacks the packages of {} (pip install -r it there)\n{stderr}",
                requirements.display()
            ),
            Err(e) => panic!("cannot run {override_env}={python}: {e}"),
        }
    }
    // Several tests share a venv and run at once: one makes it while the others wait (two
    // pip installs into one venv at a time corrupt each other's files).
    static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _making = MAKING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(venv);
    let python = venv.join("bin/python");
    if !ready(&python).is_ok_and(|(ok, _)| ok) {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 runs (or set the override variable)");
        assert!(made.success(), "python3 -m venv {} failed", venv.display());
        let installed = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "-r"])
            .arg(&requirements)
            .status()
            .expect("pip runs");
        assert!(
            installed.success(),
            "pip install -r {} failed",
            requirements.display()
        );
        match ready(&python) {
            Ok((true, _)) => {}
            Ok((false, stderr)) => panic!(
                "{} lacks the packages of {} after installing them\n{stderr}",
                python.display(),
                requirements.display()
            ),
            Err(e) => panic!("cannot run {}: {e}", python.display()),
        }
    }
    python.display().to_string()
}

/// GET /metrics over a plain TCP connection: (content type, body).
pub fn scrape(address: SocketAddr) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    (content_type, body.to_string())
}

/// One Prometheus sample: its labels and value.
pub type Sample = (BTreeMap<String, String>, f64);

/// Prometheus text -> samples by metric name (label values here hold no commas or quotes).
pub fn parse(text: &str) -> HashMap<String, Vec<Sample>> {
    let mut samples: HashMap<String, Vec<Sample>> = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (key, value) = l.split_once('=').unwrap();
                (key.to_string(), value.trim_matches('"').to_string())
            })
            .collect();
        samples
            .entry(name.to_string())
            .or_default()
            .push((labels, value));
    }
    samples
}

/// The sample of `name` whose labels are exactly `labels`, or 0 if there is none yet.
pub fn value(samples: &HashMap<String, Vec<Sample>>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let wanted: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples
        .get(name)
        .and_then(|s| s.iter().find(|(l, _)| *l == wanted))
        .map_or(0.0, |(_, v)| *v)
}

/// ||a - b|| / ||a|| (L2), for comparing attributions or gradients computed two ways.
pub fn relative_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let norm = a.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
    let diff = a
        .iter()
        .zip(b)
        .map(|(p, q)| f64::from(p - q).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!(norm > 0.0);
    diff / norm
}
