//! Saving and loading a module instance's parameters: `adapter_model.safetensors` plus
//! `adapter_config.json` in a folder, written atomically.
//!
//! Two formats, told apart by the config file:
//! - **peft-host's own** (every plugin): the tensors under their local names (`<site>.down.weight`,
//!   ...) as f32, and a config `{"format": "peft-host-adapter", "plugin", "plugin_version",
//!   "instance", "config", "parameters": [{name, shape, group}]}`. Loading is bit-exact.
//! - **HF peft's** (plugins that answer `hf_peft_export` / `hf_peft_import`: LoRA, and prefix
//!   tuning where the layouts match): HF peft's file names, key names
//!   (`base_model.model.<module path>.lora_A.weight`, `prompt_embeddings`) and
//!   `adapter_config.json` fields, so `PeftModel.from_pretrained` reads what we write and we read
//!   what it writes. The plugin owns the key mapping (`keymap.rs`) and checks the config; this
//!   module only moves tensors.
mod keymap;

use std::{collections::BTreeMap, path::Path};

use anyhow::{bail, Context};
use burn::tensor::backend::AutodiffBackend;
use keymap::KeyMap;
use safetensors::{tensor::TensorView, Dtype};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};

use crate::{
    backbone::weights::Checkpoint,
    bridge::{value::ft, HostGraph},
    files::write_atomic,
    model::Model,
    modules::ModuleInstance,
    params::from_values,
};

pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
pub const CONFIG_FILE: &str = "adapter_config.json";
/// `format` of peft-host's own adapter config.
pub const FORMAT: &str = "peft-host-adapter";

/// One saved parameter, as listed in peft-host's own config.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SavedParam {
    /// Local name (without the instance prefix).
    pub name: String,
    pub shape: Vec<usize>,
    pub group: String,
}

/// peft-host's own `adapter_config.json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AdapterFileConfig {
    pub format: String,
    pub plugin: String,
    pub plugin_version: String,
    pub instance: String,
    /// The plugin's config section, to rebuild the module (`{"plugin": ..., "config": ...}`).
    pub config: Json,
    pub parameters: Vec<SavedParam>,
}

/// What [`save`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SavedFormat {
    PeftHost,
    HfPeft,
}

fn instance<'m, B: AutodiffBackend>(
    model: &'m Model<B>,
    name: &str,
) -> anyhow::Result<&'m ModuleInstance> {
    model
        .modules
        .modules
        .iter()
        .find(|m| m.name == name)
        .with_context(|| {
            let known: Vec<&str> = model
                .modules
                .modules
                .iter()
                .map(|m| m.name.as_str())
                .collect();
            format!("no module instance `{name}` (the model has {known:?})")
        })
}

fn extension_call<B: AutodiffBackend>(
    model: &Model<B>,
    m: &ModuleInstance,
    name: &str,
    args: &Json,
) -> anyhow::Result<Option<Json>> {
    let graph = HostGraph::new(&model.params, false);
    let out = m.call(&graph, name, &args.to_string())?;
    out.map(|s| {
        serde_json::from_str(&s)
            .with_context(|| format!("{}: `{name}` answered invalid JSON", m.describe()))
    })
    .transpose()
}

/// A parameter's values as f32.
fn values<B: AutodiffBackend>(
    model: &Model<B>,
    full: &str,
) -> anyhow::Result<(Vec<usize>, Vec<f32>)> {
    let store = model.params.borrow();
    let p = store
        .get(full)
        .with_context(|| format!("no parameter `{full}`"))?;
    let shape = p.shape.clone();
    let prim = p.value.clone();
    let data = crate::by_rank!(shape.len(), |D| Ok(ft::<B, D>(prim).into_data()))
        .map_err(|e: peft_api::ApiError| anyhow::anyhow!("reading `{full}`: {e}"))?;
    let v = data
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading `{full}`: {e:?}"))?;
    Ok((shape, v))
}

fn serialize(
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    metadata: BTreeMap<String, String>,
) -> anyhow::Result<Vec<u8>> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, s, v)| {
            (
                k.clone(),
                s.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(k, s, b)| Ok((k.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let meta: std::collections::HashMap<String, String> = metadata.into_iter().collect();
    Ok(safetensors::serialize(views, Some(meta))?)
}

/// Saves module instance `name`'s parameters into `dir`. A plugin that speaks HF peft (LoRA)
/// is saved in HF peft's format, with `base_model` as `base_model_name_or_path` (default: the
/// backbone's name); the others in peft-host's own, with `config` (the plugin's config section)
/// recorded so the module can be rebuilt.
pub fn save<B: AutodiffBackend>(
    model: &Model<B>,
    name: &str,
    config: &Json,
    base_model: Option<&str>,
    dir: &Path,
) -> anyhow::Result<SavedFormat> {
    let m = instance(model, name)?;
    let base = base_model.unwrap_or(&model.info().name).to_string();
    if let Some(export) = extension_call(
        model,
        m,
        "hf_peft_export",
        &json!({ "base_model_name_or_path": base }),
    )? {
        let maps: Vec<KeyMap> = serde_json::from_value(export["tensors"].clone())
            .with_context(|| format!("{}: unreadable hf_peft_export key map", m.describe()))?;
        let mut tensors = Vec::new();
        for k in &maps {
            tensors.push((k.key.clone(), k.shape.clone(), k.gather(model, name)?));
        }
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        let bytes = serialize(&tensors, meta)?;
        write_atomic(&dir.join(WEIGHTS_FILE), &bytes)?;
        let cfg = serde_json::to_string_pretty(&export["adapter_config"])? + "\n";
        write_atomic(&dir.join(CONFIG_FILE), cfg.as_bytes())?;
        return Ok(SavedFormat::HfPeft);
    }
    let store = model.params.borrow();
    let prefix = format!("{name}.");
    let mut tensors = Vec::new();
    let mut listed = Vec::new();
    for p in store.iter().filter(|p| p.owner == name) {
        let local = p.name.strip_prefix(&prefix).unwrap_or(&p.name).to_string();
        listed.push(SavedParam {
            name: local.clone(),
            shape: p.shape.clone(),
            group: p.group.clone(),
        });
        tensors.push(local);
    }
    drop(store);
    let tensors = tensors
        .into_iter()
        .map(|local| {
            let (s, v) = values(model, &format!("{prefix}{local}"))?;
            Ok((local, s, v))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let file_cfg = AdapterFileConfig {
        format: FORMAT.into(),
        plugin: m.plugin.clone(),
        plugin_version: m.plugin_version.clone(),
        instance: name.to_string(),
        config: config.clone(),
        parameters: listed,
    };
    let meta = BTreeMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("plugin".to_string(), m.plugin.clone()),
    ]);
    write_atomic(&dir.join(WEIGHTS_FILE), &serialize(&tensors, meta)?)?;
    let cfg = serde_json::to_string_pretty(&file_cfg)? + "\n";
    write_atomic(&dir.join(CONFIG_FILE), cfg.as_bytes())?;
    Ok(SavedFormat::PeftHost)
}

fn read_config(dir: &Path) -> anyhow::Result<Json> {
    let path = dir.join(CONFIG_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// The module section (`{"plugin", "name", "config"}`) that rebuilds the module saved in `dir`,
/// from either format, with the built-in plugins (see [`module_spec_in`]).
pub fn module_spec(dir: &Path) -> anyhow::Result<Json> {
    module_spec_in(dir, &peft_registry::Registry::with_static_plugins()?)
}

/// [`module_spec`] with `registry`'s plugins: a foreign config (HF peft's, AdapterHub's) is
/// offered to each module plugin (`hf_peft_module_spec` / `adapterhub_module_spec` on a fresh
/// instance); the first that recognises it rebuilds it, so each plugin reads its own foreign
/// formats.
pub fn module_spec_in(dir: &Path, registry: &peft_registry::Registry) -> anyhow::Result<Json> {
    let cfg = read_config(dir)?;
    let file = dir.join(CONFIG_FILE);
    if let Some(t) = cfg.get("peft_type") {
        return offer(registry, "hf_peft_module_spec", &cfg, &file)?.with_context(|| {
            format!(
                "{}: no installed plugin reads HF peft adapters of peft_type {t}",
                file.display()
            )
        });
    }
    if is_adapterhub(&cfg) {
        let weights = hub_weights(dir)?;
        let keys: Vec<String> = Checkpoint::read(&weights)?.tensors.into_keys().collect();
        let args = json!({ "adapter_config": cfg, "keys": keys });
        return offer(registry, "adapterhub_module_spec", &args, &file)?.with_context(|| {
            format!(
                "{}: no installed plugin reads AdapterHub adapters of architecture {} (the houlsby plugin reads serial bottleneck adapters such as double_seq_bn)",
                file.display(),
                cfg["config"].get("architecture").unwrap_or(&json!("bottleneck"))
            )
        });
    }
    let f: AdapterFileConfig = serde_json::from_value(cfg).with_context(|| {
        format!(
            "{}/{CONFIG_FILE} is neither HF peft's, AdapterHub's nor peft-host's",
            dir.display()
        )
    })?;
    Ok(json!({ "plugin": f.plugin, "name": f.instance, "config": f.config }))
}

/// Offers `args` to each module plugin's extension `call`; the first non-null answer.
fn offer(
    registry: &peft_registry::Registry,
    call: &str,
    args: &Json,
    file: &Path,
) -> anyhow::Result<Option<Json>> {
    let store = std::cell::RefCell::new(crate::params::ParamStore::<crate::device::Cpu>::new(
        Default::default(),
        0,
    ));
    let graph = HostGraph::new(&store, false);
    let args = args.to_string();
    for e in registry
        .entries()
        .filter(|e| e.manifest.kind == peft_api::PluginKind::Module)
    {
        let Ok(mut obj) = registry.create_module(&e.manifest.name, &Json::Null) else {
            continue;
        };
        let answer = obj
            .call(
                graph.as_abi(),
                abi_stable::std_types::RStr::from(call),
                abi_stable::std_types::RStr::from(args.as_str()),
            )
            .into_result();
        match answer {
            Ok(s) => {
                let spec: Json = serde_json::from_str(s.as_str())
                    .with_context(|| format!("plugin `{}`: unreadable {call}", e.manifest.name))?;
                if !spec.is_null() {
                    return Ok(Some(spec));
                }
            }
            Err(err) if err.is_unsupported() => {}
            Err(err) => bail!("{}: {err}", file.display()),
        }
    }
    Ok(None)
}

/// AdapterHub's weights file when saved with `use_safetensors=True`.
pub const HUB_WEIGHTS_FILE: &str = "adapter.safetensors";
/// What AdapterHub writes otherwise (a torch pickle, which this host does not read).
pub const HUB_PICKLE_FILE: &str = "pytorch_adapter.bin";

/// Whether `cfg` is an `adapter_config.json` written by AdapterHub's `adapters` library (or
/// the older `adapter-transformers`).
pub fn is_adapterhub(cfg: &Json) -> bool {
    cfg.get("config").is_some()
        && cfg
            .get("version")
            .and_then(|v| v.as_str())
            .is_some_and(|v| v.starts_with("adapters") || v.starts_with("adapter-transformers"))
}

/// The safetensors file of an AdapterHub adapter folder, or an error saying how to get one.
pub fn hub_weights(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join(HUB_WEIGHTS_FILE);
    if path.exists() {
        return Ok(path);
    }
    if dir.join(HUB_PICKLE_FILE).exists() {
        bail!(
            "{}: a torch pickle, which this host does not read; save the adapter with `model.save_adapter(dir, name, use_safetensors=True)` to get {HUB_WEIGHTS_FILE}",
            dir.join(HUB_PICKLE_FILE).display()
        );
    }
    bail!(
        "{}: missing (an AdapterHub adapter folder needs its weights)",
        path.display()
    )
}

fn assign<B: AutodiffBackend>(
    model: &Model<B>,
    full: &str,
    shape: &[usize],
    v: &[f32],
) -> anyhow::Result<()> {
    let mut store = model.params.borrow_mut();
    let device = store.device.clone();
    let want = store
        .get(full)
        .with_context(|| format!("the model has no parameter `{full}`"))?
        .shape
        .clone();
    if want != shape {
        bail!("`{full}` has shape {want:?}, the file has {shape:?}");
    }
    let prim = from_values::<B>(shape, v.to_vec(), &device)?;
    Ok(store.assign(full, prim)?)
}

/// Loads the adapter in `dir` into module instance `name` of `model` (built with the module
/// that [`module_spec`] describes). Every parameter must be present with its shape.
pub fn load<B: AutodiffBackend>(model: &Model<B>, name: &str, dir: &Path) -> anyhow::Result<()> {
    load_except(model, name, dir, &[])
}

/// [`load`], where the tensors named in `others` (file keys: an HF peft file's task head,
/// which the caller reads) are not counted as extra.
pub fn load_except<B: AutodiffBackend>(
    model: &Model<B>,
    name: &str,
    dir: &Path,
    others: &[String],
) -> anyhow::Result<()> {
    let m = instance(model, name)?;
    let cfg = read_config(dir)?;
    if is_adapterhub(&cfg) {
        return load_adapterhub(model, m, dir, &cfg);
    }
    let path = dir.join(WEIGHTS_FILE);
    let ckpt = Checkpoint::read(&path)?;
    let file = path.display().to_string();
    if cfg.get("peft_type").is_some() {
        let Some(import) = extension_call(model, m, "hf_peft_import", &cfg)? else {
            bail!(
                "{}: cannot read HF peft adapters ({} does not answer `hf_peft_import`)",
                file,
                m.describe()
            );
        };
        let maps: Vec<KeyMap> = serde_json::from_value(import["tensors"].clone())
            .with_context(|| format!("{}: unreadable hf_peft_import key map", m.describe()))?;
        // HF keys may carry the task model's wrapper (`bert.`, `model.`) after `base_model.model.`.
        let normalise = |k: &str| -> String {
            let k = k.strip_prefix("base_model.model.").unwrap_or(k);
            let k = k
                .strip_prefix("bert.")
                .or_else(|| k.strip_prefix("model."))
                .unwrap_or(k);
            // Adapter names saved inline (`lora_A.default.weight`) by some peft versions.
            k.replace(".lora_A.default.", ".lora_A.")
                .replace(".lora_B.default.", ".lora_B.")
        };
        let by_norm: BTreeMap<String, &String> =
            ckpt.tensors.keys().map(|k| (normalise(k), k)).collect();
        let mut used = std::collections::BTreeSet::new();
        for k in &maps {
            let found = ckpt.tensors.get_key_value(&k.key).or_else(|| {
                by_norm
                    .get(&normalise(&k.key))
                    .and_then(|orig| ckpt.tensors.get_key_value(*orig))
            });
            let Some((orig, (shape, v))) = found else {
                bail!(
                    "{file}: tensor `{}` is missing ({} has {} tensors)",
                    k.key,
                    file,
                    ckpt.tensors.len()
                );
            };
            if *shape != k.shape {
                bail!(
                    "{file}: `{orig}` has shape {shape:?}, expected {:?}",
                    k.shape
                );
            }
            k.scatter(model, name, v)?;
            used.insert(orig.clone());
        }
        let extra: Vec<&String> = ckpt
            .tensors
            .keys()
            .filter(|k| !used.contains(*k) && !others.contains(k))
            .collect();
        if !extra.is_empty() {
            bail!(
                "{file}: {} tensors do not belong to module `{name}`'s targets, e.g. `{}`",
                extra.len(),
                extra[0]
            );
        }
        return Ok(());
    }
    let f: AdapterFileConfig = serde_json::from_value(cfg).with_context(|| {
        format!(
            "{}/{CONFIG_FILE} is neither HF peft's nor peft-host's",
            dir.display()
        )
    })?;
    if f.plugin != m.plugin {
        bail!(
            "{file}: saved from plugin `{}`, module `{name}` is plugin `{}`",
            f.plugin,
            m.plugin
        );
    }
    let prefix = format!("{name}.");
    let owned: Vec<String> = model
        .params
        .borrow()
        .iter()
        .filter(|p| p.owner == name)
        .map(|p| p.name.strip_prefix(&prefix).unwrap_or(&p.name).to_string())
        .collect();
    for local in &owned {
        let (shape, v) = ckpt.tensors.get(local).with_context(|| {
            format!("{file}: parameter `{local}` of module `{name}` is missing")
        })?;
        assign(model, &format!("{prefix}{local}"), shape, v)?;
    }
    if let Some(extra) = ckpt.tensors.keys().find(|k| !owned.contains(k)) {
        bail!("{file}: tensor `{extra}` is not a parameter of module `{name}`");
    }
    Ok(())
}

/// An AdapterHub adapter's tensors into module `m`: the plugin maps its keys (without the
/// model prefix, e.g. `bert.`, which a file key may carry); every mapped tensor must be there
/// with its shape, and nothing else may be.
fn load_adapterhub<B: AutodiffBackend>(
    model: &Model<B>,
    m: &ModuleInstance,
    dir: &Path,
    cfg: &Json,
) -> anyhow::Result<()> {
    let path = hub_weights(dir)?;
    let file = path.display().to_string();
    let ckpt = Checkpoint::read(&path)?;
    let Some(import) = extension_call(model, m, "adapterhub_import", cfg)? else {
        bail!(
            "{}: cannot read AdapterHub adapters ({} does not answer `adapterhub_import`)",
            dir.join(CONFIG_FILE).display(),
            m.describe()
        );
    };
    let maps: Vec<KeyMap> = serde_json::from_value(import["tensors"].clone())
        .with_context(|| format!("{}: unreadable adapterhub_import key map", m.describe()))?;
    let mut used = std::collections::BTreeSet::new();
    for k in &maps {
        let suffix = format!(".{}", k.key);
        let found: Vec<&String> = ckpt
            .tensors
            .keys()
            .filter(|f| **f == k.key || f.ends_with(&suffix))
            .collect();
        let orig = match found.as_slice() {
            [one] => *one,
            [] => bail!(
                "{file}: tensor `{}` is missing ({file} has {} tensors)",
                k.key,
                ckpt.tensors.len()
            ),
            many => bail!("{file}: several tensors end in `{}`: {many:?}", k.key),
        };
        let (shape, v) = &ckpt.tensors[orig];
        if *shape != k.shape {
            bail!(
                "{file}: `{orig}` has shape {shape:?}, expected {:?}",
                k.shape
            );
        }
        k.scatter(model, &m.name, v)?;
        used.insert(orig.clone());
    }
    if let Some(extra) = ckpt.tensors.keys().find(|k| !used.contains(*k)) {
        bail!(
            "{file}: tensor `{extra}` is not a parameter of module `{}` as its adapter_config.json describes it",
            m.name
        );
    }
    Ok(())
}
