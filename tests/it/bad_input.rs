//! Every kind of bad input gets a clear message with the right gRPC status, and the server
//! keeps serving afterwards.

use crate::common;

use common::*;
use integrad::proto::integrad::v1 as pb;
use tonic::Code;

const GOOD: &str = "efficientnet-lite0";

/// A repository with the demo model (a symlink, as Kubernetes volumes are), a file that is
/// not ONNX, and a directory with no model at all.
fn mixed_repository() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(demo_models().join(GOOD), dir.path().join(GOOD)).unwrap();
    std::fs::create_dir(dir.path().join("broken")).unwrap();
    std::fs::write(
        dir.path().join("broken/model.onnx"),
        b"this is a text file, not an ONNX model",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    dir
}

/// A well-formed PNG whose header claims 100000 x 100000 pixels (30 GB as RGB) and whose
/// data is a few bytes: a decoder that trusts the header allocates 30 GB.
fn png_claiming_huge_size() -> Vec<u8> {
    let mut header = 100_000u32.to_be_bytes().to_vec();
    header.extend_from_slice(&100_000u32.to_be_bytes());
    header.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter, no interlace
    let empty_zlib = [0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01];
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, body) in [
        (&b"IHDR"[..], &header[..]),
        (b"IDAT", &empty_zlib),
        (b"IEND", &[]),
    ] {
        png.extend_from_slice(&(body.len() as u32).to_be_bytes());
        let chunk: Vec<u8> = kind.iter().chain(body).copied().collect();
        png.extend_from_slice(&chunk);
        png.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn assert_status(
    result: Result<tonic::Response<pb::PredictResponse>, tonic::Status>,
    code: Code,
    mentions: &str,
) {
    let status = result.expect_err("the request must be refused");
    assert_eq!(status.code(), code, "{}", status.message());
    assert!(
        status
            .message()
            .to_lowercase()
            .contains(&mentions.to_lowercase()),
        "message {:?} should mention {mentions:?}",
        status.message()
    );
}

#[tokio::test]
async fn should_refuse_bad_input_and_keep_serving() {
    let repo = mixed_repository();
    let server = TestServer::start(&["--models", repo.path().to_str().unwrap()]).await;
    let mut client = server.client().await;

    // Models: the broken ones are listed with their reasons and do not take the good one down.
    let list = client
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    let state = |name: &str| list.models.iter().find(|m| m.name == name).unwrap().clone();
    assert_eq!(state(GOOD).state, pb::ModelState::Ready as i32);
    assert_eq!(state("broken").state, pb::ModelState::Failed as i32);
    assert!(
        state("broken").error.contains("not an ONNX model"),
        "{}",
        state("broken").error
    );
    assert!(
        state("empty").error.contains("no model.onnx"),
        "{}",
        state("empty").error
    );

    let coffee = sample("coffee.png");
    assert_status(
        client
            .predict(image_request("resnet", coffee.clone(), 1))
            .await,
        Code::NotFound,
        "resnet",
    );
    assert_status(
        client
            .predict(image_request("broken", coffee.clone(), 1))
            .await,
        Code::FailedPrecondition,
        "not an ONNX model",
    );
    let info = client
        .get_model(pb::GetModelRequest {
            model: "broken".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        info.state,
        pb::ModelState::Failed as i32,
        "GetModel describes a failed model instead of failing"
    );

    // Images.
    assert_status(
        client.predict(image_request(GOOD, Vec::new(), 1)).await,
        Code::InvalidArgument,
        "empty",
    );
    assert_status(
        client
            .predict(image_request(GOOD, coffee[..coffee.len() / 2].to_vec(), 1))
            .await,
        Code::InvalidArgument,
        "decode",
    );
    // A JPEG cut short: its decoder would fill the missing rows with grey and predict.
    let rocket = sample("rocket.jpg");
    assert_status(
        client
            .predict(image_request(GOOD, rocket[..5000].to_vec(), 1))
            .await,
        Code::InvalidArgument,
        "cut short",
    );
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    assert_status(
        client.predict(image_request(GOOD, noise, 1)).await,
        Code::InvalidArgument,
        "not recognised",
    );
    assert_status(
        client
            .predict(image_request(GOOD, png_claiming_huge_size(), 1))
            .await,
        Code::InvalidArgument,
        "above the limit",
    );

    // Tensors.
    let (shape, data) = fixture("coffee_input.npy");
    assert_status(
        client
            .predict(tensor_request(
                GOOD,
                &[3, 224, 225],
                &vec![0.0; 3 * 224 * 225],
            ))
            .await,
        Code::InvalidArgument,
        "shape",
    );
    assert_status(
        client
            .predict(tensor_request(GOOD, &[1, 3, 224, 224], &data))
            .await,
        Code::InvalidArgument,
        "without the batch",
    );
    let mut short = tensor_request(GOOD, &shape, &data);
    if let Some(pb::input::Kind::Tensor(t)) = short.input.as_mut().and_then(|i| i.kind.as_mut()) {
        t.data.truncate(t.data.len() - 4);
    }
    assert_status(client.predict(short).await, Code::InvalidArgument, "bytes");
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut poisoned = data.clone();
        poisoned[1234] = bad;
        assert_status(
            client
                .predict(tensor_request(GOOD, &shape, &poisoned))
                .await,
            Code::InvalidArgument,
            "element 1234",
        );
    }
    let mut wrong_type = tensor_request(GOOD, &shape, &data);
    if let Some(pb::input::Kind::Tensor(t)) =
        wrong_type.input.as_mut().and_then(|i| i.kind.as_mut())
    {
        t.dtype = pb::DataType::Int64 as i32;
        t.data.extend(vec![0u8; t.data.len()]);
    }
    assert_status(
        client.predict(wrong_type).await,
        Code::InvalidArgument,
        "dtype",
    );
    let no_input = pb::PredictRequest {
        model: GOOD.into(),
        input: None,
        top_k: 1,
        ..Default::default()
    };
    assert_status(
        client.predict(no_input).await,
        Code::InvalidArgument,
        "input",
    );
    assert_status(
        client
            .predict(image_request(GOOD, coffee.clone(), 1001))
            .await,
        Code::InvalidArgument,
        "top_k",
    );

    // Explain checks its input like Predict does, before any work.
    let explain = client
        .explain(pb::ExplainRequest {
            model: GOOD.into(),
            ..Default::default()
        })
        .await;
    assert_eq!(explain.err().map(|s| s.code()), Some(Code::InvalidArgument));

    // And after all that, the server still answers.
    let ok = client
        .predict(image_request(GOOD, coffee, 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.top[0].label, "espresso");
    server.stop().await;
}

/// The default model is the only model that loaded: models that failed to load are no
/// candidates, so one good model beside broken ones serves requests that name none, on the
/// server and in in-process commands alike. With two loaded, a request must name one.
#[tokio::test]
async fn should_default_to_the_only_model_that_loaded() {
    let repo = mixed_repository();
    let dir = repo.path().to_str().unwrap();
    let server = TestServer::start(&["--models", dir]).await;
    let mut client = server.client().await;
    let list = client
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.models.len(), 3, "the failed models are still listed");
    assert_eq!(list.default_model, GOOD, "one of three loaded: the default");
    let predicted = client
        .predict(image_request("", sample("coffee.png"), 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(predicted.model, GOOD);
    assert_eq!(predicted.top[0].label, "espresso");
    server.stop().await;

    let coffee = root().join("samples/coffee.png");
    let out = integrad(strings(&[
        "predict",
        coffee.to_str().unwrap(),
        "--models",
        dir,
        "--json",
    ]))
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["model"], GOOD, "{json}");

    std::os::unix::fs::symlink(demo_models().join("penguins"), repo.path().join("penguins"))
        .unwrap();
    let server = TestServer::start(&["--models", dir]).await;
    let mut client = server.client().await;
    let list = client
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        list.default_model, "",
        "two of four loaded and no --default-model: no default"
    );
    assert_status(
        client
            .predict(image_request("", sample("coffee.png"), 1))
            .await,
        Code::InvalidArgument,
        "names no model",
    );
    server.stop().await;
}
