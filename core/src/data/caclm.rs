//! CACLM windows (HyperT5 stage 1, `config::caclm`): an unlabeled corpus read as documents and
//! cut into windows of four consecutive segments A, B, C, D, counted in whitespace-separated
//! words (tokenizer-independent, so one corpus cuts the same for every backbone).
use std::path::Path;

use anyhow::{bail, Context};

use crate::config::caclm::{CaclmSpec, Segments};

/// One window: the hypermodel reads `a` and `d`, the downstream model reads `b` and writes `c`.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    /// The document it comes from (0-based, in corpus order) and its index there.
    pub doc: usize,
    pub index: usize,
    pub a: String,
    pub b: String,
    pub c: String,
    pub d: String,
}

/// The documents of a corpus file: JSONL (`.jsonl`, the text in `text_field` of each line) or
/// plain text with documents separated by blank lines. Empty documents are dropped.
pub fn read_documents(path: &Path, text_field: &str) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("/caclm/corpus: reading {}", path.display()))?;
    let jsonl = path.extension().and_then(|e| e.to_str()) == Some("jsonl");
    let mut docs = Vec::new();
    if jsonl {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let here = || format!("{}:{}", path.display(), i + 1);
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{}: not a JSON object", here()))?;
            let Some(t) = v.get(text_field).and_then(|t| t.as_str()) else {
                bail!(
                    "{}: no string field `{text_field}` (/caclm/text_field names the field holding the text)",
                    here()
                );
            };
            docs.push(t.to_string());
        }
    } else {
        let mut cur = String::new();
        for line in text.lines() {
            if line.trim().is_empty() {
                if !cur.trim().is_empty() {
                    docs.push(std::mem::take(&mut cur));
                }
                cur.clear();
            } else {
                cur.push_str(line);
                cur.push('\n');
            }
        }
        if !cur.trim().is_empty() {
            docs.push(cur);
        }
    }
    docs.retain(|d| !d.trim().is_empty());
    Ok(docs)
}

/// Cuts each document into as many non-overlapping windows of `a + b + c + d` words as fit,
/// in order. Returns the windows and the longest document's word count.
pub fn cut(docs: &[String], seg: &Segments) -> (Vec<Window>, usize) {
    let n = seg.total();
    let mut out = Vec::new();
    let mut longest = 0;
    for (doc, text) in docs.iter().enumerate() {
        let words: Vec<&str> = text.split_whitespace().collect();
        longest = longest.max(words.len());
        if n == 0 {
            continue;
        }
        for (index, w) in words.chunks_exact(n).enumerate() {
            let (a, rest) = w.split_at(seg.a);
            let (b, rest) = rest.split_at(seg.b);
            let (c, d) = rest.split_at(seg.c);
            out.push(Window {
                doc,
                index,
                a: a.join(" "),
                b: b.join(" "),
                c: c.join(" "),
                d: d.join(" "),
            });
        }
    }
    (out, longest)
}

/// The training and held-out windows of a `caclm` section: the last `eval_windows` windows
/// are held out, then at most `max_windows` of the rest train. Errors name the corpus and what
/// it lacks.
pub fn load(spec: &CaclmSpec) -> anyhow::Result<(Vec<Window>, Vec<Window>)> {
    let path = &spec.corpus;
    let docs = read_documents(path, &spec.text_field)?;
    if docs.is_empty() {
        bail!("/caclm/corpus: {} holds no text", path.display());
    }
    let seg = &spec.segments;
    let (mut windows, longest) = cut(&docs, seg);
    let need = seg.total();
    if windows.is_empty() {
        bail!(
            "/caclm/corpus: {} is too short to cut into segments A, B, C, D: they need {need} words (/caclm/segments: a {} + b {} + c {} + d {}) in one document, and its longest of {} documents has {longest}",
            path.display(),
            seg.a,
            seg.b,
            seg.c,
            seg.d,
            docs.len()
        );
    }
    if windows.len() <= spec.eval_windows {
        bail!(
            "/caclm/eval_windows: {} cuts into {} windows of {need} words, but {} are held out for evaluation; none would be left to train on",
            path.display(),
            windows.len(),
            spec.eval_windows
        );
    }
    let eval = windows.split_off(windows.len() - spec.eval_windows);
    if spec.max_windows > 0 {
        windows.truncate(spec.max_windows);
    }
    Ok((windows, eval))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(a: usize, b: usize, c: usize, d: usize) -> Segments {
        Segments { a, b, c, d }
    }

    #[test]
    fn cuts_consecutive_windows_and_skips_short_documents() {
        let words: Vec<String> = (0..23).map(|i| format!("w{i}")).collect();
        let docs = vec![words.join(" "), "too short".to_string()];
        let (w, longest) = cut(&docs, &seg(2, 1, 3, 4));
        assert_eq!(longest, 23);
        // 23 words give two windows of 10; the last 3 words and the short document give none.
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].a, "w0 w1");
        assert_eq!(w[0].b, "w2");
        assert_eq!(w[0].c, "w3 w4 w5");
        assert_eq!(w[0].d, "w6 w7 w8 w9");
        assert_eq!((w[1].doc, w[1].index, w[1].a.as_str()), (0, 1, "w10 w11"));
    }

    #[test]
    fn reads_plain_text_and_jsonl_and_names_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let txt = dir.path().join("c.txt");
        std::fs::write(&txt, "one two\nthree\n\n\nfour five six\n").unwrap();
        let docs = read_documents(&txt, "text").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].split_whitespace().count(), 3);
        let jl = dir.path().join("c.jsonl");
        std::fs::write(&jl, "{\"text\": \"a b c\"}\n\n{\"body\": \"x\"}\n").unwrap();
        let err = read_documents(&jl, "text").unwrap_err().to_string();
        assert!(err.contains("c.jsonl:3") && err.contains("`text`"), "{err}");
        let spec = CaclmSpec {
            corpus: txt,
            text_field: "text".into(),
            segments: seg(2, 2, 2, 2),
            eval_windows: 0,
            max_windows: 0,
        };
        let err = format!("{:#}", load(&spec).unwrap_err());
        assert!(
            err.contains("too short to cut into segments A, B, C, D")
                && err.contains("need 8 words")
                && err.contains("has 3"),
            "{err}"
        );
        let spec = CaclmSpec {
            segments: seg(1, 1, 1, 0),
            eval_windows: 2,
            ..spec
        };
        let err = format!("{:#}", load(&spec).unwrap_err());
        assert!(err.contains("/caclm/eval_windows"), "{err}");
    }
}
