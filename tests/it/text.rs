//! Text models through a real server: the sentiment demo (models/sentiment: all-MiniLM-L6-v2
//! with a fine-tuned head, tokenizer.json beside it) against Captum's
//! LayerIntegratedGradients on the same weights (tests/data/text/README.md), the tokenizer
//! against Python's `tokenizers`, batches of texts of different lengths, and bad input.

use std::collections::HashMap;

use crate::common;

use common::{first_explanation, relative_l2, root, TestServer};
use integrad::proto::integrad::v1 as pb;
use serde_json::Value;
use tonic::Code;

const MODEL: &str = "sentiment";
const WORD_EMBEDDINGS: &str = "/bert/embeddings/word_embeddings/Gather_output_0";

type Client = pb::explainer_client::ExplainerClient<tonic::transport::Channel>;

/// A server of the sentiment model alone (its folder linked into a repository of its own, so
/// that the image model's gradient graphs are not built for these tests).
async fn server() -> (TestServer, tempfile::TempDir) {
    let repo = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(root().join("models/sentiment"), repo.path().join(MODEL)).unwrap();
    let server = TestServer::start(&["--models", repo.path().to_str().unwrap()]).await;
    (server, repo)
}

fn text(text: &str) -> Option<pb::Input> {
    Some(pb::Input {
        kind: Some(pb::input::Kind::Text(pb::Text {
            text: text.into(),
            pair: String::new(),
        })),
    })
}

fn request(sentence: &str) -> pb::ExplainRequest {
    pb::ExplainRequest {
        model: MODEL.into(),
        input: text(sentence),
        steps: Some(50),
        ..Default::default()
    }
}

fn values(t: &pb::Tensor) -> Vec<f32> {
    integrad::wire::f32s(&t.data)
}

fn json(name: &str) -> Value {
    let path = root().join("tests/data/text").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Pearson correlation.
fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

async fn explain_batch(
    client: &mut Client,
    request: pb::ExplainBatchRequest,
) -> Vec<pb::Explanation> {
    let mut stream = client.explain_batch(request).await.unwrap().into_inner();
    let mut results = Vec::new();
    while let Some(event) = stream.message().await.unwrap() {
        match event.event {
            Some(pb::explain_event::Event::Result(r)) => results.push(r),
            Some(pb::explain_event::Event::Results(r)) => results.extend(r.explanations),
            _ => {}
        }
    }
    results.sort_by_key(|r| r.instance);
    results
}

#[tokio::test]
async fn should_predict_and_explain_a_sentence_token_by_token() {
    let (server, _repo) = server().await;
    let mut client = server.client().await;
    let info = client
        .get_model(pb::GetModelRequest {
            model: MODEL.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let text_info = info.text.expect("a text model");
    assert_eq!(text_info.ids, "input_ids");
    assert_eq!(text_info.max_length, 128);
    assert_eq!(text_info.pad_token, "[PAD]");
    let points: Vec<&str> = info
        .attribution_points
        .iter()
        .map(|p| p.tensor.as_str())
        .collect();
    assert_eq!(
        points,
        [WORD_EMBEDDINGS],
        "the ids' lookup alone, not the token types'"
    );

    let sentence = "I loved this movie";
    let predicted = client
        .predict(pb::PredictRequest {
            model: MODEL.into(),
            input: text(sentence),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(predicted.top[0].label, "positive");

    let r = first_explanation(&mut client, request(sentence))
        .await
        .unwrap();
    assert_eq!(r.label, "positive");
    let tokens: Vec<&str> = r.tokens.iter().map(|t| t.token.as_str()).collect();
    assert_eq!(tokens, ["[CLS]", "i", "loved", "this", "movie", "[SEP]"]);
    // The baseline keeps [CLS] and [SEP]: x = x' there, so exactly 0.
    for t in r.tokens.iter().filter(|t| t.special) {
        assert_eq!(t.attribution, 0.0, "{}", t.token);
    }
    for t in r.tokens.iter().filter(|t| !t.special) {
        let cut: String = sentence
            .chars()
            .skip(t.start as usize)
            .take((t.end - t.start) as usize)
            .collect();
        assert_eq!(cut.to_lowercase(), t.token);
    }
    let words: Vec<&str> = r.words.iter().map(|w| w.word.as_str()).collect();
    assert_eq!(words, ["I", "loved", "this", "movie"]);
    let best = r
        .words
        .iter()
        .max_by(|a, b| a.attribution.total_cmp(&b.attribution))
        .unwrap();
    assert_eq!(best.word, "loved", "{:?}", r.words);
    // Tokens sum to the whole attribution (completeness is over the tensor).
    let token_sum: f32 = r.tokens.iter().map(|t| t.attribution).sum();
    assert!(
        (token_sum - r.attribution_sum).abs() < 1e-4,
        "{token_sum} vs {}",
        r.attribution_sum
    );
    // 50 trapezoid steps close this sentence to 1e-4 of F(x) - F(x') in Captum too
    // (tests/data/text/README.md: 2.6e-4 relative at most for its probability cases).
    let gap = (r.score_input - r.score_baseline).abs();
    assert!(
        r.convergence_delta.abs() < 1e-2 * gap,
        "{} vs {gap}",
        r.convergence_delta
    );
    assert!(!r.truncated);
}

/// Captum's LayerIntegratedGradients in float64 on the same weights; integrad in float32
/// through the same quadrature nodes. What differs is float32 rounding through six attention
/// layers (about 1e-6 relative per logit, tests/data/text/README.md) and in the sums over 50
/// alphas. The bounds: per-token correlation above 0.9995 and relative L2 under 2e-2,
/// for the tokens and the whole [tokens, 384] tensor; a wrong baseline (zeros instead of pad
/// embeddings), a lost scale (Captum's trapezoid sums to 50/51) or the wrong target is off by
/// far more.
#[tokio::test]
async fn should_match_captum_layer_integrated_gradients() {
    let (server, _repo) = server().await;
    let mut client = server.client().await;
    let fixtures = json("captum.json");
    let point_of = |layer: &str| {
        fixtures["attribution_points"][layer]["tensor"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // One ExplainBatch per (layer, objective, method), every sentence in it.
    let sentences = fixtures["sentences"].as_array().unwrap();
    // (layer, objective, method) -> (sentence, case).
    type Key = (String, String, String);
    let mut groups: HashMap<Key, Vec<(usize, &Value)>> = HashMap::new();
    for (s, sentence) in sentences.iter().enumerate() {
        for case in sentence["cases"].as_array().unwrap() {
            let key = |k: &str| case[k].as_str().unwrap().to_string();
            groups
                .entry((key("layer"), key("objective"), key("method")))
                .or_default()
                .push((s, case));
        }
    }
    let (mut worst_corr, mut worst_tokens, mut worst_tensor) = (1f64, 0f64, 0f64);
    for ((layer, objective, method), cases) in &groups {
        let first = cases[0].1;
        let instances = cases
            .iter()
            .map(|(s, _)| pb::Instance {
                input: text(sentences[*s]["sentence"].as_str().unwrap()),
                ..Default::default()
            })
            .collect();
        let results = explain_batch(
            &mut client,
            pb::ExplainBatchRequest {
                request: Some(pb::ExplainRequest {
                    model: MODEL.into(),
                    method: match first["integrad_method"].as_str().unwrap() {
                        "TRAPEZOID" => pb::Method::Trapezoid,
                        _ => pb::Method::GaussLegendre,
                    } as i32,
                    objective: match objective.as_str() {
                        "logit" => pb::Objective::Logit,
                        _ => pb::Objective::Probability,
                    } as i32,
                    steps: Some(first["integrad_steps"].as_u64().unwrap() as u32),
                    attribute_to: vec![point_of(layer)],
                    ..Default::default()
                }),
                instances,
                results_per_event: 64,
            },
        )
        .await;
        assert_eq!(results.len(), cases.len());
        for (r, (s, case)) in results.iter().zip(cases) {
            let sentence = &sentences[*s];
            let what = format!("{:?} {layer} {objective} {method}", sentence["sentence"]);
            assert_eq!(
                r.target_class,
                sentence["target"].as_i64().unwrap(),
                "{what}"
            );
            assert_eq!(
                r.tokens.iter().map(|t| t.id).collect::<Vec<_>>(),
                ints(&sentence["ids"]),
                "{what}"
            );
            let want = floats(&case["token_sums"]);
            let got: Vec<f64> = r.tokens.iter().map(|t| f64::from(t.attribution)).collect();
            let corr = correlation(&got, &want);
            let got32: Vec<f32> = got.iter().map(|&v| v as f32).collect();
            let want32: Vec<f32> = want.iter().map(|&v| v as f32).collect();
            let tokens_l2 = relative_l2(&want32, &got32);
            let (_, reference) = common::fixture(&format!(
                "text/{}",
                case["attribution_file"].as_str().unwrap()
            ));
            let tensor = values(&r.tensor_attributions[&point_of(layer)]);
            let tensor_l2 = relative_l2(&reference, &tensor);
            assert!(corr > 0.9995, "{what}: correlation {corr}");
            assert!(tokens_l2 < 2e-2, "{what}: tokens relative L2 {tokens_l2}");
            assert!(tensor_l2 < 2e-2, "{what}: tensor relative L2 {tensor_l2}");
            let f_input = case["score_input"].as_f64().unwrap();
            assert!((f64::from(r.score_input) - f_input).abs() < 1e-4, "{what}");
            worst_corr = worst_corr.min(corr);
            worst_tokens = worst_tokens.max(tokens_l2);
            worst_tensor = worst_tensor.max(tensor_l2);
        }
    }
    eprintln!(
        "text vs Captum over {} cases: correlation >= {worst_corr:.7}, tokens relative L2 <= {worst_tokens:.2e}, tensor relative L2 <= {worst_tensor:.2e}",
        groups.values().map(|c| c.len()).sum::<usize>()
    );
}

/// ExplainBatch pads nothing: texts of different lengths run in runs of their own length,
/// and an instance alone and in a batch agree (the ordering of float32 sums is the only
/// difference, well under 1e-5 relative).
#[tokio::test]
async fn should_explain_texts_alone_as_in_a_batch() {
    let (server, _repo) = server().await;
    let mut client = server.client().await;
    let sentences = [
        "I loved this movie",
        "The service was slow and the food was cold.",
        "ok",
        "What a wonderful, surprising and moving story that was!",
        "I hate waiting.",
        "The service was slow and the food was hot.",
    ];
    let instances = sentences
        .iter()
        .map(|s| pb::Instance {
            input: text(s),
            ..Default::default()
        })
        .collect();
    let batch = explain_batch(
        &mut client,
        pb::ExplainBatchRequest {
            request: Some(pb::ExplainRequest {
                model: MODEL.into(),
                steps: Some(50),
                ..Default::default()
            }),
            instances,
            results_per_event: 0,
        },
    )
    .await;
    assert_eq!(batch.len(), sentences.len());
    for (i, sentence) in sentences.iter().enumerate() {
        let alone = first_explanation(&mut client, request(sentence))
            .await
            .unwrap();
        let in_batch = &batch[i];
        assert_eq!(in_batch.instance, i as u32);
        assert_eq!(alone.target_class, in_batch.target_class);
        let (a, b) = (
            values(alone.attributions.as_ref().unwrap()),
            values(in_batch.attributions.as_ref().unwrap()),
        );
        let l2 = relative_l2(&a, &b);
        assert!(
            l2 < 1e-5,
            "{sentence:?}: relative L2 {l2} alone vs in a batch"
        );
        assert!((alone.score_input - in_batch.score_input).abs() < 1e-6);
    }
}

#[tokio::test]
async fn should_report_truncation_and_take_the_baselines_asked_for() {
    let (server, _repo) = server().await;
    let mut client = server.client().await;
    let long = "good ".repeat(200);
    let r = first_explanation(&mut client, request(&long))
        .await
        .unwrap();
    assert!(r.truncated);
    assert_eq!(r.tokens.len(), 128);

    // [UNK] at every ordinary token: a different baseline, so a different F(x').
    let sentence = "I loved this movie";
    let pad = first_explanation(&mut client, request(sentence))
        .await
        .unwrap();
    let mut unk_request = request(sentence);
    unk_request.baseline = Some(pb::Baseline {
        kind: Some(pb::baseline::Kind::Text(pb::TextBaseline {
            token: pb::TextBaselineToken::Unk as i32,
            ids: Vec::new(),
        })),
        samples: 0,
    });
    let unk = first_explanation(&mut client, unk_request).await.unwrap();
    assert!((unk.score_baseline - pad.score_baseline).abs() > 1e-3);
    // The same baseline as explicit ids: [CLS] pad pad pad pad [SEP] gives the pad answer.
    let mut ids_request = request(sentence);
    ids_request.baseline = Some(pb::Baseline {
        kind: Some(pb::baseline::Kind::Text(pb::TextBaseline {
            token: 0,
            ids: vec![101, 0, 0, 0, 0, 102],
        })),
        samples: 0,
    });
    let ids = first_explanation(&mut client, ids_request).await.unwrap();
    assert_eq!(ids.score_baseline, pad.score_baseline);
    // L2 normalisation: the tokens' squares sum to 1, and the result says so.
    let mut l2_request = request(sentence);
    l2_request.token_normalization = pb::TokenNormalization::L2 as i32;
    let l2 = first_explanation(&mut client, l2_request).await.unwrap();
    let norm: f32 = l2.tokens.iter().map(|t| t.attribution.powi(2)).sum();
    assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    assert_eq!(l2.token_normalization, pb::TokenNormalization::L2 as i32);
}

#[tokio::test]
async fn should_refuse_bad_text_input_and_keep_serving() {
    let (server, _repo) = server().await;
    let mut client = server.client().await;
    let refused = |r: Result<pb::Explanation, tonic::Status>| r.unwrap_err();
    for (input, field) in [("", "input.text.text"), ("   \t ", "input.text.text")] {
        let status = refused(first_explanation(&mut client, request(input)).await);
        assert_eq!(status.code(), Code::InvalidArgument, "{input:?}");
        assert!(status.message().contains(field), "{}", status.message());
    }
    // Baseline ids of the wrong length, or outside the vocabulary.
    for (ids, says) in [
        (vec![101, 0, 102], "3 ids for a text of 6 tokens"),
        (vec![101, 0, 0, 0, 99999, 102], "outside the vocabulary"),
    ] {
        let mut r = request("I loved this movie");
        r.baseline = Some(pb::Baseline {
            kind: Some(pb::baseline::Kind::Text(pb::TextBaseline { token: 0, ids })),
            samples: 0,
        });
        let status = refused(first_explanation(&mut client, r).await);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(says), "{}", status.message());
    }
    // Still serving.
    let r = first_explanation(&mut client, request("fine"))
        .await
        .unwrap();
    assert!(!r.tokens.is_empty());
}

#[tokio::test]
async fn should_refuse_text_for_a_model_without_a_tokenizer() {
    let server = TestServer::start(&["--models", root().join("models").to_str().unwrap()]).await;
    let mut client = server.client().await;
    let status = client
        .predict(pb::PredictRequest {
            model: "penguins".into(),
            input: text("a penguin"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("not a text model"),
        "{}",
        status.message()
    );
}

/// A text model whose tokenizer.json is broken fails to load with the reason; the other
/// models keep serving.
#[tokio::test]
async fn should_fail_a_model_with_a_broken_tokenizer_and_serve_the_others() {
    // The weights must be there for the failure to be the tokenizer's (a fresh clone rebuilds
    // them on the first load of the model).
    integrad::model::weights::provision(
        &root().join("models/sentiment"),
        &integrad::runtime::cache_dir_in_use(),
    )
    .unwrap();
    let repo = tempfile::tempdir().unwrap();
    let broken = repo.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    for file in ["model.onnx", "minilm.bin", "labels.txt", "integrad.toml"] {
        std::os::unix::fs::symlink(
            root().join("models/sentiment").join(file),
            broken.join(file),
        )
        .unwrap();
    }
    std::fs::write(broken.join("tokenizer.json"), "{\"model\": 42}").unwrap();
    std::os::unix::fs::symlink(root().join("models/penguins"), repo.path().join("penguins"))
        .unwrap();
    let server = TestServer::start(&["--models", repo.path().to_str().unwrap()]).await;
    let mut client = server.client().await;
    let listed = client
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    let broken = listed.models.iter().find(|m| m.name == "broken").unwrap();
    assert_eq!(broken.state, pb::ModelState::Failed as i32);
    assert!(broken.error.contains("tokenizer.json"), "{}", broken.error);
    let penguins = listed.models.iter().find(|m| m.name == "penguins").unwrap();
    assert_eq!(penguins.state, pb::ModelState::Ready as i32);
}

/// Ids, token types, tokens, offsets (code points), special tokens and truncation equal
/// Python `tokenizers` on the fixture's texts (emoji, CJK, accents, control characters, empty
/// and whitespace-only strings, pairs, texts past 128 tokens).
#[test]
fn should_tokenize_as_python_tokenizers_does() {
    let cases = json("tokenizer_cases.json");
    let inputs: Vec<integrad::model::TensorSpec> =
        ["input_ids", "attention_mask", "token_type_ids"]
            .iter()
            .map(|name| integrad::model::TensorSpec {
                name: name.to_string(),
                dtype: integrad::model::DType::I64,
                shape: vec![-1, -1],
            })
            .collect();
    let spec =
        integrad::text::TextSpec::load(&root().join("models/sentiment"), None, &inputs, None)
            .unwrap()
            .unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 200);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let pair = case["pair"].as_str();
        let t = spec.encode(text, pair).unwrap();
        let what = format!("{text:?} / {pair:?}");
        assert_eq!(t.ids, ints(&case["ids"]), "{what}");
        assert_eq!(t.type_ids, ints(&case["type_ids"]), "{what}");
        let tokens: Vec<&str> = case["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(t.tokens, tokens, "{what}");
        let offsets: Vec<(u32, u32)> = case["offsets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| (o[0].as_u64().unwrap() as u32, o[1].as_u64().unwrap() as u32))
            .collect();
        assert_eq!(t.offsets, offsets, "{what}");
        let special: Vec<bool> = ints(&case["special_tokens_mask"])
            .iter()
            .map(|&s| s != 0)
            .collect();
        assert_eq!(t.special, special, "{what}");
        let sequence: Vec<Option<usize>> = case["sequence_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().map(|s| s as usize))
            .collect();
        assert_eq!(t.sequence, sequence, "{what}");
        assert_eq!(
            t.truncated,
            case["overflowing"].as_bool().unwrap(),
            "{what}"
        );
    }
}

async fn integrad(args: &[&str]) -> std::process::Output {
    common::integrad(common::strings(args)).await
}

/// `integrad explain --text` against a server: the words with their attributions on stdout
/// (plain, not a terminal), explanation.json with tokens and words, tokens.html and
/// tokens.png; `explain-batch` of text rows (JSON lines, a label left out) to results.
#[tokio::test]
async fn should_explain_texts_from_the_cli() {
    let (server, _repo) = server().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("one");
    let sentence = "The food was cold & the staff <rude>.";
    let run = integrad(&[
        "explain",
        "--server",
        &server.url,
        "--model",
        MODEL,
        "--text",
        sentence,
        "--out",
        out.to_str().unwrap(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("\"negative\""), "{stdout}");
    assert!(stdout.contains("cold["), "{stdout}");
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("explanation.json")).unwrap())
            .unwrap();
    let words: Vec<&str> = json["words"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["word"].as_str().unwrap())
        .collect();
    assert_eq!(
        words,
        ["The", "food", "was", "cold", "&", "the", "staff", "<", "rude", ">", "."]
    );
    assert_eq!(json["tokens"][0]["token"], "[CLS]");
    let html = std::fs::read_to_string(out.join("tokens.html")).unwrap();
    assert!(
        html.contains("&lt;</mark>") && html.contains(">rude</mark>"),
        "escaped and marked"
    );
    assert!(html.contains("negative"));
    let png = image::open(out.join("tokens.png")).unwrap().to_rgb8();
    // Some word is on a strong red or blue background.
    let strong = png
        .pixels()
        .any(|p| p.0 == [214, 39, 40] || p.0 == [31, 119, 180]);
    assert!(strong, "no word coloured at full strength");

    let rows = dir.path().join("rows.jsonl");
    std::fs::write(
        &rows,
        "{\"text\": \"I loved this movie\", \"label\": 1}\n{\"text\": \"Terrible service.\", \"label\": 0}\n",
    )
    .unwrap();
    let results = dir.path().join("results.jsonl");
    let run = integrad(&[
        "explain-batch",
        "--server",
        &server.url,
        "--model",
        MODEL,
        "--exclude",
        "label",
        "--input",
        rows.to_str().unwrap(),
        "--out",
        results.to_str().unwrap(),
    ])
    .await;
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let lines: Vec<Value> = std::fs::read_to_string(&results)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let labels: Vec<&str> = lines.iter().map(|l| l["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["positive", "negative"]);
    assert_eq!(lines[0]["words"][1]["word"], "loved");
}

/// `--model-file M.onnx --tokenizer FILE` makes an ad-hoc text model (here the demo's graph
/// and weights without its folder's tokenizer.json or integrad.toml); without it, a text is
/// refused as for any model that is not a text model.
#[tokio::test]
async fn should_take_a_tokenizer_for_a_model_file() {
    integrad::model::weights::provision(
        &root().join("models/sentiment"),
        &integrad::runtime::cache_dir_in_use(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for file in ["model.onnx", "minilm.bin"] {
        std::os::unix::fs::symlink(
            root().join("models/sentiment").join(file),
            dir.path().join(file),
        )
        .unwrap();
    }
    let model = dir.path().join("model.onnx");
    let tokenizer = root().join("models/sentiment/tokenizer.json");
    let with = integrad(&[
        "predict",
        "--model-file",
        model.to_str().unwrap(),
        "--tokenizer",
        tokenizer.to_str().unwrap(),
        "--text",
        "I loved this movie",
        "--json",
    ])
    .await;
    assert!(
        with.status.success(),
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
    let json: Value = serde_json::from_slice(&with.stdout).unwrap();
    assert_eq!(
        json["top"][0]["class_index"], 1,
        "positive, as the served demo says"
    );
    let without = integrad(&[
        "predict",
        "--model-file",
        model.to_str().unwrap(),
        "--text",
        "I loved this movie",
    ])
    .await;
    assert!(!without.status.success());
    let stderr = String::from_utf8_lossy(&without.stderr);
    assert!(stderr.contains("not a text model"), "{stderr}");
}

/// Both classes of the binary sentiment head in one Explain (top-k 2): each explanation has
/// its own tokens, equal to the same target explained alone; and since p(negative) =
/// 1 - p(positive), the two classes' token attributions are each other's negatives.
#[tokio::test]
async fn should_explain_the_top_k_classes_of_a_text() {
    let (server, _repo) = server().await;
    let mut client = server.client().await;
    let sentence = "The staff were friendly but the room was filthy.";
    let mut stream = client
        .explain(pb::ExplainRequest {
            target: Some(pb::Target {
                kind: Some(pb::target::Kind::TopK(2)),
            }),
            ..request(sentence)
        })
        .await
        .unwrap()
        .into_inner();
    let mut results = Vec::new();
    while let Some(event) = stream.message().await.unwrap() {
        if let Some(pb::explain_event::Event::Result(r)) = event.event {
            results.push(r);
        }
    }
    assert_eq!(results.len(), 2);
    let classes: Vec<i64> = results.iter().map(|r| r.target_class).collect();
    assert!(classes.contains(&0) && classes.contains(&1), "{classes:?}");
    let tokens = |r: &pb::Explanation| -> Vec<f64> {
        r.tokens.iter().map(|t| f64::from(t.attribution)).collect()
    };
    for r in &results {
        let alone = first_explanation(
            &mut client,
            pb::ExplainRequest {
                target: Some(pb::Target {
                    kind: Some(pb::target::Kind::ClassIndex(r.target_class)),
                }),
                ..request(sentence)
            },
        )
        .await
        .unwrap();
        // The same alphas through the same graph, only grouped into runs differently: f32
        // rounding apart, as for texts alone and in a batch.
        let (a, b): (Vec<f32>, Vec<f32>) = (
            tokens(&alone).iter().map(|&v| v as f32).collect(),
            tokens(r).iter().map(|&v| v as f32).collect(),
        );
        let l2 = relative_l2(&a, &b);
        assert!(l2 < 1e-5, "class {}: relative L2 {l2}", r.target_class);
        assert_eq!(alone.tokens.len(), r.tokens.len());
        // The tokens add up to the attribution sum (the sum is over the same values in f64;
        // the tokens are f32 sums over the hidden axis).
        let sum: f64 = tokens(r).iter().sum();
        assert!(
            (sum - f64::from(r.attribution_sum)).abs() <= 1e-4 * sum.abs().max(1e-3),
            "{sum} vs {}",
            r.attribution_sum
        );
    }
    // d p0 = -d p1 along the whole path: the attributions negate, up to the f32 rounding of
    // two separately computed softmax gradients (about 1e-7 relative per value, far below 1e-4).
    let (first, second) = (tokens(&results[0]), tokens(&results[1]));
    let norm: f64 = first.iter().map(|v| v * v).sum::<f64>().sqrt();
    let gap: f64 = first
        .iter()
        .zip(&second)
        .map(|(a, b)| (a + b) * (a + b))
        .sum::<f64>()
        .sqrt();
    assert!(gap <= 1e-4 * norm, "{first:?} vs {second:?}");
}

/// The longest text a model takes: `[text] max_length`, else the tokenizer's truncation or the
/// position-embedding table, whichever is shorter; a max_length past the table is refused at
/// load. The small BERT of the autodiff tests has 64 positions; its tokenizer here is the
/// demo's (truncation 128), with and without its truncation.
#[tokio::test]
async fn should_take_the_max_length_from_the_position_table() {
    let repo = tempfile::tempdir().unwrap();
    let tokenizer: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("models/sentiment/tokenizer.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(tokenizer["truncation"]["max_length"], 128);
    let mut untruncated = tokenizer.clone();
    untruncated["truncation"] = Value::Null;
    let cases: [(&str, &Value, &str); 4] = [
        ("tokenizer-128", &tokenizer, ""),
        ("no-truncation", &untruncated, ""),
        ("config-32", &tokenizer, "[text]\nmax_length = 32\n"),
        ("config-100", &untruncated, "[text]\nmax_length = 100\n"),
    ];
    for (name, tokenizer, config) in cases {
        let dir = repo.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::copy(
            root().join("tests/data/autodiff/bert/bert_cls_script.onnx"),
            dir.join("model.onnx"),
        )
        .unwrap();
        std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
        std::fs::write(dir.join("integrad.toml"), config).unwrap();
    }
    let server = TestServer::start(&["--models", repo.path().to_str().unwrap()]).await;
    let mut client = server.client().await;
    let models = client
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    let model = |name: &str| models.iter().find(|m| m.name == name).unwrap().clone();
    let max_length = |name: &str| model(name).text.map(|t| t.max_length);
    assert_eq!(
        max_length("tokenizer-128"),
        Some(64),
        "{:?}",
        model("tokenizer-128")
    );
    assert_eq!(max_length("no-truncation"), Some(64));
    assert_eq!(max_length("config-32"), Some(32));
    let refused = model("config-100");
    assert_eq!(refused.state, pb::ModelState::Failed as i32, "{refused:?}");
    assert!(
        refused.error.contains("max_length 100") && refused.error.contains("64 positions"),
        "{}",
        refused.error
    );
}

/// `integrad fetch-weights` builds a weights file that a folder has only as weights.json
/// (what a read-only container image runs at build time), byte for byte the file the server
/// builds at load; a manifest that pins other bytes fails the command and names the folder.
#[tokio::test]
async fn should_fetch_weights_ahead_of_serving() {
    let served = integrad::model::weights::provision(
        &root().join("models/sentiment"),
        &integrad::runtime::cache_dir_in_use(),
    )
    .unwrap()
    .expect("the demo ships a manifest");
    let repo = tempfile::tempdir().unwrap();
    let folder = repo.path().join("sentiment");
    std::fs::create_dir(&folder).unwrap();
    std::fs::copy(
        root().join("models/sentiment/weights.json"),
        folder.join("weights.json"),
    )
    .unwrap();
    let run = integrad(&["fetch-weights", "--models", repo.path().to_str().unwrap()]).await;
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let built = std::fs::read(folder.join("minilm.bin")).unwrap();
    assert!(
        built == std::fs::read(&served).unwrap(),
        "the file differs from the server's"
    );

    let manifest = std::fs::read_to_string(folder.join("weights.json")).unwrap();
    let mut manifest: Value = serde_json::from_str(&manifest).unwrap();
    manifest["sha256"] = Value::String("0".repeat(64));
    std::fs::write(folder.join("weights.json"), manifest.to_string()).unwrap();
    let run = integrad(&["fetch-weights", "--models", repo.path().to_str().unwrap()]).await;
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    assert!(
        stderr.contains(&folder.display().to_string()) && stderr.contains("sha256"),
        "{stderr}"
    );
}
