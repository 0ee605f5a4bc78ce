//! Limits and backpressure over real gRPC: the message-size limit both ways, the bounded
//! Explain queue with its retry hint, deadlines while queued; the server keeps serving.

use crate::common;

use common::*;
use integrad::proto::integrad::v1 as pb;
use std::time::{Duration, Instant};

use tonic::Code;

fn explain_request(sample_name: &str, steps: u32) -> pb::ExplainRequest {
    pb::ExplainRequest {
        input: Some(pb::Input {
            kind: Some(pb::input::Kind::Image(sample(sample_name))),
        }),
        steps: Some(steps),
        ..Default::default()
    }
}

/// The longest Explain the server allows (--max-steps 4096 by default): minutes of work, so
/// it surely still holds its slot while the test runs; the test cancels it.
fn long_explain() -> pb::ExplainRequest {
    explain_request("rocket.jpg", 4096)
}

#[tokio::test]
async fn should_refuse_messages_over_the_limit_both_ways_and_keep_serving() {
    // 300 000 bytes: between rocket.jpg (112 525 bytes) and coffee.png (466 706 bytes), and
    // below the attributions of one explanation (3 x 224 x 224 float32 = 602 112 bytes).
    let server = TestServer::start(&[
        "--models",
        demo_models().to_str().unwrap(),
        "--max-message-bytes",
        "300000",
    ])
    .await;
    let mut client = server.client().await;

    let too_big = client
        .predict(image_request("", sample("coffee.png"), 1))
        .await
        .unwrap_err();
    assert_eq!(too_big.code(), Code::OutOfRange, "{too_big:?}");
    assert!(
        too_big.message().contains("300000"),
        "{}",
        too_big.message()
    );

    // The request fits but the answer does not: the stream ends with OUT_OF_RANGE rather
    // than a truncated or silently missing explanation.
    let mut stream = client
        .explain(explain_request("rocket.jpg", 2))
        .await
        .unwrap()
        .into_inner();
    let ended = loop {
        match stream.message().await {
            Ok(Some(event)) => assert!(
                matches!(event.event, Some(pb::explain_event::Event::Progress(_))),
                "an explanation over the limit was sent"
            ),
            Ok(None) => panic!("the stream ended without the explanation or an error"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::OutOfRange, "{ended:?}");
    assert!(ended.message().contains("300000"), "{}", ended.message());

    // Still serving, on the same connection.
    let fine = client
        .predict(image_request("", sample("rocket.jpg"), 1))
        .await
        .unwrap();
    assert_eq!(fine.into_inner().top.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn should_refuse_an_explain_at_once_with_a_retry_hint_when_the_queue_is_full() {
    let server = TestServer::one_explain_slot().await;
    let mut client = server.client().await;
    // The response headers come once the Explain holds its slot.
    let mut running = client.explain(long_explain()).await.unwrap().into_inner();
    let first = running.message().await.unwrap().unwrap();
    assert!(matches!(
        first.event,
        Some(pb::explain_event::Event::Progress(_))
    ));

    let refused = client.explain(long_explain()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("--max-queued-explains"),
        "{}",
        refused.message()
    );
    let pushback: u64 = refused
        .metadata()
        .get("grpc-retry-pushback-ms")
        .expect("grpc-retry-pushback-ms")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(pushback > 0);
    let retry_after: u64 = refused
        .metadata()
        .get("retry-after")
        .expect("retry-after")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);

    // Predict is not behind the Explain gate: still served while the Explain runs.
    let predicted = client
        .predict(image_request("", sample("rocket.jpg"), 1))
        .await;
    assert!(predicted.is_ok(), "{predicted:?}");
    drop(running); // cancels the long Explain
    server.stop().await;
}

#[tokio::test]
async fn should_honour_the_deadline_of_a_queued_explain_and_free_its_place() {
    let server = TestServer::start(&[
        "--models",
        demo_models().to_str().unwrap(),
        "--max-concurrent-explains",
        "1",
        "--max-queued-explains",
        "1",
    ])
    .await;
    let mut client = server.client().await;
    let running = client.explain(long_explain()).await.unwrap().into_inner();

    // Two queued Explains one after the other, each with a deadline: the first takes the
    // only queue place and must give it up when its deadline passes, or the second would be
    // refused with RESOURCE_EXHAUSTED instead of waiting out its own deadline.
    for attempt in 0..2 {
        let mut request = tonic::Request::new(long_explain());
        request.set_timeout(std::time::Duration::from_secs(1));
        let expired = client.explain(request).await.unwrap_err();
        // tonic reports a passed deadline as CANCELLED ("Timeout expired") on its side;
        // other gRPC stacks say DEADLINE_EXCEEDED. Either way not an overload refusal.
        assert!(
            matches!(expired.code(), Code::DeadlineExceeded | Code::Cancelled),
            "attempt {attempt}: {expired:?}"
        );
    }
    drop(running);
    server.stop().await;
}

/// An Explain's `elapsed_ms` is wall time from the request: the time it waited for a slot
/// behind another Explain is in it.
#[tokio::test]
async fn should_count_the_wait_for_a_slot_in_elapsed_ms() {
    let server = TestServer::start(&[
        "--models",
        demo_models().to_str().unwrap(),
        "--max-concurrent-explains",
        "1",
    ])
    .await;
    let mut client = server.client().await;
    let mut running = client.explain(long_explain()).await.unwrap().into_inner();
    running.message().await.unwrap().unwrap(); // it holds the only slot

    let mut queued_client = client.clone();
    let sent = Instant::now();
    let queued = tokio::spawn(async move {
        let explanation =
            first_explanation(&mut queued_client, explain_request("chelsea.png", 4)).await;
        (explanation, sent.elapsed())
    });
    let queued_for = Duration::from_millis(1500);
    tokio::time::sleep(queued_for).await;
    assert!(
        !queued.is_finished(),
        "the second Explain waits for the first's slot"
    );
    drop(running); // cancels the long Explain, which frees its slot
    let (explanation, seen) = queued.await.unwrap();
    let explanation = explanation.unwrap();
    assert!(seen >= queued_for);
    // The client's clock also runs while the request crosses the loopback and is decoded,
    // and while the result is encoded, crosses back and is decoded (a 3 x 224 x 224 float
    // attribution, 600 kB): a few milliseconds the server cannot see. 50 ms covers them on a
    // loaded machine; the wait for the slot this test is about is 1.5 s.
    let unseen_ms = 50.0;
    let seen_ms = seen.as_secs_f32() * 1e3;
    assert!(
        explanation.elapsed_ms >= seen_ms - unseen_ms,
        "elapsed_ms {} but the client waited {seen_ms} ms for the result",
        explanation.elapsed_ms
    );
    assert!(
        explanation.elapsed_ms <= seen_ms,
        "{} > {seen_ms}",
        explanation.elapsed_ms
    );
    server.stop().await;
}
