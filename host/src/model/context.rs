//! Context encoders (HyperT5, `docs/architecture.md` §6): a plugin that reads a task's
//! few-shot examples at the start of a pass and `SET_CONTEXT`s generated tensors, which the
//! modules configured with `from_context` read. In training the encoder runs in every pass on
//! the same autodiff graph, so the downstream loss trains its `hyper` parameters; at
//! evaluation it runs once per task and the host caches the generated values (handles die
//! with the pass), cleared by the next training pass.
//!
//! Examples reach the encoder as `input [SEP] answer` token ids, padding mask and type ids,
//! each `[k, T]`; an example longer than the encoder's `max_length` is truncated longest-first
//! (as every batch is), never refused.
use std::{cell::RefCell, collections::HashMap};

use abi_stable::std_types::{RStr, RVec};
use anyhow::{bail, Context};
use burn::tensor::backend::AutodiffBackend;
use peft_api::{BackboneInfo, ContextEncoderBox};
use peft_registry::Registry;
use rand::{rngs::StdRng, seq::index::sample, SeedableRng};
use serde_json::json;

use crate::{
    bridge::{HostGraph, Value},
    config::PluginSpec,
    data::target_text,
    data::{Example, Task},
    model::Model,
    modules::Composition,
    params::ParamStore,
};

/// What an encoder generated for one task: context name and value.
pub type Generated<B> = Vec<(String, Value<B>)>;

/// A context encoder attached to a model, with its host-side options and eval cache.
pub struct ContextEncoder<B: AutodiffBackend> {
    /// Instance name: the namespace of its parameters (the plugin's name).
    pub name: String,
    pub plugin_version: String,
    obj: RefCell<ContextEncoderBox>,
    /// Context names it sets (its `outputs` call).
    pub outputs: Vec<String>,
    /// Few-shot examples per pass.
    pub k: usize,
    /// Tokens per example.
    pub max_length: usize,
    rng: RefCell<StdRng>,
    cache: RefCell<HashMap<String, Generated<B>>>,
    /// Tasks whose context is fixed texts rather than `k` of their examples (CACLM: a
    /// window's segments A and D), by task name.
    fixed: RefCell<HashMap<String, Vec<String>>>,
}

impl<B: AutodiffBackend> ContextEncoder<B> {
    /// Creates the encoder, lets it create its parameters, and checks that every output is
    /// read by a module (and every `consumers` entry is a module that reads one).
    pub fn attach(
        spec: &PluginSpec,
        registry: &Registry,
        info: &BackboneInfo,
        params: &RefCell<ParamStore<B>>,
        modules: &Composition,
        seed: u64,
    ) -> anyhow::Result<Self> {
        let here = format!("/context_encoder (plugin `{}`)", spec.plugin);
        let entry = registry.get(&spec.plugin).with_context(|| here.clone())?;
        let mut obj = registry
            .create_context_encoder(&spec.plugin, &spec.config)
            .with_context(|| here.clone())?;
        let name = spec.plugin.clone();
        let info_json = serde_json::to_string(info)?;
        let graph = HostGraph::new(params, false);
        let call = |obj: &mut ContextEncoderBox, what: &str| -> anyhow::Result<serde_json::Value> {
            let out = graph
                .with_namespace(&name, || {
                    obj.call(graph.as_abi(), RStr::from(what), RStr::from("null"))
                        .into_result()
                })
                .with_context(|| format!("{here}: call `{what}`"))?;
            Ok(serde_json::from_str(&out)?)
        };
        graph
            .with_namespace(&name, || {
                obj.attach(graph.as_abi(), RStr::from(info_json.as_str()))
                    .into_result()
            })
            .with_context(|| format!("{here} {} attaching", entry.manifest.version))?;
        let outputs: Vec<String> = serde_json::from_value(call(&mut obj, "outputs")?)
            .with_context(|| format!("{here}: `outputs` is not a list of names"))?;
        let opts = call(&mut obj, "host_options")?;
        let k = opts["k"].as_u64().unwrap_or(16) as usize;
        let max_length = opts["max_length"].as_u64().unwrap_or(128) as usize;
        let consumers: Vec<String> =
            serde_json::from_value(opts["consumers"].clone()).unwrap_or_default();
        // Which module reads what.
        let mut reads: Vec<(String, Vec<String>)> = Vec::new();
        for m in &modules.modules {
            let r = m
                .call(&graph, "context_inputs", "null")?
                .map(|s| serde_json::from_str::<Vec<String>>(&s))
                .transpose()
                .with_context(|| format!("{}: `context_inputs`", m.describe()))?
                .unwrap_or_default();
            reads.push((m.name.clone(), r));
        }
        for out in &outputs {
            if !reads.iter().any(|(_, r)| r.contains(out)) {
                bail!(
                    "{here} generates `{out}`, which no module reads: give a `prefix` or `lora` module `\"from_context\"` naming it (modules: {})",
                    modules.modules.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
                );
            }
        }
        for c in &consumers {
            let Some((_, r)) = reads.iter().find(|(m, _)| m == c) else {
                bail!("{here}: consumer `{c}` is not a module of this run");
            };
            if !r.iter().any(|x| outputs.contains(x)) {
                bail!("{here}: consumer `{c}` reads none of the encoder's outputs {outputs:?} (it reads {r:?}); set its `from_context`");
            }
        }
        for (m, r) in &reads {
            for x in r {
                if !outputs.contains(x) {
                    bail!("/modules: module `{m}` reads context `{x}`, which the context encoder `{}` does not generate (it generates {outputs:?})", spec.plugin);
                }
            }
        }
        drop(graph);
        Ok(ContextEncoder {
            name,
            plugin_version: entry.manifest.version.clone(),
            obj: RefCell::new(obj),
            outputs,
            k,
            max_length,
            rng: RefCell::new(StdRng::seed_from_u64(seed ^ 0x0048_7970_6572_5435)),
            cache: RefCell::new(HashMap::new()),
            fixed: RefCell::new(HashMap::new()),
        })
    }

    /// Runs the encoder over `examples` in `graph`: its outputs land in the pass context.
    pub fn encode(
        &self,
        model: &Model<B>,
        graph: &HostGraph<'_, B>,
        task: &Task,
        examples: &[&Example],
    ) -> anyhow::Result<()> {
        let texts: Vec<(String, Option<String>)> = examples
            .iter()
            .map(|e| {
                let input = match &e.text_b {
                    Some(b) => format!("{} {b}", e.text_a),
                    None => e.text_a.clone(),
                };
                (input, Some(target_text(e, task)))
            })
            .collect();
        self.encode_texts(model, graph, task, texts)
    }

    /// Makes the encoder read `texts` (each a single sequence, in this order) for task `task`
    /// instead of `k` of its examples, in training and evaluation: CACLM's segments A and D.
    pub fn set_fixed_context(&self, task: &str, texts: Vec<String>) {
        self.fixed.borrow_mut().insert(task.to_string(), texts);
    }

    /// Runs the encoder over `task`'s fixed context, if it has one; `Ok(false)` if not.
    fn encode_fixed(
        &self,
        model: &Model<B>,
        graph: &HostGraph<'_, B>,
        task: &Task,
    ) -> anyhow::Result<bool> {
        let Some(texts) = self.fixed.borrow().get(&task.name).cloned() else {
            return Ok(false);
        };
        let texts = texts.into_iter().map(|t| (t, None)).collect();
        self.encode_texts(model, graph, task, texts)?;
        Ok(true)
    }

    /// Runs the encoder over tokenised `(text, pair)` sequences of `task`.
    fn encode_texts(
        &self,
        model: &Model<B>,
        graph: &HostGraph<'_, B>,
        task: &Task,
        texts: Vec<(String, Option<String>)>,
    ) -> anyhow::Result<()> {
        let device = graph.device();
        let batch = model.tokenize(&texts, self.max_length, &device)?;
        let types = batch
            .token_type_ids
            .clone()
            .unwrap_or_else(|| batch.input_ids.clone().zeros_like());
        let inputs: RVec<_> = [batch.input_ids, batch.attention_mask, types]
            .into_iter()
            .map(|t| graph.insert(Value::Int(t.into_primitive())))
            .collect();
        let spec = json!({ "task": task.name, "k": texts.len() }).to_string();
        graph
            .with_namespace(&self.name, || {
                self.obj
                    .borrow()
                    .encode(graph.as_abi(), inputs, RStr::from(spec.as_str()))
                    .into_result()
            })
            .map_err(|e| {
                anyhow::anyhow!(
                    "context encoder `{}` {} on task `{}`: {e}",
                    self.name,
                    self.plugin_version,
                    task.name
                )
            })?;
        for out in &self.outputs {
            if !graph.context.borrow().contains_key(out) {
                bail!(
                    "context encoder `{}` did not set its output `{out}` on task `{}`",
                    self.name,
                    task.name
                );
            }
        }
        Ok(())
    }

    fn check_shots(&self, task: &Task) -> anyhow::Result<()> {
        if task.train.len() < self.k {
            bail!(
                "task `{}` has {} training examples, but the context encoder `{}` reads k = {} per pass (/context_encoder/config/k)",
                task.name,
                task.train.len(),
                self.name,
                self.k
            );
        }
        Ok(())
    }

    /// A training pass: `k` examples drawn from the task's training examples outside `batch`
    /// (from all of them when fewer than `k` remain, as in 16-shot training), shown with the
    /// label words of `answers` (the task's own, or a permutation: `training.permute_labels`).
    /// Clears the evaluation cache, as the hypermodel is about to change.
    pub fn before_train_pass(
        &self,
        model: &Model<B>,
        graph: &HostGraph<'_, B>,
        task: &Task,
        answers: &Task,
        batch: &[&Example],
    ) -> anyhow::Result<()> {
        self.cache.borrow_mut().clear();
        if self.encode_fixed(model, graph, task)? {
            return Ok(());
        }
        self.check_shots(task)?;
        let outside: Vec<&Example> = task
            .train
            .iter()
            .filter(|e| !batch.iter().any(|b| std::ptr::eq(*b, *e)))
            .collect();
        let pool: Vec<&Example> = if outside.len() >= self.k {
            outside
        } else {
            task.train.iter().collect()
        };
        let picked = sample(&mut *self.rng.borrow_mut(), pool.len(), self.k);
        let shots: Vec<&Example> = picked.iter().map(|i| pool[i]).collect();
        self.encode(model, graph, answers, &shots)
    }

    /// The generated values for `task` from its first `k` training examples, computed once
    /// and cached until the next training pass.
    pub fn generated(
        &self,
        model: &Model<B>,
        task: &Task,
    ) -> anyhow::Result<Vec<(String, Value<B>)>> {
        if let Some(v) = self.cache.borrow().get(&task.name) {
            return Ok(v.clone());
        }
        let graph = HostGraph::inference(&model.params);
        if !self.encode_fixed(model, &graph, task)? {
            self.check_shots(task)?;
            let shots: Vec<&Example> = task.train.iter().take(self.k).collect();
            self.encode(model, &graph, task, &shots)?;
        }
        let ctx = graph.context.borrow();
        let values: Vec<(String, Value<B>)> = self
            .outputs
            .iter()
            .map(|n| (n.clone(), ctx[n].clone()))
            .collect();
        self.cache
            .borrow_mut()
            .insert(task.name.clone(), values.clone());
        Ok(values)
    }

    /// An evaluation pass: the task's cached generated values into the pass context.
    pub fn before_eval_pass(
        &self,
        model: &Model<B>,
        graph: &HostGraph<'_, B>,
        task: &Task,
    ) -> anyhow::Result<()> {
        for (n, v) in self.generated(model, task)? {
            graph.context.borrow_mut().insert(n, v);
        }
        Ok(())
    }

    pub fn clear_cache(&self) {
        self.cache.borrow_mut().clear();
    }

    /// Hyper-init: writes what the encoder generates for `task` into module `module`'s own
    /// parameters (the module's `load_generated` call, `ASSIGN_PARAM`), e.g. `context` =
    /// `hypert5.prefix` for a plain `prefix` module, `hypert5.lora` for `lora`.
    pub fn hyper_init(
        &self,
        model: &Model<B>,
        task: &Task,
        module: &str,
        context: &str,
    ) -> anyhow::Result<()> {
        let m = model
            .modules
            .modules
            .iter()
            .find(|m| m.name == module)
            .with_context(|| format!("hyper-init: no module `{module}` in this model"))?;
        let graph = HostGraph::inference(&model.params);
        self.before_eval_pass(model, &graph, task)?;
        let args = json!({ "context": context }).to_string();
        m.call(&graph, "load_generated", &args)
            .with_context(|| format!("hyper-init of `{module}`"))?
            .with_context(|| format!("hyper-init: {} has no `load_generated`", m.describe()))?;
        Ok(())
    }
}

/// Runs the model's context encoder, if any, before a training pass.
pub fn before_train_pass<B: AutodiffBackend>(
    model: &Model<B>,
    graph: &HostGraph<'_, B>,
    task: &Task,
    answers: &Task,
    batch: &[&Example],
) -> anyhow::Result<()> {
    match &model.context_encoder {
        Some(c) => c.before_train_pass(model, graph, task, answers, batch),
        None => Ok(()),
    }
}

/// Puts the model's context encoder's cached outputs, if any, in an evaluation pass.
pub fn before_eval_pass<B: AutodiffBackend>(
    model: &Model<B>,
    graph: &HostGraph<'_, B>,
    task: &Task,
) -> anyhow::Result<()> {
    match &model.context_encoder {
        Some(c) => c.before_eval_pass(model, graph, task),
        None => Ok(()),
    }
}
