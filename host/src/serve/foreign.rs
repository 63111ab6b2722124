//! Adapters saved by other libraries, used like peft-host's own folders.
//!
//! - **HF peft** (`adapter_config.json` with `peft_type` + `adapter_model.safetensors`): the
//!   plugin that recognises the config rebuilds its module (LoRA: `hf_peft_module_spec`). With
//!   `task_type: SEQ_CLS` the file also holds the task model's `classifier` (HF peft saves it as
//!   a `modules_to_save` module); on a BERT backbone it becomes a [`Head::ClsPooler`] with the
//!   checkpoint's pooler, exactly `BertForSequenceClassification`'s head, so `predict` and `eval`
//!   reproduce HF's logits. Without a task type (or `FEATURE_EXTRACTION`) there is no head:
//!   `dump` and `export` work, `predict`/`eval` say so. Anything else is refused, naming the
//!   file and the key.
//! - **AdapterHub** (`adapters` library) bottleneck adapters (`adapter_config.json` with `config` +
//!   `version`, weights in `adapter.safetensors`): the houlsby plugin maps serial ones such as
//!   `double_seq_bn` (`adapterhub_module_spec` / `adapterhub_import`); no head.
//!
//! HF's config does not store label names: the head answers `LABEL_0`, `LABEL_1`, ... (as
//! transformers does without `id2label`) until a task is named (`--task`), whose labels, in
//! their order, must be as many as the classifier's rows ([`bind_task`]).
use std::path::Path;

use anyhow::{bail, Context};
use burn::tensor::backend::AutodiffBackend;
use serde_json::Value as Json;

use super::folder::{
    backbone_record, kind_str, Loaded, Manifest, PluginRecord, TaskRecord, TensorRecord, FORMAT,
    FORMAT_VERSION,
};
use crate::{
    backbone::weights::Checkpoint,
    config::RunConfig,
    data::TaskKind,
    heads::Head,
    model::{resolve_backbone, Model},
    params::from_values,
};

/// The task name of a foreign head whose labels are positional (`LABEL_i`) until a task is
/// named.
pub const UNNAMED_TASK: &str = "hf-seq-cls";
/// Where a foreign classification head's parameters live.
const HEAD_PREFIX: &str = "head";

/// The task types of HF peft's `adapter_config.json` this host reads.
const TASK_TYPES: &str = "SEQ_CLS (BERT: [CLS] pooler + `classifier`), FEATURE_EXTRACTION or none";

/// An HF peft file key without the PeftModel wrapper and the adapter name of
/// `modules_to_save` copies: `base_model.model.classifier.modules_to_save.default.weight` ->
/// `classifier.weight`.
fn task_key(k: &str) -> String {
    let k = k.strip_prefix("base_model.model.").unwrap_or(k);
    k.replace(".modules_to_save.default.", ".")
}

/// The classifier tensors of an HF `SEQ_CLS` adapter file: (file key, shape, values) for
/// `classifier.weight` and `classifier.bias`, or an error naming the file and what is missing.
type Found = (String, Vec<usize>, Vec<f32>);

fn classifier(ckpt: &Checkpoint, file: &str) -> anyhow::Result<(Found, Found)> {
    let find = |want: &str| -> anyhow::Result<Found> {
        ckpt.tensors
            .iter()
            .find(|(k, _)| task_key(k) == want)
            .map(|(k, (s, v))| (k.clone(), s.clone(), v.clone()))
            .with_context(|| {
                format!(
                    "{file}: task_type SEQ_CLS but no `base_model.model.{want}` tensor (this host reads BERT's `classifier`; other heads such as `score` are not supported)"
                )
            })
    };
    Ok((find("classifier.weight")?, find("classifier.bias")?))
}

/// BERT's pooler (`pooler.dense`) from the backbone's own weights file.
/// A tensor's shape and values.
type Values = (Vec<usize>, Vec<f32>);

fn pooler(dir: &Path) -> anyhow::Result<(Values, Values)> {
    let path = dir.join("model.safetensors");
    let ckpt = Checkpoint::read(&path)?;
    let get = |suffix: &str| {
        ["", "bert."]
            .iter()
            .find_map(|p| ckpt.tensors.get(&format!("{p}pooler.dense.{suffix}")))
            .cloned()
            .with_context(|| {
                format!(
                    "{}: no `pooler.dense.{suffix}`: a SEQ_CLS adapter's classifier reads BERT's pooler, which this checkpoint lacks",
                    path.display()
                )
            })
    };
    Ok((get("weight")?, get("bias")?))
}

fn assign<B: AutodiffBackend>(
    model: &Model<B>,
    name: &str,
    shape: &[usize],
    v: Vec<f32>,
    from: &str,
) -> anyhow::Result<()> {
    let mut store = model.params.borrow_mut();
    let want = store
        .get(name)
        .with_context(|| format!("no parameter `{name}`"))?
        .shape
        .clone();
    anyhow::ensure!(
        want == shape,
        "{from} has shape {shape:?}, the head needs {want:?}"
    );
    let dev = store.device.clone();
    let prim = from_values::<B>(shape, v, &dev)?;
    Ok(store.assign(name, prim)?)
}

/// An adapter saved by HF peft: the plugin that recognises the config rebuilds the module (see
/// [`crate::adapters::module_spec_in`]), the backbone is the last component of
/// `base_model_name_or_path` from the model folders, and a `SEQ_CLS` file's classifier becomes
/// the task head.
pub fn load_hf_peft<B: AutodiffBackend>(
    dir: &Path,
    hf: &Json,
    registry: &peft_registry::Registry,
    device: &B::Device,
) -> anyhow::Result<Loaded<B>> {
    let cfg_path = dir.join(crate::adapters::CONFIG_FILE);
    let at = cfg_path.display().to_string();
    let task_type = match hf.get("task_type") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) => Some(s.as_str()),
        Some(other) => bail!("{at}: `task_type` is {other}, expected a string"),
    };
    let seq_cls = match task_type {
        None | Some("FEATURE_EXTRACTION") => false,
        Some("SEQ_CLS") => true,
        Some(t) => bail!("{at}: task_type {t:?} is not supported; this host reads {TASK_TYPES}"),
    };
    let spec = crate::adapters::module_spec_in(dir, registry)?;
    let base = hf
        .get("base_model_name_or_path")
        .and_then(|v| v.as_str())
        .and_then(|s| s.trim_end_matches('/').rsplit('/').next())
        .filter(|s| !s.is_empty())
        .with_context(|| format!("{at}: no base_model_name_or_path to find the backbone by"))?;
    let config: RunConfig =
        serde_json::from_value(serde_json::json!({ "backbone": base, "modules": [spec] }))
            .with_context(|| format!("{at}: rebuilding the run config"))?;
    let model = Model::<B>::build(&config, registry, device, 0).with_context(|| {
        format!(
            "{at}: building the module it describes (target_modules {}) on backbone `{base}`",
            hf.get("target_modules").unwrap_or(&Json::Null)
        )
    })?;
    let instance = config.modules[0].instance_name();
    let weights = dir.join(crate::adapters::WEIGHTS_FILE);
    let file = weights.display().to_string();
    let mut tasks = Vec::new();
    if seq_cls {
        let info = model.info();
        let arch = resolve_backbone(&config.backbone)?;
        let model_type = arch.config.get("model_type").and_then(|v| v.as_str());
        if model_type != Some("bert") {
            bail!(
                "{at}: a SEQ_CLS adapter's head is read for BERT backbones ([CLS] pooler + `classifier`); backbone `{}` is {model_type:?}",
                info.name
            );
        }
        let saved = hf.get("modules_to_save").and_then(|v| v.as_array());
        if !saved.is_some_and(|a| a.iter().any(|m| m.as_str() == Some("classifier"))) {
            bail!(
                "{at}: task_type SEQ_CLS without `classifier` in modules_to_save: the file has no trained head"
            );
        }
        let ckpt = Checkpoint::read(&weights)?;
        let ((wk, ws, w), (bk, bs, b)) = classifier(&ckpt, &file)?;
        anyhow::ensure!(
            ws.len() == 2 && ws[1] == info.hidden_size && ws[0] >= 2,
            "{file}: `{wk}` has shape {ws:?}, expected [classes >= 2, {}]",
            info.hidden_size
        );
        let classes = ws[0];
        let head = Head::ClsPooler {
            prefix: HEAD_PREFIX.into(),
            classes,
        };
        head.create(&mut model.params.borrow_mut(), info.hidden_size)?;
        let bdir = arch
            .dir
            .as_deref()
            .context("a SEQ_CLS head needs the backbone's weights file (pooler)")?;
        let ((pws, pw), (pbs, pb)) = pooler(bdir)?;
        let p = format!("{HEAD_PREFIX}.pooler");
        assign(
            &model,
            &format!("{p}.weight"),
            &pws,
            pw,
            "pooler.dense.weight",
        )?;
        assign(&model, &format!("{p}.bias"), &pbs, pb, "pooler.dense.bias")?;
        assign(
            &model,
            &format!("{HEAD_PREFIX}.weight"),
            &ws,
            w,
            &format!("{file}: `{wk}`"),
        )?;
        assign(
            &model,
            &format!("{HEAD_PREFIX}.bias"),
            &bs,
            b,
            &format!("{file}: `{bk}`"),
        )?;
        crate::adapters::load_except(&model, &instance, dir, &[wk, bk])?;
        tasks.push(TaskRecord {
            name: UNNAMED_TASK.into(),
            kind: kind_str(TaskKind::Classification).into(),
            labels: (0..classes).map(|i| format!("LABEL_{i}")).collect(),
            metric: "accuracy".into(),
            eval_split: "dev".into(),
            head,
        });
    } else {
        crate::adapters::load(&model, &instance, dir)?;
    }
    finish(model, config, tasks, &at, dir)
}

/// The [`Loaded`] of a foreign folder: a manifest that records the one module, the backbone
/// and the tasks found.
fn finish<B: AutodiffBackend>(
    model: Model<B>,
    config: RunConfig,
    tasks: Vec<TaskRecord>,
    at: &str,
    dir: &Path,
) -> anyhow::Result<Loaded<B>> {
    let m = &model.modules.modules[0];
    let manifest = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        code_version: format!("foreign: {at}"),
        backbone: backbone_record(&config, model.info().hidden_size)?,
        plugins: vec![PluginRecord {
            instance: m.name.clone(),
            plugin: m.plugin.clone(),
            version: m.plugin_version.clone(),
            api_version: m.api_version.to_string(),
        }],
        tasks,
        tensors: model
            .params
            .borrow()
            .iter()
            // BERT's pooler is the checkpoint's, frozen in HF too: not part of what was trained.
            .filter(|p| {
                p.owner != "backbone" && !p.name.starts_with(&format!("{HEAD_PREFIX}.pooler."))
            })
            .map(|p| TensorRecord {
                name: p.name.clone(),
                shape: p.shape.clone(),
                group: p.group.clone(),
                owner: p.owner.clone(),
            })
            .collect(),
        config,
    };
    Ok(Loaded {
        model,
        manifest,
        dir: dir.to_path_buf(),
    })
}

/// A foreign adapter folder (no `adapter.json`, an `adapter_config.json`): HF peft's or
/// AdapterHub's, told apart by the config.
pub fn load<B: AutodiffBackend>(
    dir: &Path,
    registry: &peft_registry::Registry,
    device: &B::Device,
) -> anyhow::Result<Loaded<B>> {
    let cfg_path = dir.join(crate::adapters::CONFIG_FILE);
    let at = cfg_path.display().to_string();
    let cfg: Json = serde_json::from_str(
        &std::fs::read_to_string(&cfg_path).with_context(|| format!("reading {at}"))?,
    )
    .with_context(|| format!("{at}: not valid JSON"))?;
    if cfg.get("peft_type").is_some() {
        load_hf_peft(dir, &cfg, registry, device)
    } else if crate::adapters::is_adapterhub(&cfg) {
        load_adapterhub(dir, &cfg, registry, device)
    } else {
        bail!(
            "{at}: neither HF peft's (no `peft_type`) nor AdapterHub's (no `config` + `version`: \"adapters...\") adapter config"
        )
    }
}

/// An AdapterHub (`adapters` library) adapter: the plugin that recognises its config rebuilds
/// the module (the houlsby plugin: serial bottleneck adapters such as `double_seq_bn`), the
/// backbone is the last component of `model_name`. AdapterHub saves prediction heads apart
/// (`head_config.json`), which this host does not read: the folder has no task head.
fn load_adapterhub<B: AutodiffBackend>(
    dir: &Path,
    cfg: &Json,
    registry: &peft_registry::Registry,
    device: &B::Device,
) -> anyhow::Result<Loaded<B>> {
    let at = dir.join(crate::adapters::CONFIG_FILE).display().to_string();
    let spec = crate::adapters::module_spec_in(dir, registry)?;
    let base = cfg
        .get("model_name")
        .and_then(|v| v.as_str())
        .and_then(|s| s.trim_end_matches('/').rsplit('/').next())
        .filter(|s| !s.is_empty())
        .with_context(|| format!("{at}: no model_name to find the backbone by"))?;
    let config: RunConfig =
        serde_json::from_value(serde_json::json!({ "backbone": base, "modules": [spec] }))
            .with_context(|| format!("{at}: rebuilding the run config"))?;
    let model = Model::<B>::build(&config, registry, device, 0)
        .with_context(|| format!("{at}: building the module it describes on backbone `{base}`"))?;
    let hidden = cfg.get("hidden_size").and_then(|v| v.as_u64());
    anyhow::ensure!(
        hidden == Some(model.info().hidden_size as u64),
        "{at}: hidden_size {hidden:?}, backbone `{base}` has {}",
        model.info().hidden_size
    );
    let instance = config.modules[0].instance_name();
    crate::adapters::load(&model, &instance, dir)?;
    finish(model, config, Vec::new(), &at, dir)
}

/// The head of a foreign adapter whose labels are positional, if `loaded` is one.
pub fn unnamed_task<B: AutodiffBackend>(loaded: &Loaded<B>) -> Option<&TaskRecord> {
    match loaded.manifest.tasks.as_slice() {
        [t] if t.name == UNNAMED_TASK => Some(t),
        _ => None,
    }
}

/// A foreign head bound to task `task` (its name, labels in order, metric and split): the
/// classifier's row `i` answers the task's label `i`, as HF's Trainer maps label ids.
pub fn bind_task(
    head: &TaskRecord,
    task: &crate::data::Task,
    at: &Path,
) -> anyhow::Result<TaskRecord> {
    anyhow::ensure!(
        task.kind == TaskKind::Classification && task.labels.len() == head.labels.len(),
        "{}: the adapter's classifier has {} classes; task `{}` is {:?} with labels {:?}",
        at.display(),
        head.labels.len(),
        task.name,
        task.kind,
        task.labels
    );
    Ok(TaskRecord {
        name: task.name.clone(),
        kind: head.kind.clone(),
        labels: task.labels.clone(),
        metric: task.metric.clone(),
        eval_split: task.eval_split.clone(),
        head: head.head.clone(),
    })
}
