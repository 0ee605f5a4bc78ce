//! `integrad predict`: top-k classes for an image or tensor.

use clap::Args;

use super::ClientArgs;
use crate::proto::integrad::v1 as pb;

#[derive(Debug, Clone, Args)]
pub struct PredictArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// How many classes to print, best first [default: 5, or all classes if fewer].
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub top_k: u32,
    /// Print JSON: {"top": [{"class_index", "label", "probability", "logit"}, ...]}.
    #[arg(long)]
    pub json: bool,
}

pub async fn run_predict(args: PredictArgs) -> anyhow::Result<()> {
    let (top_k, json) = (args.top_k, args.json);
    let args = args.client;
    let (input, inputs) = args.input.read()?;
    let args = args.endpoint;
    let request = pb::PredictRequest {
        model: args.model.clone().unwrap_or_default(),
        input,
        inputs,
        top_k,
    };
    let response = match &args.server {
        Some(url) => {
            let mut client = super::connect(url, &args.connect).await?;
            client = client
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20);
            client
                .predict(request)
                .await
                .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?
                .into_inner()
        }
        None => {
            super::local_engine(&args.models, &args.runtime, None)
                .await?
                .predict(request)
                .await?
        }
    };
    print(&response, json)
}

fn print(response: &pb::PredictResponse, json: bool) -> anyhow::Result<()> {
    // A score head has no classes: its output's values are the prediction.
    let values = match &response.logits {
        Some(t) if response.top.is_empty() && t.dtype == pb::DataType::Float32 as i32 => {
            crate::wire::f32s(&t.data)
        }
        _ => Vec::new(),
    };
    if json {
        let top: Vec<serde_json::Value> = response
            .top
            .iter()
            .map(|p| serde_json::json!({"class_index": p.class_index, "label": p.label, "probability": p.probability, "logit": p.logit}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "model": response.model, "top": top, "values": values })
            )?
        );
    } else {
        println!("model {}", response.model);
        for (i, value) in values.iter().enumerate() {
            println!("  output {i}: {value:.4}");
        }
        for (rank, p) in response.top.iter().enumerate() {
            println!(
                "{:>3}. {:<40} class {:>5}  probability {:.4}  logit {:.3}",
                rank + 1,
                p.label,
                p.class_index,
                p.probability,
                p.logit
            );
        }
    }
    Ok(())
}
