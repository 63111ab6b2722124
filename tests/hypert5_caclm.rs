//! HyperT5 stage 1, CACLM (`caclm` section), on the tiny T5 v1.1 fixture: a corpus is cut into
//! windows A, B, C, D; the hypermodel reads A and D, the frozen T5 reads B and is scored on C
//! with its LM head. Shapes and gradients of one CACLM pass, a run whose loss falls over a few
//! dozen steps and whose saved hypermodel starts a stage-2 run (`init_from`), and the errors
//! for bad configs and a corpus too short to cut.
use std::path::{Path, PathBuf};

use peft_host::{
    bridge::{value::ft, HostGraph},
    config::RunConfig,
    data::caclm::Window,
    heads::Head,
    model::Model,
    run::{run_generic, RunFlags},
};
use peft_registry::Registry;
use peft_tests::*;
use serde_json::json;

const TOPICS: [&str; 6] = ["apple", "river", "castle", "engine", "violin", "garden"];
const FILLER: [&str; 24] = [
    "the", "a", "is", "was", "near", "old", "small", "green", "quiet", "bright", "and", "with",
    "under", "over", "every", "morning", "people", "saw", "made", "found", "there", "then",
    "again", "still",
];

/// A corpus of `docs` documents of `words` words; each is about one topic word, which recurs
/// through it (so the hypermodel can carry it from A and D to the downstream model's C) —
/// except, with `hide`, in the words `hide` of every 36-word window (B of 12/4/8/12 windows).
fn corpus_with(
    dir: &Path,
    docs: usize,
    words: usize,
    hide: Option<std::ops::Range<usize>>,
) -> (PathBuf, Vec<String>) {
    let mut state = 12345u64;
    let mut next = |n: usize| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % n
    };
    let mut text = String::new();
    for d in 0..docs {
        let topic = TOPICS[d % TOPICS.len()];
        let w: Vec<&str> = (0..words)
            .map(|i| {
                let hidden = hide.as_ref().is_some_and(|h| h.contains(&(i % 36)));
                if i % 3 == 1 && !hidden {
                    topic
                } else {
                    FILLER[next(FILLER.len())]
                }
            })
            .collect();
        text.push_str(&w.join(" "));
        text.push_str("\n\n");
    }
    let path = dir.join("corpus.txt");
    std::fs::write(&path, text).unwrap();
    let mut vocab: Vec<String> = FILLER.iter().map(|s| s.to_string()).collect();
    vocab.extend(TOPICS.iter().map(|s| s.to_string()));
    // SST-2's labels and a few sentences, for the stage-2 run.
    vocab.extend(["negative", "positive"].map(String::from));
    (path, vocab)
}

fn corpus(dir: &Path, docs: usize, words: usize) -> (PathBuf, Vec<String>) {
    corpus_with(dir, docs, words, None)
}

/// A CACLM config on the tiny T5: windows of 12 + 4 + 8 + 12 words.
fn caclm_config(dir: &Path, docs: usize, steps: usize) -> serde_json::Value {
    let (path, vocab) = corpus(dir, docs, 72);
    let tok = word_tokenizer(dir, &["<pad>", "</s>", "<unk>"], &["$A", "</s>"], &vocab);
    json!({
        "backbone": { "path": fixture("t5-v1_1-tiny"), "tokenizer": tok },
        "modules": t5_prefix_consumers(),
        "context_encoder": { "plugin": "hypert5", "config": {
            "generate": ["prefix"], "prefix_length": 2, "head_hidden": 16, "k": 2,
            "max_length": 32, "out_init_std": 0.05, "consumers": ["pe", "pd", "pc"] } },
        "caclm": { "corpus": path, "segments": { "a": 12, "b": 4, "c": 8, "d": 12 },
                   "eval_windows": 4 },
        "training": { "steps": steps, "learning_rate": 3e-3, "max_length": 48,
                      "train_groups": ["hyper"], "warmup_steps": 0 }
    })
}

#[test]
fn a_caclm_pass_reads_a_and_d_and_reaches_every_hypermodel_parameter() {
    let tmp = tempfile::tempdir().unwrap();
    let mut raw = caclm_config(tmp.path(), 4, 1);
    // Prefix and LoRA together, so that every kind of head is in the gradient check.
    raw["context_encoder"]["config"]["generate"] = json!(["prefix", "lora"]);
    raw["context_encoder"]["config"]["lora_rank"] = json!(2);
    raw["context_encoder"]["config"]["consumers"] = json!(["pe", "pd", "pc", "le", "ld", "lc"]);
    raw["modules"]
        .as_array_mut()
        .unwrap()
        .extend(t5_lora_consumers(2));
    let cfg: RunConfig = serde_json::from_value(raw).unwrap();
    let spec = cfg.caclm.clone().unwrap();
    let (train, eval) = peft_host::data::caclm::load(&spec).unwrap();
    // 4 documents of 72 words: 2 windows of 36 each, the last 4 held out.
    assert_eq!((train.len(), eval.len()), (4, 4));
    let w: &Window = &train[0];
    assert_eq!(
        [&w.a, &w.b, &w.c, &w.d].map(|s| s.split_whitespace().count()),
        [12, 4, 8, 12]
    );
    let registry = Registry::with_static_plugins().unwrap();
    let model = Model::<B>::build(&cfg, &registry, &Default::default(), 0).unwrap();
    model.set_trainable(&["hyper".into()]).unwrap();
    let enc = model.context_encoder.as_ref().unwrap();
    let task = peft_host::data::Task {
        name: "window".into(),
        kind: peft_host::data::TaskKind::MultipleChoice,
        labels: vec![],
        train: vec![peft_host::data::Example {
            text_a: w.b.clone(),
            options: vec![w.c.clone()],
            ..Default::default()
        }],
        eval: vec![],
        eval_split: "caclm".into(),
        metric: "accuracy".into(),
    };
    enc.set_fixed_context("window", vec![w.a.clone(), w.d.clone()]);
    let graph = HostGraph::new(&model.params, true);
    let batch: Vec<_> = task.train.iter().collect();
    peft_host::model::context::before_train_pass(&model, &graph, &task, &task, &batch).unwrap();
    {
        let ctx = graph.context.borrow();
        // The hypermodel read two sequences, A and D: 12 words and `</s>` each.
        let ex = ft::<B, 3>(float_value(&ctx["hypert5.examples"])).dims();
        assert_eq!(ex, [2, 13, 64]);
        assert_eq!(
            ft::<B, 4>(float_value(&ctx["hypert5.prefix_cross"])).dims(),
            [2, 2, 2, 64]
        );
        assert_eq!(
            ft::<B, 4>(float_value(&ctx["hypert5.lora_encoder_B"])).dims(),
            [2, 2, 64, 2]
        );
    }
    let head = Head::TextToText { max_new_tokens: 4 };
    let grads = text_to_text_loss(&head, &model, &graph, &task, &batch, 48).backward();
    let n = assert_gradient_reaches_every_trainable(&model, "hyper", &grads);
    assert_eq!(n, 63 + 12);
}

#[test]
fn a_caclm_run_lowers_the_loss_and_its_hypermodel_starts_stage_2() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = caclm_config(tmp.path(), 12, 36);
    let registry = Registry::with_static_plugins().unwrap();
    let cfg = peft_host::validate::validate(&raw.to_string(), "caclm.json", &registry).unwrap();
    let data = peft_host::data::data_dir(None).unwrap();
    let out = tmp.path().join("runs");
    let start = std::time::Instant::now();
    run_generic::<B>(
        &cfg,
        &registry,
        &data,
        &out,
        RunFlags::default(),
        &Default::default(),
    )
    .unwrap();
    let run = out.join("caclm-pe+pd+pc-seed42");
    let result = read_json(&run.join("result.json"));
    let losses: Vec<f64> = result["report"]["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_f64().unwrap())
        .collect();
    assert_eq!(losses.len(), 36);
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let (first, last) = (mean(&losses[..6]), mean(&losses[30..]));
    let c = &result["caclm"];
    eprintln!(
        "CACLM (tiny T5, 20 windows): loss {first:.3} -> {last:.3}; held-out {:.3} -> {:.3} (other window's context {:.3}); {:.3} s/step, {} s in all",
        c["eval_loss_before"], c["eval_loss_after"], c["eval_loss_other_context"],
        result["report"]["seconds_per_step"], start.elapsed().as_secs()
    );
    assert_eq!(
        (c["train_windows"].as_u64(), c["eval_windows"].as_u64()),
        (Some(20), Some(4))
    );
    assert!(last < 0.7 * first, "training loss {first} -> {last}");
    assert!(
        c["eval_loss_after"].as_f64().unwrap() < c["eval_loss_before"].as_f64().unwrap(),
        "{c}"
    );
    // Stage 2 from the saved hypermodel: the same modules and encoder on a text-to-text task.
    let adapter = run.join("adapter");
    let mut stage2 = raw.clone();
    let obj = stage2.as_object_mut().unwrap();
    obj.remove("caclm");
    obj.insert("init_from".into(), json!(adapter));
    obj.insert(
        "task".into(),
        json!({ "name": "glue-sst2", "train_examples": 8, "eval_examples": 2,
                "head": "text_to_text", "max_new_tokens": 2 }),
    );
    stage2["context_encoder"]["config"]["k"] = json!(2);
    stage2["training"]["steps"] = json!(2);
    let cfg2 =
        peft_host::validate::validate(&stage2.to_string(), "stage2.json", &registry).unwrap();
    let model = Model::<B>::build(&cfg2, &registry, &Default::default(), 0).unwrap();
    let fresh = vals(
        model
            .params
            .borrow()
            .tensor::<2>("hypert5.queries")
            .unwrap(),
    );
    let r = peft_host::serve::init::init_from(&model, &cfg2, &adapter).unwrap();
    // Every hypermodel tensor (prefix-only T5 hypermodel: 63) and nothing unused.
    assert_eq!(r.tensors, 63, "{r:?}");
    assert!(r.unused.is_empty(), "{r:?}");
    let loaded = vals(
        model
            .params
            .borrow()
            .tensor::<2>("hypert5.queries")
            .unwrap(),
    );
    assert_ne!(fresh, loaded, "init_from changed nothing");
    let saved = peft_host::backbone::weights::Checkpoint::read(
        &adapter.join(peft_host::serve::folder::TENSORS_FILE),
    )
    .unwrap();
    let (_, want) = &saved.tensors["hypert5.queries"];
    assert_eq!(&loaded, want);
    // And the stage-2 run itself trains from it.
    run_generic::<B>(
        &cfg2,
        &registry,
        &data,
        &tmp.path().join("stage2"),
        RunFlags::default(),
        &Default::default(),
    )
    .unwrap();
}

/// The other-context measurement pairs each held-out window with the next one from another
/// document (the same document's windows share its topic).
#[test]
fn other_context_comes_from_another_document() {
    use peft_host::run::caclm::other_window;
    let w = |doc: usize| Window {
        doc,
        index: 0,
        a: String::new(),
        b: String::new(),
        c: String::new(),
        d: String::new(),
    };
    let windows = [w(10), w(10), w(11), w(11)];
    let got: Vec<usize> = (0..4).map(|i| other_window(&windows, i)).collect();
    assert_eq!(got, [2, 2, 0, 0]);
    // One document only: the next window.
    let same = [w(3), w(3), w(3)];
    let got: Vec<usize> = (0..3).map(|i| other_window(&same, i)).collect();
    assert_eq!(got, [1, 2, 0]);
}

#[test]
fn caclm_config_and_corpus_errors_name_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = Registry::with_static_plugins().unwrap();
    let mut raw = caclm_config(tmp.path(), 2, 1);
    raw.as_object_mut().unwrap().remove("context_encoder");
    raw["task"] = json!({ "name": "glue-sst2" });
    raw["caclm"]["segments"]["b"] = json!(0);
    let err = peft_host::config::validate::parse(&raw.to_string(), "c.json", &registry)
        .unwrap_err()
        .to_string();
    for want in [
        "/caclm: CACLM pretrains a hypermodel",
        "/task: a `caclm` run trains on its corpus",
        "/caclm/segments/b",
    ] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
    // Documents of 72 words cannot hold windows of 100.
    let mut raw = caclm_config(tmp.path(), 2, 1);
    raw["caclm"]["segments"] = json!({ "a": 40, "b": 10, "c": 10, "d": 40 });
    let cfg = peft_host::validate::validate(&raw.to_string(), "c.json", &registry).unwrap();
    let err = run_generic::<B>(
        &cfg,
        &registry,
        &peft_host::data::data_dir(None).unwrap(),
        &tmp.path().join("runs"),
        RunFlags::default(),
        &Default::default(),
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("too short to cut into segments A, B, C, D")
            && msg.contains("need 100 words")
            && msg.contains("has 72"),
        "{msg}"
    );
    // A missing corpus file, at validation.
    let mut raw = caclm_config(tmp.path(), 2, 1);
    raw["caclm"]["corpus"] = json!(tmp.path().join("nope.txt"));
    let err = peft_host::validate::validate(&raw.to_string(), "c.json", &registry)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/caclm/corpus") && err.contains("no such file"),
        "{err}"
    );
}

/// Figures (slow, run by hand): does CACLM teach the hypermodel to pass on its context? A
/// corpus whose topic word never appears in B, so only A and D tell the downstream model which
/// word recurs in C; 2000 steps, one window each; the held-out loss with each window's own A
/// and D against another document's.
/// `cargo test -p peft-tests --test hypert5_caclm -- --ignored --nocapture`
#[test]
#[ignore]
fn caclm_teaches_the_hypermodel_to_pass_on_its_context() {
    let tmp = tempfile::tempdir().unwrap();
    let mut raw = caclm_config(tmp.path(), 1, 2000);
    let (path, _) = corpus_with(tmp.path(), 36, 360, Some(12..16));
    raw["caclm"]["corpus"] = json!(path);
    raw["caclm"]["eval_windows"] = json!(24);
    let registry = Registry::with_static_plugins().unwrap();
    let cfg = peft_host::validate::validate(&raw.to_string(), "caclm.json", &registry).unwrap();
    let out = tmp.path().join("runs");
    run_generic::<B>(
        &cfg,
        &registry,
        &peft_host::data::data_dir(None).unwrap(),
        &out,
        RunFlags::default(),
        &Default::default(),
    )
    .unwrap();
    let result = read_json(&out.join("caclm-pe+pd+pc-seed42/result.json"));
    let c = &result["caclm"];
    eprintln!("{c:#}\n{:.3} s/step", result["report"]["seconds_per_step"]);
    let own = c["eval_loss_after"].as_f64().unwrap();
    let other = c["eval_loss_other_context"].as_f64().unwrap();
    assert!(
        own < other,
        "own context {own} vs another document's {other}"
    );
}
