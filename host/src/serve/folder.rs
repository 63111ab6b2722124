//! The adapter folder every run writes beside its result.json: the trained modules' and heads'
//! tensors (`adapter.safetensors`) and a manifest (`adapter.json`) that says what they need to
//! be used again: each plugin with its version and API version, the backbone with the sha256 of
//! its weights, the tasks with their labels and heads, and the run config that rebuilds the
//! model. [`load`] checks all of it and names every mismatch, so a folder is never applied to a
//! model it was not trained on.
use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::Mutex,
};

use anyhow::{bail, Context};
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    backbone::weights::Checkpoint,
    bridge::value::ft,
    config::RunConfig,
    data::{Task, TaskKind},
    files::write_atomic,
    heads::Head,
    model::{resolve_backbone, Model},
    params::from_values,
};

pub const MANIFEST_FILE: &str = "adapter.json";
pub const TENSORS_FILE: &str = "adapter.safetensors";
/// `format` of the manifest.
pub const FORMAT: &str = "peft-host-adapter-folder";
/// Bumped when the manifest changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;

/// A module instance the adapter needs: the plugin that made it, by version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PluginRecord {
    pub instance: String,
    pub plugin: String,
    pub version: String,
    pub api_version: String,
}

/// The backbone the adapter was trained on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct BackboneRecord {
    pub name: String,
    pub hidden_size: usize,
    /// sha256 of `model.safetensors`; none for a randomly initialised backbone.
    pub weights_sha256: Option<String>,
    /// How the frozen weight matrices were held in training (`f32`, `bf16`; absent: f32).
    #[serde(default = "f32_name", skip_serializing_if = "is_f32_name")]
    pub dtype: String,
}

fn f32_name() -> String {
    "f32".into()
}

fn is_f32_name(s: &str) -> bool {
    s == "f32"
}

/// A task the adapter answers, with what a prediction needs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TaskRecord {
    pub name: String,
    /// `classification`, `multiple_choice` or `regression`.
    pub kind: String,
    pub labels: Vec<String>,
    pub metric: String,
    pub eval_split: String,
    pub head: Head,
}

/// One saved tensor.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TensorRecord {
    pub name: String,
    pub shape: Vec<usize>,
    pub group: String,
    pub owner: String,
}

/// `adapter.json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    /// The peft-host build that wrote it (see [`crate::serve::code_version`]).
    pub code_version: String,
    pub backbone: BackboneRecord,
    pub plugins: Vec<PluginRecord>,
    pub tasks: Vec<TaskRecord>,
    pub tensors: Vec<TensorRecord>,
    /// The run config: rebuilds the backbone and the modules.
    pub config: RunConfig,
}

impl TaskRecord {
    /// A task without examples, for heads that need its labels and kind.
    pub fn task(&self) -> anyhow::Result<Task> {
        Ok(Task {
            name: self.name.clone(),
            kind: kind_from_str(&self.kind)?,
            labels: self.labels.clone(),
            train: Vec::new(),
            eval: Vec::new(),
            eval_split: self.eval_split.clone(),
            metric: self.metric.clone(),
        })
    }
}

pub fn kind_str(kind: TaskKind) -> &'static str {
    match kind {
        TaskKind::Classification => "classification",
        TaskKind::MultipleChoice => "multiple_choice",
        TaskKind::Regression => "regression",
    }
}

fn kind_from_str(s: &str) -> anyhow::Result<TaskKind> {
    Ok(match s {
        "classification" => TaskKind::Classification,
        "multiple_choice" => TaskKind::MultipleChoice,
        "regression" => TaskKind::Regression,
        other => bail!("unknown task kind `{other}`"),
    })
}

/// Hashes already computed in this process, by (path, length, mtime): a run and the verbs that
/// follow it hash an 87 MB file once.
static HASHES: Mutex<Option<HashMap<FileStamp, String>>> = Mutex::new(None);

/// A file as of one moment: path, length, modification time.
type FileStamp = (PathBuf, u64, std::time::SystemTime);

/// The sha256 (hex) of a file, memoised per process while the file is unchanged.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let key = (path.to_path_buf(), meta.len(), meta.modified()?);
    if let Some(h) = HASHES.lock().unwrap().as_ref().and_then(|m| m.get(&key)) {
        return Ok(h.clone());
    }
    let mut file =
        std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("reading {}", path.display()))?;
    let hex: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    HASHES
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(key, hex.clone());
    Ok(hex)
}

/// The backbone a config names, with its weights' hash.
pub fn backbone_record(cfg: &RunConfig, hidden_size: usize) -> anyhow::Result<BackboneRecord> {
    let files = resolve_backbone(&cfg.backbone)?;
    let weights_sha256 = match &files.dir {
        Some(d) => Some(sha256_file(&d.join("model.safetensors"))?),
        None => None,
    };
    Ok(BackboneRecord {
        name: files.name,
        hidden_size,
        weights_sha256,
        dtype: cfg.backbone.dtype().as_str().into(),
    })
}

/// Whether a parameter belongs in the adapter: everything modules and heads own, plus backbone
/// weights that were trained (AdapterBias's LayerNorms, BitFit's biases).
fn saved<B: AutodiffBackend>(p: &crate::params::Param<B>) -> bool {
    p.owner != "backbone" || p.trainable
}

/// Writes the adapter folder of a trained model into `dir` (created; each file atomically).
pub fn save<B: AutodiffBackend>(
    model: &Model<B>,
    cfg: &RunConfig,
    tasks: &[(&Task, &Head)],
    dir: &Path,
) -> anyhow::Result<Manifest> {
    let mut records = Vec::new();
    let mut tensors = Vec::new();
    {
        let store = model.params.borrow();
        for p in store.iter().filter(|p| saved(p)) {
            records.push(TensorRecord {
                name: p.name.clone(),
                shape: p.shape.clone(),
                group: p.group.clone(),
                owner: p.owner.clone(),
            });
            let v = crate::by_rank!(p.shape.len(), |D| Ok(ft::<B, D>(p.value.clone())
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .map_err(|e| peft_api::ApiError::internal(format!("{e:?}")))?))
            .map_err(|e| anyhow::anyhow!("reading `{}`: {e}", p.name))?;
            tensors.push((p.name.clone(), p.shape.clone(), v));
        }
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        code_version: super::code_version(),
        backbone: backbone_record(cfg, model.info().hidden_size)?,
        plugins: model
            .modules
            .modules
            .iter()
            .map(|m| PluginRecord {
                instance: m.name.clone(),
                plugin: m.plugin.clone(),
                version: m.plugin_version.clone(),
                api_version: m.api_version.to_string(),
            })
            .collect(),
        tasks: tasks
            .iter()
            .map(|(t, h)| TaskRecord {
                name: t.name.clone(),
                kind: kind_str(t.kind).into(),
                labels: t.labels.clone(),
                metric: t.metric.clone(),
                eval_split: t.eval_split.clone(),
                head: (*h).clone(),
            })
            .collect(),
        tensors: records,
        config: cfg.clone(),
    };
    let meta = BTreeMap::from([("format".to_string(), FORMAT.to_string())]);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomic(
        &dir.join(TENSORS_FILE),
        &super::safetensors_bytes(&tensors, meta)?,
    )?;
    let json = serde_json::to_string_pretty(&manifest)? + "\n";
    write_atomic(&dir.join(MANIFEST_FILE), json.as_bytes())?;
    Ok(manifest)
}

/// Reads and parses `adapter.json`, naming the file in every error.
pub fn read_manifest(dir: &Path) -> anyhow::Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    if !dir.is_dir() {
        bail!("{}: no such adapter folder", dir.display());
    }
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: cannot read the adapter manifest (is {} an adapter folder written by `peft-host run`?)",
            path.display(),
            dir.display()
        )
    })?;
    let raw: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    if raw.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        bail!(
            "{}: `format` is {}, expected \"{FORMAT}\"",
            path.display(),
            raw.get("format")
                .map_or("missing".into(), |f| f.to_string())
        );
    }
    let m: Manifest = serde_json::from_value(raw)
        .with_context(|| format!("{}: not a readable adapter manifest", path.display()))?;
    if m.format_version != FORMAT_VERSION {
        bail!(
            "{}: format_version {} is not {FORMAT_VERSION}, the one this peft-host reads",
            path.display(),
            m.format_version
        );
    }
    Ok(m)
}

/// Everything in `m` that does not match this host: plugins missing or of another version or
/// API major version, a backbone with other weights. Empty when the adapter can be used.
pub fn mismatches(m: &Manifest, registry: &peft_registry::Registry) -> Vec<String> {
    let mut out = Vec::new();
    for p in &m.plugins {
        match registry.get(&p.plugin) {
            Err(_) => out.push(format!(
                "module `{}` needs plugin `{}` {}, which is not installed (see `peft-host plugins`)",
                p.instance, p.plugin, p.version
            )),
            Ok(e) => {
                if e.manifest.version != p.version {
                    out.push(format!(
                        "module `{}` was trained with plugin `{}` {}, this host has version {}",
                        p.instance, p.plugin, p.version, e.manifest.version
                    ));
                }
                // Another API minor is the same ABI (the plugin's own version, pinned above,
                // says what it computes): only another major makes the adapter unusable.
                let major = |v: &str| v.split('.').next().unwrap_or_default().to_string();
                if major(&e.api_version.to_string()) != major(&p.api_version) {
                    out.push(format!(
                        "module `{}`: plugin `{}` was built for API {}, the installed one for API {}",
                        p.instance, p.plugin, p.api_version, e.api_version
                    ));
                }
            }
        }
    }
    match backbone_record(&m.config, m.backbone.hidden_size) {
        Err(e) => out.push(format!("backbone `{}`: {e:#}", m.backbone.name)),
        Ok(b) => {
            if b.name != m.backbone.name {
                out.push(format!(
                    "trained on backbone `{}`, the config resolves to `{}`",
                    m.backbone.name, b.name
                ));
            }
            if b.weights_sha256 != m.backbone.weights_sha256 {
                out.push(format!(
                    "backbone `{}`: the weights differ from the ones it was trained on (sha256 {} there, {} here)",
                    m.backbone.name,
                    m.backbone.weights_sha256.as_deref().unwrap_or("none (random init)"),
                    b.weights_sha256.as_deref().unwrap_or("none (random init)")
                ));
            }
        }
    }
    out
}

/// A model rebuilt from an adapter folder, with its tasks.
pub struct Loaded<B: AutodiffBackend> {
    pub model: Model<B>,
    pub manifest: Manifest,
    pub dir: PathBuf,
}

impl<B: AutodiffBackend> Loaded<B> {
    /// The task `name` (or the only one), with its head.
    pub fn task(&self, name: Option<&str>) -> anyhow::Result<&TaskRecord> {
        let names: Vec<&str> = self
            .manifest
            .tasks
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        match name {
            Some(n) => self
                .manifest
                .tasks
                .iter()
                .find(|t| t.name == n)
                .with_context(|| {
                    format!(
                        "{}: the adapter has no task `{n}` (it has {names:?})",
                        self.dir.display()
                    )
                }),
            None if self.manifest.tasks.len() == 1 => Ok(&self.manifest.tasks[0]),
            None if self.manifest.tasks.is_empty() => bail!(
                "{}: the adapter has no task head (an adapter from another library): it can be dumped and exported, not used to predict",
                self.dir.display()
            ),
            None => bail!(
                "{}: the adapter answers several tasks {names:?}; pick one with --task",
                self.dir.display()
            ),
        }
    }
}

/// Rebuilds the model an adapter folder was trained with and loads its tensors, after checking
/// plugins, backbone and every tensor's presence and shape.
pub fn load<B: AutodiffBackend>(
    dir: &Path,
    registry: &peft_registry::Registry,
    device: &B::Device,
) -> anyhow::Result<Loaded<B>> {
    if !dir.join(MANIFEST_FILE).exists() && dir.join(crate::adapters::CONFIG_FILE).exists() {
        return load_foreign(dir, registry, device);
    }
    let manifest = read_manifest(dir)?;
    let bad = mismatches(&manifest, registry);
    if !bad.is_empty() {
        bail!(
            "{}: this adapter does not fit this host:\n  - {}",
            dir.display(),
            bad.join("\n  - ")
        );
    }
    let path = dir.join(TENSORS_FILE);
    let file = path.display().to_string();
    let ckpt = Checkpoint::read(&path)?;
    let model = Model::<B>::build(&manifest.config, registry, device, 0)
        .with_context(|| format!("{}: rebuilding the model", dir.display()))?;
    for t in &manifest.tasks {
        t.head
            .create(&mut model.params.borrow_mut(), model.info().hidden_size)
            .with_context(|| format!("{}: head of task `{}`", dir.display(), t.name))?;
    }
    let listed: BTreeMap<&str, &TensorRecord> = manifest
        .tensors
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let expected: Vec<(String, Vec<usize>)> = model
        .params
        .borrow()
        .iter()
        .filter(|p| p.owner != "backbone" || listed.contains_key(p.name.as_str()))
        .map(|p| (p.name.clone(), p.shape.clone()))
        .collect();
    if let Some(t) = manifest
        .tensors
        .iter()
        .find(|t| !expected.iter().any(|(n, _)| *n == t.name))
    {
        bail!(
            "{}: tensor `{}` (owner `{}`) is not a parameter of the rebuilt model",
            dir.join(MANIFEST_FILE).display(),
            t.name,
            t.owner
        );
    }
    let mut store = model.params.borrow_mut();
    let dev = store.device.clone();
    for (name, shape) in &expected {
        let (found, v) = ckpt
            .tensors
            .get(name)
            .with_context(|| format!("{file}: tensor `{name}` is missing"))?;
        if found != shape {
            bail!("{file}: tensor `{name}` has shape {found:?}, the model needs {shape:?}");
        }
        let prim = from_values::<B>(shape, v.clone(), &dev)?;
        store.assign(name, prim)?;
    }
    if let Some(extra) = ckpt
        .tensors
        .keys()
        .find(|k| !expected.iter().any(|(n, _)| n == *k))
    {
        bail!("{file}: tensor `{extra}` is not a parameter of the rebuilt model");
    }
    drop(store);
    Ok(Loaded {
        model,
        manifest,
        dir: dir.to_path_buf(),
    })
}

/// An adapter saved by another library (HF peft's or AdapterHub's `adapter_config.json` and
/// weights), with its task head where the file has one (see [`super::foreign`]).
pub fn load_foreign<B: AutodiffBackend>(
    dir: &Path,
    registry: &peft_registry::Registry,
    device: &B::Device,
) -> anyhow::Result<Loaded<B>> {
    super::foreign::load(dir, registry, device)
}
