use super::*;

/// The demo sentiment model's tokenizer (BERT uncased WordPiece, truncation at 128).
fn spec() -> TextSpec {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/sentiment");
    let inputs: Vec<TensorSpec> = ["input_ids", "attention_mask", "token_type_ids"]
        .iter()
        .map(|name| TensorSpec {
            name: name.to_string(),
            dtype: DType::I64,
            shape: vec![-1, -1],
        })
        .collect();
    TextSpec::load(&dir, None, &inputs, None)
        .unwrap()
        .expect("a tokenizer.json")
}

/// The code points `[start, end)` of `text`.
fn cut(text: &str, (start, end): (u32, u32)) -> String {
    text.chars()
        .skip(start as usize)
        .take((end - start) as usize)
        .collect()
}

#[test]
fn should_find_the_inputs_and_tokens_by_their_usual_names() {
    let spec = spec();
    assert_eq!(spec.ids, "input_ids");
    assert_eq!(spec.mask.as_deref(), Some("attention_mask"));
    assert_eq!(spec.type_ids.as_deref(), Some("token_type_ids"));
    // From the file's own truncation and padding settings.
    assert_eq!(spec.max_length, 128);
    assert_eq!(spec.pad, Some(("[PAD]".to_string(), 0)));
    assert_eq!(spec.unk.as_ref().map(|u| u.0.as_str()), Some("[UNK]"));
    assert_eq!(
        spec.mask_token.as_ref().map(|m| m.0.as_str()),
        Some("[MASK]")
    );
}

#[test]
fn should_give_offsets_in_code_points_of_the_original_text() {
    let spec = spec();
    // Accents are stripped by the normaliser and the emoji is one code point of four UTF-8
    // bytes: byte offsets would point past "ok".
    let text = "Café 😀 ok";
    let t = spec.encode(text, None).unwrap();
    assert_eq!(t.tokens.first().map(String::as_str), Some("[CLS]"));
    assert_eq!(t.tokens.last().map(String::as_str), Some("[SEP]"));
    assert_eq!(t.special.first(), Some(&true));
    let ok = t.tokens.iter().position(|s| s == "ok").unwrap();
    assert_eq!(cut(text, t.offsets[ok]), "ok");
    let cafe = t.tokens.iter().position(|s| s == "cafe").unwrap();
    assert_eq!(cut(text, t.offsets[cafe]), "Café");
    assert!(!t.truncated);
    assert_eq!(t.ids.len(), t.attention_mask.len());
    assert!(t.attention_mask.iter().all(|&m| m == 1));
}

#[test]
fn should_truncate_at_the_models_length_and_say_so() {
    let spec = spec();
    let text = "good ".repeat(300);
    let t = spec.encode(&text, None).unwrap();
    assert_eq!(t.ids.len(), 128);
    assert!(t.truncated);
    assert_eq!(t.tokens.last().map(String::as_str), Some("[SEP]"));
}

#[test]
fn should_mark_the_pair_as_the_second_sequence() {
    let spec = spec();
    let t = spec.encode("first", Some("second one")).unwrap();
    let second = t.tokens.iter().position(|s| s == "second").unwrap();
    assert_eq!(t.sequence[second], Some(1));
    assert_eq!(t.type_ids[second], 1);
    assert_eq!(cut("second one", t.offsets[second]), "second");
}

#[test]
fn should_replace_every_token_but_the_special_ones() {
    let spec = spec();
    let t = spec.encode("I loved this movie", None).unwrap();
    let base = TextSpec::replaced(&t, 0);
    assert_eq!(base.len(), t.ids.len());
    for ((&b, &own), &special) in base.iter().zip(&t.ids).zip(&t.special) {
        assert_eq!(b, if special { own } else { 0 });
    }
    assert_eq!(
        base.iter().filter(|&&b| b != 0).count(),
        2,
        "[CLS] and [SEP]"
    );
}

#[test]
fn should_refuse_a_tokenizer_it_cannot_read_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tokenizer.json"),
        "{\"not\": \"a tokenizer\"}",
    )
    .unwrap();
    let error = TextSpec::load(dir.path(), None, &[], None).unwrap_err();
    assert!(error.to_string().contains("tokenizer.json"), "{error}");
}
