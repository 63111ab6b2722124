//! The `caclm` section: HyperT5's stage-1 hyper-pretraining (Phang et al., 2022, §4.2,
//! Context-Augmented Conditional Language Modelling). An unlabeled corpus is cut into windows
//! of four consecutive segments A, B, C, D; the frozen downstream model reads B and is trained
//! to write C (the LM loss on C), while the context encoder (the hypermodel) reads A and D and
//! generates the downstream model's prefix / LoRA. Only the hypermodel trains. The saved
//! hypermodel (`<run>/adapter`) then starts stage 2 through `init_from`.
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::validate::ConfigError;

/// Where the text comes from and how it is cut.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CaclmSpec {
    /// The corpus: a plain-text file, documents separated by blank lines, or a JSONL file
    /// (name ending in `.jsonl`), one document a line with its text in `text_field`. A relative
    /// path is read from the working directory.
    pub corpus: PathBuf,
    /// JSONL corpora: the field holding each document's text.
    #[serde(default = "default_text_field")]
    pub text_field: String,
    /// Segment lengths in whitespace-separated words. Each document gives as many
    /// non-overlapping windows of `a + b + c + d` words as fit; shorter documents are skipped.
    #[serde(default)]
    pub segments: Segments,
    /// The last this many windows of the corpus are held out: the LM loss on their C is
    /// measured before and after training (`result.json`).
    #[serde(default = "default_eval_windows")]
    pub eval_windows: usize,
    /// Train on at most this many windows, the first of the corpus (0: all).
    #[serde(default)]
    pub max_windows: usize,
}

/// Words per segment. The defaults approximate the paper's 512-token windows with a 32-token
/// B (a T5 SentencePiece token is about 0.75 English words): B is short so that the downstream
/// model needs what the hypermodel read from A and D to predict C.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Segments {
    /// Read by the hypermodel.
    #[schemars(range(min = 1))]
    pub a: usize,
    /// The downstream model's input.
    #[schemars(range(min = 1))]
    pub b: usize,
    /// The downstream model's target.
    #[schemars(range(min = 1))]
    pub c: usize,
    /// Read by the hypermodel.
    #[schemars(range(min = 1))]
    pub d: usize,
}

impl Segments {
    pub fn total(&self) -> usize {
        self.a + self.b + self.c + self.d
    }
}

impl Default for Segments {
    fn default() -> Self {
        Segments {
            a: 120,
            b: 24,
            c: 120,
            d: 120,
        }
    }
}

fn default_text_field() -> String {
    "text".into()
}
fn default_eval_windows() -> usize {
    4
}

/// What the host's schema cannot say: a CACLM run needs a context encoder, and reads its
/// corpus instead of tasks and a priming stage. (Segment lengths of 0 fail the schema.)
pub fn check(doc: &Json, errors: &mut Vec<ConfigError>) {
    if doc.get("caclm").is_none_or(Json::is_null) {
        return;
    }
    let mut err = |pointer: &str, message: String| {
        errors.push(ConfigError {
            pointer: pointer.into(),
            message,
            owner: "host".into(),
        })
    };
    if doc.get("context_encoder").is_none_or(Json::is_null) {
        err(
            "/caclm",
            "CACLM pretrains a hypermodel: add a `context_encoder` section (e.g. `hypert5`)".into(),
        );
    }
    for key in ["task", "tasks", "priming", "prototype"] {
        if doc.get(key).is_some_and(|v| !v.is_null()) {
            err(
                &format!("/{key}"),
                format!("a `caclm` run trains on its corpus (/caclm/corpus); drop `{key}`"),
            );
        }
    }
}
