//! HF formats in: adapters saved by other libraries, used by `predict`/`eval`/`dump`.
//!
//! The artifacts in tests/fixtures are real output of those libraries (see each folder's
//! README for the command), with what the library itself computed stored beside them.
use std::path::{Path, PathBuf};

use peft_host::serve::{eval, folder, foreign, predict};
use peft_registry::Registry;
use peft_tests::*;
use serde_json::Value;

fn registry() -> Registry {
    Registry::with_static_plugins().unwrap()
}

fn local_fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

fn nested(v: &Value) -> Vec<f64> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<f64>) {
        match v {
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            x => out.push(x.as_f64().unwrap()),
        }
    }
    walk(v, &mut out);
    out
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// A copy of a fixture folder to damage.
fn copy_of(src: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    dir
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut Value)) {
    let p = dir.join("adapter_config.json");
    let mut v = read_json(&p);
    f(&mut v);
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
}

fn load_err(dir: &Path) -> String {
    match folder::load::<B>(dir, &registry(), &Default::default()) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => {
            let e = format!("{e:#}");
            eprintln!("refused: {e}");
            e
        }
    }
}

/// A LoRA trained by HF peft with `task_type=SEQ_CLS` (classifier in `modules_to_save`) loads
/// with BERT's pooler + classifier as its head: the [CLS] hidden states and the logits are HF's
/// to 1e-4, and `predict` answers with HF's probabilities.
#[test]
fn an_hf_peft_seq_cls_lora_reproduces_hf_logits() {
    require_minilm();
    let dir = local_fixture("hf-peft-lora-seqcls");
    let fx = read_json(&dir.join("expected.json"));
    let loaded = folder::load::<B>(&dir, &registry(), &Default::default()).unwrap();
    let head = foreign::unnamed_task(&loaded)
        .expect("a SEQ_CLS head")
        .clone();
    assert_eq!(head.labels, ["LABEL_0", "LABEL_1"]);
    // What HF trained: LoRA on query and value, and the classifier (the pooler is frozen).
    let trained: usize = loaded
        .manifest
        .tensors
        .iter()
        .map(|t| t.shape.iter().product::<usize>())
        .sum();
    assert_eq!(trained, 74_498, "HF's print_trainable_parameters");
    let texts: Vec<_> = fx["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s.as_str().unwrap().to_string(), None))
        .collect();
    let d = predict::dump(&loaded, Some(&head), &texts, &Default::default()).unwrap();
    assert_eq!(nested(&d["input_ids"]), nested(&fx["input_ids"]), "tokens");
    let [n, t, h] = [0, 1, 2].map(|i| d["shape"][i].as_u64().unwrap() as usize);
    let hidden = nested(&d["last_hidden_state"]);
    let cls: Vec<f64> = (0..n)
        .flat_map(|i| hidden[i * t * h..i * t * h + h].to_vec())
        .collect();
    let dh = max_diff(&cls, &nested(&fx["cls_hidden_state"]));
    let dl = max_diff(&nested(&d["logits"]), &nested(&fx["logits"]));
    eprintln!("HF peft SEQ_CLS LoRA: max abs diff [CLS] hidden {dh:e}, logits {dl:e}");
    assert!(dh < 1e-4 && dl < 1e-4, "hidden {dh}, logits {dl}");
    // The adapter changes the output: the logits are not those of a zero head.
    assert!(nested(&fx["logits"]).iter().any(|x| x.abs() > 0.5));

    let inputs = predict::parse_inputs(
        &std::fs::read_to_string(dir.join("texts.txt")).unwrap(),
        predict::InputFormat::Text,
        "texts.txt",
    )
    .unwrap();
    let mut out = Vec::new();
    predict::predict(
        &loaded,
        &head,
        &inputs,
        4,
        false,
        &mut out,
        &Default::default(),
    )
    .unwrap();
    let lines: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), texts.len());
    for (row, want) in lines.iter().zip(fx["logits"].as_array().unwrap()) {
        let w = nested(want);
        let p1 = 1.0 / (1.0 + (w[0] - w[1]).exp());
        let got = row["scores"]["LABEL_1"].as_f64().unwrap();
        assert!((got - p1).abs() < 1e-5, "{row} vs HF logits {w:?}");
        let best = if w[1] > w[0] { "LABEL_1" } else { "LABEL_0" };
        assert_eq!(row["label"], best);
    }
}

/// `eval` of the HF-trained adapter, bound to SST-2 by name, gives HF's own dev accuracy.
#[test]
fn eval_of_an_hf_peft_adapter_gives_hfs_accuracy() {
    require_minilm();
    let dir = local_fixture("hf-peft-lora-seqcls");
    let fx = read_json(&dir.join("expected.json"));
    let loaded = folder::load::<B>(&dir, &registry(), &Default::default()).unwrap();
    let data = peft_host::data::data_dir(None).unwrap();
    let e = format!(
        "{:#}",
        eval::eval(&loaded, None, None, &data, &Default::default()).unwrap_err()
    );
    assert!(e.contains("--task"), "{e}");
    let r = eval::eval(&loaded, Some("glue-sst2"), None, &data, &Default::default()).unwrap();
    let want = fx["dev_accuracy"].as_f64().unwrap();
    let n = fx["dev_examples"].as_f64().unwrap();
    eprintln!(
        "eval glue-sst2: {} {} (HF: {want} on {n} dev examples)",
        r.evaluation.metric, r.evaluation.score
    );
    assert_eq!(r.eval_split, "dev");
    // The same predictions up to a near tie.
    assert!(
        (r.evaluation.score - want).abs() <= 1.0 / n + 1e-9,
        "{} vs {want}",
        r.evaluation.score
    );
    // A task with another number of labels is refused, naming both.
    let e = format!(
        "{:#}",
        eval::eval(
            &loaded,
            Some("glue-mnli"),
            Some(8),
            &data,
            &Default::default()
        )
        .unwrap_err()
    );
    assert!(e.contains("2 classes") && e.contains("glue-mnli"), "{e}");
}

/// What this host cannot map is refused, naming the file and the key.
#[test]
fn unmappable_hf_adapters_are_refused_naming_file_and_key() {
    require_minilm();
    let src = local_fixture("hf-peft-lora-seqcls");

    let d = copy_of(&src);
    edit_config(d.path(), |v| v["task_type"] = "TOKEN_CLS".into());
    let e = load_err(d.path());
    assert!(
        e.contains("adapter_config.json") && e.contains("TOKEN_CLS") && e.contains("SEQ_CLS"),
        "{e}"
    );

    let d = copy_of(&src);
    edit_config(d.path(), |v| {
        v["target_modules"] = serde_json::json!(["q_proj", "v_proj"])
    });
    let e = load_err(d.path());
    assert!(
        e.contains("adapter_config.json") && e.contains("target_modules") && e.contains("q_proj"),
        "{e}"
    );

    let d = copy_of(&src);
    edit_config(d.path(), |v| {
        v["modules_to_save"] = serde_json::json!(["score"])
    });
    let e = load_err(d.path());
    assert!(
        e.contains("modules_to_save") && e.contains("classifier"),
        "{e}"
    );

    // The classifier missing from the weights file.
    let d = copy_of(&src);
    let file = d.path().join("adapter_model.safetensors");
    let ck = peft_host::backbone::weights::Checkpoint::read(&file).unwrap();
    let kept: Vec<_> = ck
        .tensors
        .iter()
        .filter(|(k, _)| !k.contains("classifier.weight"))
        .map(|(k, (s, v))| (k.clone(), s.clone(), v.clone()))
        .collect();
    std::fs::write(
        &file,
        peft_host::serve::safetensors_bytes(&kept, Default::default()).unwrap(),
    )
    .unwrap();
    let e = load_err(d.path());
    assert!(
        e.contains("adapter_model.safetensors") && e.contains("base_model.model.classifier.weight"),
        "{e}"
    );

    // A tensor of a module the adapter does not describe.
    let d = copy_of(&src);
    let mut all: Vec<_> = ck
        .tensors
        .iter()
        .map(|(k, (s, v))| (k.clone(), s.clone(), v.clone()))
        .collect();
    all.push((
        "base_model.model.bert.encoder.layer.0.attention.self.key.lora_A.weight".into(),
        vec![8, 384],
        vec![0.0; 8 * 384],
    ));
    std::fs::write(
        d.path().join("adapter_model.safetensors"),
        peft_host::serve::safetensors_bytes(&all, Default::default()).unwrap(),
    )
    .unwrap();
    let e = load_err(d.path());
    assert!(e.contains("attention.self.key.lora_A"), "{e}");
}

/// A tensor of a safetensors file as f64 (f32 or i64 stored).
fn st_tensor(path: &Path, name: &str) -> (Vec<usize>, Vec<f64>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    let v = match t.dtype() {
        safetensors::Dtype::F32 => t
            .data()
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        safetensors::Dtype::I64 => t
            .data()
            .chunks(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        other => panic!("{name}: {other:?}"),
    };
    (t.shape().to_vec(), v)
}

/// Max |a - b| over real tokens (`mask` 1), rows of width `h`.
fn masked_diff(a: &[f64], b: &[f64], mask: &[f64], h: usize) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .enumerate()
        .filter(|(i, _)| mask[i / h] == 1.0)
        .map(|(_, (x, y))| (x - y).abs())
        .fold(0.0, f64::max)
}

/// A Houlsby adapter saved by AdapterHub's `adapters` library (`double_seq_bn`, trained briefly)
/// loads into the houlsby plugin and reproduces the library's last hidden states; the base
/// model alone does not (so the check can fail).
#[test]
fn an_adapterhub_houlsby_adapter_reproduces_its_hidden_states() {
    require_minilm();
    let dir = local_fixture("adapterhub-houlsby");
    let want_path = dir.join("expected.safetensors");
    let loaded = folder::load::<B>(&dir, &registry(), &Default::default()).unwrap();
    assert_eq!(loaded.manifest.plugins[0].plugin, "houlsby");
    let spec = &loaded.manifest.config.modules[0];
    let c = serde_json::to_value(spec).unwrap();
    assert_eq!(
        c["config"]["bottleneck"], 24,
        "384 / reduction_factor 16: {c}"
    );
    assert_eq!(c["config"]["activation"], "swish");
    assert_eq!(
        c["config"]["layers"],
        serde_json::json!([4, 5]),
        "leave_out 0-3"
    );
    let texts: Vec<_> = std::fs::read_to_string(dir.join("texts.txt"))
        .unwrap()
        .lines()
        .map(|s| (s.to_string(), None))
        .collect();
    let d = predict::dump(&loaded, None, &texts, &Default::default()).unwrap();
    let (_, ids) = st_tensor(&want_path, "input_ids");
    let (_, mask) = st_tensor(&want_path, "attention_mask");
    let (shape, want) = st_tensor(&want_path, "last_hidden_state");
    assert_eq!(nested(&d["input_ids"]), ids, "tokens");
    let h = shape[2];
    let diff = masked_diff(&nested(&d["last_hidden_state"]), &want, &mask, h);
    // The backbone without the adapter.
    let plain: peft_host::config::RunConfig =
        serde_json::from_value(serde_json::json!({ "backbone": "all-MiniLM-L6-v2" })).unwrap();
    let base =
        peft_host::model::Model::<B>::build(&plain, &registry(), &Default::default(), 0).unwrap();
    let g = peft_host::bridge::HostGraph::inference(&base.params);
    let tb = base.tokenize(&texts, 64, &Default::default()).unwrap();
    let hb: Vec<f64> = base
        .encode(&g, &tb)
        .unwrap()
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect();
    let moved = masked_diff(&hb, &want, &mask, h);
    eprintln!("AdapterHub double_seq_bn: max abs diff {diff:e} (base model without it: {moved:e})");
    assert!(diff < 1e-4, "{diff}");
    assert!(moved > 1e-2, "the adapter changed nothing: {moved}");
    let e = format!("{:#}", loaded.task(None).unwrap_err());
    assert!(e.contains("no task head"), "{e}");
}

/// AdapterHub configs that compute something else than Houlsby's adapter are refused, naming
/// the field; a torch-pickled adapter is refused with the way to get safetensors.
#[test]
fn unmappable_adapterhub_adapters_are_refused_naming_the_field() {
    require_minilm();
    let src = local_fixture("adapterhub-houlsby");
    for (field, value, expect) in [
        (
            "original_ln_before",
            serde_json::json!(true),
            "original_ln_before",
        ),
        ("ln_after", serde_json::json!(true), "ln_after"),
        ("use_gating", serde_json::json!(true), "use_gating"),
        ("scaling", serde_json::json!(2.0), "scaling"),
        ("non_linearity", serde_json::json!("tanh"), "non_linearity"),
        ("is_parallel", serde_json::json!(true), "parallel"),
        ("leave_out", serde_json::json!([4]), "leaves out layer 4"),
        ("reduction_factor", serde_json::json!(8), "shape"),
    ] {
        let d = copy_of(&src);
        edit_config(d.path(), |v| v["config"][field] = value.clone());
        let e = load_err(d.path());
        assert!(
            e.contains("adapter_config.json") || e.contains("adapter.safetensors"),
            "{field}: {e}"
        );
        assert!(e.contains(expect), "{field}: {e}");
    }
    let d = copy_of(&src);
    edit_config(d.path(), |v| v["model_type"] = "roberta".into());
    assert!(load_err(d.path()).contains("roberta"));

    let d = copy_of(&src);
    std::fs::rename(
        d.path().join("adapter.safetensors"),
        d.path().join("pytorch_adapter.bin"),
    )
    .unwrap();
    let e = load_err(d.path());
    assert!(
        e.contains("pytorch_adapter.bin") && e.contains("use_safetensors=True"),
        "{e}"
    );
}
