//! A text explanation for people: the words coloured by attribution in a terminal, and a
//! self-contained HTML heat map (the table Captum's `visualize_text` draws: label, scores,
//! attribution sum, then the text with each word's background in red for positive and blue
//! for negative attributions, the stronger the larger).

use std::fmt::Write;

use crate::proto::integrad::v1 as pb;

/// The text (and pair) as sent, with each word's span and attribution.
pub struct Shown<'a> {
    pub text: &'a str,
    pub pair: &'a str,
    pub explanation: &'a pb::Explanation,
}

/// Red (positive) or blue (negative) at strength `|value| / largest` in [0, 1].
fn colour(value: f32, largest: f32) -> crate::image::Highlight {
    let strength = match largest > 0.0 && value.is_finite() {
        true => (value.abs() / largest).min(1.0),
        false => 0.0,
    };
    match value >= 0.0 {
        true => (214, 39, 40, strength),
        false => (31, 119, 180, strength),
    }
}

/// The largest |attribution| of the words (the colour scale).
fn largest(words: &[pb::WordAttribution]) -> f32 {
    words
        .iter()
        .map(|w| w.attribution.abs())
        .filter(|v| v.is_finite())
        .fold(0.0, f32::max)
}

/// Pieces of one of the texts: (the text between words or a word, its word if any).
fn pieces<'a>(
    source: &str,
    words: &'a [pb::WordAttribution],
    pair: bool,
) -> Vec<(String, Option<&'a pb::WordAttribution>)> {
    let chars: Vec<char> = source.chars().collect();
    let mut out = Vec::new();
    let mut at = 0usize;
    for w in words.iter().filter(|w| w.pair == pair) {
        let (start, end) = (w.start as usize, (w.end as usize).min(chars.len()));
        if start < at || start > end {
            continue;
        }
        if start > at {
            out.push((chars[at..start].iter().collect(), None));
        }
        out.push((chars[start..end].iter().collect(), Some(w)));
        at = end;
    }
    if at < chars.len() {
        out.push((chars[at..].iter().collect(), None));
    }
    out
}

impl Shown<'_> {
    /// The text with each word's background coloured (24-bit ANSI colours, black text), or
    /// with `word[+0.123]` after each word when `colours` is false.
    pub fn terminal(&self, colours: bool) -> String {
        let words = &self.explanation.words;
        let scale = largest(words);
        let mut out = String::new();
        for (pair, source) in [(false, self.text), (true, self.pair)] {
            if pair && source.is_empty() {
                continue;
            }
            if pair {
                out.push_str(" || ");
            }
            for (piece, word) in pieces(source, words, pair) {
                match (word, colours) {
                    (Some(w), true) => {
                        let (r, g, b, s) = colour(w.attribution, scale);
                        // Blended over white so the text stays readable.
                        let mix = |c: u8| (255.0 - s * (255.0 - f32::from(c))).round() as u8;
                        let _ = write!(
                            out,
                            "\x1b[38;2;0;0;0;48;2;{};{};{}m{piece}\x1b[0m",
                            mix(r),
                            mix(g),
                            mix(b)
                        );
                    }
                    (Some(w), false) => {
                        let _ = write!(out, "{piece}[{:+.3}]", w.attribution);
                    }
                    (None, _) => out.push_str(&piece.replace(['\n', '\r'], " ")),
                }
            }
        }
        out
    }

    /// The text (and pair) in pieces, each word with its colour ([`crate::image::tokens_png`]).
    pub fn coloured_pieces(&self) -> Vec<(String, Option<crate::image::Highlight>)> {
        let words = &self.explanation.words;
        let scale = largest(words);
        let mut out = Vec::new();
        for (pair, source) in [(false, self.text), (true, self.pair)] {
            if pair && source.is_empty() {
                continue;
            }
            if pair {
                out.push((" || ".to_string(), None));
            }
            for (piece, word) in pieces(source, words, pair) {
                out.push((piece, word.map(|w| colour(w.attribution, scale))));
            }
        }
        out
    }

    /// A self-contained HTML page: the summary table and the coloured text.
    pub fn html(&self) -> String {
        let r = self.explanation;
        let words = &r.words;
        let scale = largest(words);
        let mut text = String::new();
        for (pair, source) in [(false, self.text), (true, self.pair)] {
            if pair && source.is_empty() {
                continue;
            }
            if pair {
                text.push_str("<span class=\"sep\">[pair]</span> ");
            }
            for (piece, word) in pieces(source, words, pair) {
                match word {
                    Some(w) => {
                        let (red, green, blue, s) = colour(w.attribution, scale);
                        let _ = write!(
                            text,
                            "<mark style=\"background: rgba({red}, {green}, {blue}, {s:.3})\" title=\"{:+.4}\">{}</mark>",
                            w.attribution,
                            escape(&piece)
                        );
                    }
                    None => text.push_str(&escape(&piece)),
                }
            }
        }
        let mut tokens = String::new();
        for t in &r.tokens {
            let (red, green, blue, s) = colour(t.attribution, scale);
            let _ = write!(
                tokens,
                "<span class=\"tok\" style=\"background: rgba({red}, {green}, {blue}, {s:.3})\" title=\"{:+.4}\">{}</span> ",
                t.attribution,
                escape(&t.token)
            );
        }
        let objective = pb::Objective::try_from(r.objective)
            .map(|o| {
                o.as_str_name()
                    .trim_start_matches("OBJECTIVE_")
                    .to_lowercase()
            })
            .unwrap_or_default();
        let truncated = match r.truncated {
            true => "<p class=\"note\">The text was longer than the model takes and was truncated; the words past the cut have no attribution.</p>",
            false => "",
        };
        format!(
            r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>integrad: {label}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 0.4em 0.8em; text-align: left; }}
th {{ background: #f4f4f4; }}
.text {{ font-size: 1.3em; line-height: 2.1; max-width: 60em; }}
mark {{ color: #000; padding: 0.1em 0.15em; border-radius: 0.2em; }}
.tokens {{ font-family: monospace; line-height: 2; max-width: 80em; }}
.tok {{ padding: 0.1em 0.2em; border-radius: 0.2em; }}
.legend span {{ display: inline-block; padding: 0.2em 0.6em; margin-right: 0.3em; }}
.sep, .note {{ color: #777; }}
</style></head><body>
<table>
<tr><th>Predicted label</th><th>Attribution label</th><th>F(x) {objective}</th><th>F(x') baseline</th><th>Attribution sum</th><th>Convergence delta</th><th>Steps</th></tr>
<tr><td>{label}</td><td>{label} (class {class})</td><td>{fx:.4}</td><td>{fb:.4}</td><td>{sum:.4}</td><td>{delta:.2e}</td><td>{steps}</td></tr>
</table>
<div class="legend"><span style="background: rgba(31, 119, 180, 0.8)">negative</span><span style="background: #fff; border: 1px solid #ccc">neutral</span><span style="background: rgba(214, 39, 40, 0.8)">positive</span> (hover a word for its attribution)</div>
<h3>Words</h3>
<div class="text">{text}</div>
{truncated}
<h3>Tokens</h3>
<div class="tokens">{tokens}</div>
</body></html>
"#,
            label = escape(&r.label),
            class = r.target_class,
            fx = r.score_input,
            fb = r.score_baseline,
            sum = r.attribution_sum,
            delta = r.convergence_delta,
            steps = r.steps,
        )
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(word: &str, start: u32, end: u32, attribution: f32) -> pb::WordAttribution {
        pb::WordAttribution {
            word: word.into(),
            start,
            end,
            attribution,
            pair: false,
        }
    }

    #[test]
    fn should_keep_the_text_between_words_and_escape_it() {
        let r = pb::Explanation {
            words: vec![word("a", 0, 1, 0.5), word("b", 6, 7, -1.0)],
            label: "x<y".into(),
            ..Default::default()
        };
        let shown = Shown {
            text: "a <&> b!",
            pair: "",
            explanation: &r,
        };
        assert_eq!(shown.terminal(false), "a[+0.500] <&> b[-1.000]!");
        let html = shown.html();
        assert!(html.contains(" &lt;&amp;&gt; "), "{html}");
        assert!(html.contains("x&lt;y"));
        // The largest |attribution| is fully blue; half of it half red.
        assert!(html.contains("rgba(31, 119, 180, 1.000)"));
        assert!(html.contains("rgba(214, 39, 40, 0.500)"));
    }
}
