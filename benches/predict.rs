//! Predict on the demo model, batch 1, warm: the server's added overhead (decode, preprocess,
//! gRPC) next to the raw ONNX Runtime run, measured in one run.
//!
//! `cargo bench --bench predict`; the summary at the end reads criterion's estimates.

mod common;

use std::io::Cursor;
use std::sync::Arc;

use criterion::Criterion;
use integrad::image::{decode, preprocess, DecodeLimits};
use integrad::model::{LoadOptions, ModelConfig};
use integrad::proto::integrad::v1 as pb;
use integrad::proto::integrad::v1::explainer_client::ExplainerClient;
use ort::session::Session;
use ort::value::Tensor;

const RAW: &str = "ort_session_run_batch1";
const DECODE: &str = "decode_preprocess_png224";
const WORKER: &str = "model_worker_batch1";
const ENGINE: &str = "engine_predict_png224";
const GRPC: &str = "grpc_predict_png224";

fn main() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let model_dir = root.join("models/efficientnet-lite0");
    let env = integrad::runtime::environment(&Default::default()).expect("ONNX Runtime");
    let options = LoadOptions::default();

    // A 224x224 PNG of a real photo (the coffee sample's centre), as a client would send.
    let photo = image::open(root.join("samples/coffee.png"))
        .unwrap()
        .to_rgb8();
    let (w, h) = photo.dimensions();
    let crop = image::imageops::crop_imm(&photo, (w - 224) / 2, (h - 224) / 2, 224, 224).to_image();
    let mut png = Cursor::new(Vec::new());
    crop.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let png = png.into_inner();

    let config = ModelConfig::load(&model_dir.join("integrad.toml")).unwrap();
    let preprocessing = config.input.preprocessing().unwrap().unwrap();
    let input = preprocess(&crop, &preprocessing);

    let mut criterion = Criterion::default().configure_from_args().sample_size(50);

    // The floor: the same session settings the server uses, called directly.
    let mut session = Session::builder(&env)
        .unwrap()
        .with_optimization_level(ort::session::builder::GraphOptimizationLevel::All)
        .unwrap()
        .with_intra_threads(options.intra_threads)
        .unwrap()
        .commit_from_file(model_dir.join("model.onnx"))
        .unwrap();
    criterion.bench_function(RAW, |b| {
        b.iter(|| {
            let tensor = Tensor::from_array((vec![1i64, 3, 224, 224], input.clone())).unwrap();
            let out = session.run(ort::inputs!["input" => tensor]).unwrap();
            std::hint::black_box(out["logits"].try_extract_tensor::<f32>().unwrap().1[0]);
        })
    });
    drop(session);

    criterion.bench_function(DECODE, |b| {
        b.iter(|| {
            let image = decode(&png, &DecodeLimits::default()).unwrap();
            std::hint::black_box(preprocess(&image, &preprocessing));
        })
    });

    // The model worker (its thread and channel hop) and the engine (decode, preprocess, run,
    // top-k) in-process, to split the gRPC figure into its parts.
    let repository =
        integrad::model::Repository::load_dir(&root.join("models"), &env, &options).unwrap();
    let engine =
        integrad::engine::Engine::new(Arc::new(repository), Default::default(), Default::default());
    let model = engine.model("").unwrap().clone();
    criterion.bench_function(WORKER, |b| {
        b.iter(|| {
            let tensor = integrad::model::TensorData::f32(vec![1, 3, 224, 224], input.clone());
            std::hint::black_box(
                model
                    .worker
                    .run_blocking(vec![("input".into(), tensor)], vec!["logits".into()])
                    .unwrap(),
            );
        })
    });
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let image_request = pb::PredictRequest {
        model: String::new(),
        input: Some(pb::Input {
            kind: Some(pb::input::Kind::Image(png.clone())),
        }),
        top_k: 5,
        ..Default::default()
    };
    criterion.bench_function(ENGINE, |b| {
        b.iter(|| {
            runtime.block_on(async {
                std::hint::black_box(engine.predict(image_request.clone()).await.unwrap())
            })
        })
    });
    drop(engine);

    let mut client = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let integrad::config::Command::Serve(args) =
            <integrad::config::Cli as clap::Parser>::parse_from([
                "integrad",
                "serve",
                "--models",
                root.join("models").to_str().unwrap(),
            ])
            .command
        else {
            unreachable!()
        };
        tokio::spawn(integrad::server::serve(
            args,
            listener,
            std::future::pending(),
        ));
        loop {
            if let Ok(client) = ExplainerClient::connect(url.clone()).await {
                let mut probe = client.clone();
                if probe.list_models(pb::ListModelsRequest {}).await.is_ok() {
                    break client;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    });
    let request = pb::PredictRequest {
        model: String::new(),
        input: Some(pb::Input {
            kind: Some(pb::input::Kind::Image(png.clone())),
        }),
        top_k: 5,
        ..Default::default()
    };
    let request = Arc::new(request);
    criterion.bench_function(GRPC, |b| {
        b.iter(|| {
            runtime.block_on(async {
                std::hint::black_box(client.predict((*request).clone()).await.unwrap())
            })
        })
    });
    criterion.final_summary();
    summary(&root);
}

/// Prints overhead = gRPC Predict - raw ORT run, from criterion's saved estimates.
fn summary(root: &std::path::Path) {
    let mean_ms = |name: &str| common::median_ms(root, name);
    let (Some(raw), Some(decode), Some(worker), Some(engine), Some(grpc)) = (
        mean_ms(RAW),
        mean_ms(DECODE),
        mean_ms(WORKER),
        mean_ms(ENGINE),
        mean_ms(GRPC),
    ) else {
        return;
    };
    println!("\nmedian, batch 1, 224x224 PNG, warm:");
    println!("  raw ONNX Runtime run       {raw:8.2} ms");
    println!("  decode + preprocess        {decode:8.2} ms");
    println!("  model worker run           {worker:8.2} ms");
    println!("  engine Predict, in-process {engine:8.2} ms");
    println!("  gRPC Predict, end to end   {grpc:8.2} ms");
    println!(
        "  server overhead            {:8.2} ms = {:.1} % of the model time",
        grpc - raw,
        100.0 * (grpc - raw) / raw
    );
}
