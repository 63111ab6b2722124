//! The run config: one JSON file composing backbone, modules, tasks and training. Host
//! sections are validated against the host's JSON Schema (schemars), each plugin section
//! against the schema in that plugin's manifest; errors name the JSON pointer.
pub mod caclm;
pub mod checks;
mod defaults;
pub mod priming;
pub mod validate;

pub use caclm::CaclmSpec;
pub use defaults::{fill_num_tasks, pha_default_run};
pub use priming::PrimingSpec;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// A complete run: what to adapt, with which modules, on which tasks, how.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Optional pointer to this schema, for editors.
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    pub backbone: BackboneSpec,
    /// PEFT modules, attached in this order (several may share a site).
    #[serde(default)]
    pub modules: Vec<ModuleSpec>,
    /// Produces per-example context (task embeddings, generated parameters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_encoder: Option<PluginSpec>,
    /// Upstream priming stage run before downstream training: the priming plugin, the
    /// upstream tasks and the upstream/downstream groups (see [`PrimingSpec`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priming: Option<PrimingSpec>,
    /// The downstream task (one; use `tasks` to train several at once).
    #[serde(default, skip_serializing_if = "TaskSpec::is_default")]
    pub task: TaskSpec,
    /// Multi-task training: every task's batches are mixed by `training.task_sampling`, and
    /// each is evaluated on its own. Replaces `task`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskSpec>,
    #[serde(default)]
    pub training: TrainingSpec,
    /// Seed of parameter initialisation, sampling and dropout.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Start from a saved adapter folder (`<run>/adapter`, or what `peft-host adapt` wrote):
    /// every tensor of it whose name matches a parameter of this run is loaded before training
    /// (same shape required) — to continue training, or to fine-tune from generated parameters
    /// (hyper-init) or from a multi-task module (shared init). The folder's backbone must be
    /// this run's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<std::path::PathBuf>,
    /// Few-shot transfer with a prototype-based module (PHA) started from a trained one
    /// (`init_from`): which training task's prototype each task of this run uses and fine-tunes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prototype: Option<PrototypeSpec>,
    /// HyperT5 stage-1 hyper-pretraining (CACLM) on an unlabeled corpus instead of tasks: the
    /// context encoder reads segments A and D of each window, the downstream model B, and the
    /// LM loss on C trains the hypermodel (see [`CaclmSpec`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caclm: Option<CaclmSpec>,
}

/// Which prototype a new task starts from (see `RunConfig::prototype`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrototypeSpec {
    /// The module instance that holds the prototypes and answers `retrieve`.
    #[serde(default = "default_prototype_module")]
    pub module: String,
    /// `retrieve` (nearest prototype to the mean retrieval vector of the task's training
    /// examples), `random` (one drawn with the run's seed: the ablation), or a prototype index.
    pub pick: PrototypePick,
}

fn default_prototype_module() -> String {
    "pha".into()
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum PrototypePick {
    Rule(PickRule),
    Index(usize),
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PickRule {
    Retrieve,
    Random,
}

fn default_seed() -> u64 {
    42
}

/// A model name from the cache (`all-MiniLM-L6-v2`), a folder with HF files, or an inline
/// architecture for a randomly initialised model.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum BackboneSpec {
    Name(String),
    Detailed(BackboneDetail),
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct BackboneDetail {
    /// Model name looked up in the model cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Folder holding `config.json`, `model.safetensors` and `tokenizer.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// For a randomly initialised model: `bert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// For a randomly initialised model: an HF `config.json` body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Json>,
    /// A `tokenizer.json` to use instead of the model folder's (for a randomly initialised
    /// model: instead of the cached MiniLM one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
    /// How the frozen weight matrices are held: `f32` (the default) or `bf16` (half their
    /// memory; products still accumulate in f32, and activations, gradients, optimiser state and
    /// every trained parameter stay f32). See docs/performance.md for its measured cost.
    #[serde(default, skip_serializing_if = "BackboneDtype::is_f32")]
    pub dtype: BackboneDtype,
    /// With `dtype: bf16`, how the products with those weights read their f32 activations:
    /// `high` (the default: split in two bf16 terms on AMX, exact f32 elsewhere — the weights'
    /// rounding the only error) or `medium` (rounded to one bf16 term, as `torch.autocast`
    /// and PyTorch's `set_float32_matmul_precision("medium")` do: half the tile work on AMX, an
    /// 8-bit rounding of every product's input). Under `medium` a trained weight whose product
    /// is GEMM-sized (a hypermodel's; not LoRA's or an adapter's low-rank ones) is rounded to
    /// bf16 for its products as well, as autocast casts weights; its gradient, update and
    /// stored value stay f32. Process-wide, like PyTorch's setting.
    #[serde(default, skip_serializing_if = "MatmulPrecision::is_high")]
    pub matmul_precision: MatmulPrecision,
}

/// How products with bf16-held weights read their f32 activations (`BackboneDetail`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum MatmulPrecision {
    #[default]
    High,
    Medium,
}

impl MatmulPrecision {
    pub fn is_high(&self) -> bool {
        *self == MatmulPrecision::High
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            MatmulPrecision::High => "high",
            MatmulPrecision::Medium => "medium",
        }
    }
}

/// The storage type of the frozen backbone's weight matrices.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackboneDtype {
    #[default]
    F32,
    Bf16,
}

impl BackboneDtype {
    pub fn is_f32(&self) -> bool {
        *self == BackboneDtype::F32
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            BackboneDtype::F32 => "f32",
            BackboneDtype::Bf16 => "bf16",
        }
    }
}

impl BackboneSpec {
    /// The storage type the spec asks for (a bare name means f32).
    pub fn dtype(&self) -> BackboneDtype {
        match self {
            BackboneSpec::Name(_) => BackboneDtype::F32,
            BackboneSpec::Detailed(d) => d.dtype,
        }
    }

    pub fn matmul_precision(&self) -> MatmulPrecision {
        match self {
            BackboneSpec::Name(_) => MatmulPrecision::High,
            BackboneSpec::Detailed(d) => d.matmul_precision,
        }
    }
}

/// One PEFT module.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModuleSpec {
    /// Registered plugin name (`peft-host plugins` lists them).
    pub plugin: String,
    /// Instance name, prefixing its parameters; defaults to the plugin name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The plugin's own settings, validated against its schema (`schemas/plugins/<name>.json`).
    #[serde(default)]
    pub config: Json,
}

/// A context encoder or priming plugin.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    pub plugin: String,
    #[serde(default)]
    pub config: Json,
}

/// The downstream task.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// `glue-sst2` (GLUE TSV) or a CrossFit task name (e.g. `glue-rte`, `superglue-cb`).
    #[serde(default = "default_task")]
    pub name: String,
    /// Training examples to use (a seeded subsample; 0 = all).
    #[serde(default = "default_train_examples")]
    pub train_examples: usize,
    /// Evaluation examples to use (0 = all).
    #[serde(default)]
    pub eval_examples: usize,
    /// For CrossFit tasks: which k-shot split seed (13, 21, 42, 87, 100).
    #[serde(default = "default_split_seed")]
    pub split_seed: u64,
    /// Train on `k` examples of each class drawn with the run's seed (0: off), before
    /// `train_examples` applies.
    #[serde(default)]
    pub shots_per_class: usize,
    /// The split to evaluate on: `dev` or `test` for CrossFit tasks (default: `test` where the
    /// task has one); `val` (default) or FewGLUE's 32-example `dev32` for SuperGLUE; GLUE has
    /// its one labelled evaluation split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_split: Option<String>,
    /// Hold this many training examples out (one fixed seeded draw, before `train_examples`
    /// and `shots_per_class`) and evaluate on them instead of the evaluation split: for
    /// choosing hyperparameters where the only labelled evaluation split (GLUE's dev) serves as
    /// the test set. The split is reported as `train-holdout`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub holdout: usize,
    /// How the model answers: `auto` picks `classification` for a fixed label set,
    /// `option_scoring` for multiple choice and `regression` for a real-valued target.
    #[serde(default)]
    pub head: HeadKind,
    /// `text_to_text`: the longest answer greedy decoding may produce, in tokens.
    #[serde(default = "default_max_new_tokens")]
    #[schemars(range(min = 1))]
    pub max_new_tokens: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn default_max_new_tokens() -> usize {
    16
}

/// The output head of a task.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum HeadKind {
    #[default]
    Auto,
    /// A linear layer over the pooled state, one output per class (its own per task).
    Classification,
    /// Scores each (input, option) pair with one head shared by all tasks, softmax over the
    /// options: any classification or multiple-choice task, unseen ones included.
    OptionScoring,
    /// One real output trained with the mean squared error.
    Regression,
    /// Sentence pairs: each sentence encoded on its own, a linear layer over
    /// `[u, v, |u − v|, u ∗ v]` of the two mean-pooled states (Sentence-BERT's NLI head).
    Siamese,
    /// Encoder-decoder backbones (T5, BART): generate the answer's text, trained with teacher
    /// forcing on the LM head, evaluated by greedy decoding.
    TextToText,
}

/// How multi-task training picks the task of each batch.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum TaskSampling {
    /// Task i with probability proportional to its training examples n_i.
    Proportional,
    /// Proportional to n_i^(1/T) (T = `temperature`): T = 1 is proportional, large T uniform.
    #[default]
    Temperature,
    /// Every task equally often.
    Uniform,
}

fn default_task() -> String {
    "glue-sst2".into()
}
fn default_train_examples() -> usize {
    2000
}
fn default_split_seed() -> u64 {
    13
}

impl TaskSpec {
    /// Left out when a config is written: a multi-task config then has no `task` beside `tasks`.
    fn is_default(&self) -> bool {
        *self == TaskSpec::default()
    }
}

impl Default for TaskSpec {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("defaults")
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainingSpec {
    #[serde(default = "default_steps")]
    pub steps: usize,
    #[serde(default = "default_batch")]
    #[schemars(range(min = 1))]
    pub batch_size: usize,
    #[serde(default = "default_lr")]
    pub learning_rate: f64,
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    /// Linear warmup steps, then linear decay to zero.
    #[serde(default)]
    pub warmup_steps: usize,
    /// Token limit per example.
    #[serde(default = "default_max_length")]
    #[schemars(range(min = 2, max = 512))]
    pub max_length: usize,
    /// Parameter groups that train (the rest stay frozen).
    #[serde(default = "default_groups")]
    pub train_groups: Vec<String>,
    /// Evaluate every this many steps (0 = only at the end).
    #[serde(default)]
    pub eval_every: usize,
    #[serde(default)]
    pub optimizer: Optimizer,
    /// SGD momentum (ignored by AdamW).
    #[serde(default)]
    pub momentum: f64,
    /// Clip the global gradient norm to this value (none: no clipping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_grad_norm: Option<f64>,
    /// Label smoothing of the cross-entropy loss.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub label_smoothing: f64,
    /// Write a checkpoint every this many steps (0 = only when interrupted).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: usize,
    /// Micro-batches whose gradients are averaged into one optimiser step.
    #[serde(default = "default_accumulation")]
    #[schemars(range(min = 1))]
    pub gradient_accumulation: usize,
    /// Multi-task: how each batch's task is drawn.
    #[serde(default)]
    pub task_sampling: TaskSampling,
    /// The T of temperature sampling.
    #[serde(default = "default_temperature")]
    #[schemars(range(min = 0.01))]
    pub temperature: f64,
    /// Multi-task: draw each example's task (by `task_sampling`) so that one batch mixes tasks,
    /// with the examples' task ids in the pass context (PHA's contrastive losses need positives
    /// and negatives in one batch). Heads: classification, regression or text-to-text.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mixed_batches: bool,
    /// Context-encoder training: the probability that a pass shows a classification task
    /// under a uniformly random permutation of its label words (the identity included), in
    /// the few-shot context and in the targets alike, so that which word answers which class
    /// can only be read from the examples (a hypermodel cannot learn its training tasks by
    /// heart). Option-scoring and text-to-text heads; multiple-choice tasks stay as they are.
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub permute_labels: f64,
    /// Peak learning rate per parameter group, in place of `learning_rate` for that group's
    /// parameters (same warmup and decay). A hypermodel's copied encoder wants a far smaller
    /// rate than its freshly initialised heads (HyperT5's `encoder_group`). Each key must name
    /// a group in `train_groups`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub group_learning_rates: BTreeMap<String, f64>,
}

fn is_zero_f64(x: &f64) -> bool {
    *x == 0.0
}

fn default_temperature() -> f64 {
    10.0
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Optimizer {
    /// Adam with decoupled weight decay (PyTorch's `AdamW`, betas 0.9/0.999, eps 1e-8).
    #[default]
    Adamw,
    /// Plain SGD with optional momentum and weight decay (PyTorch's `SGD`).
    Sgd,
}

fn default_checkpoint_every() -> usize {
    100
}

fn default_accumulation() -> usize {
    1
}

fn default_steps() -> usize {
    300
}
fn default_batch() -> usize {
    32
}
fn default_lr() -> f64 {
    1e-3
}
fn default_wd() -> f64 {
    0.0
}
fn default_max_length() -> usize {
    64
}
fn default_groups() -> Vec<String> {
    vec!["adapter".into(), "head".into()]
}

impl Default for TrainingSpec {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("defaults")
    }
}

impl RunConfig {
    /// The tasks this run trains on: `tasks`, or the single `task`.
    pub fn task_specs(&self) -> Vec<TaskSpec> {
        if self.tasks.is_empty() {
            vec![self.task.clone()]
        } else {
            self.tasks.clone()
        }
    }
}

impl ModuleSpec {
    pub fn instance_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.plugin.clone())
    }
}

/// The host's JSON Schema of the run config.
pub fn run_config_schema() -> Json {
    serde_json::to_value(schemars::schema_for!(RunConfig)).expect("schema serialises")
}

/// Writes `run-config.schema.json` and `plugins/<name>.schema.json` for every plugin.
pub fn write_schemas(
    out: &std::path::Path,
    registry: &peft_registry::Registry,
) -> anyhow::Result<()> {
    for (path, schema) in schema_files(registry) {
        crate::files::write_atomic(
            &out.join(path),
            (serde_json::to_string_pretty(&schema)? + "\n").as_bytes(),
        )?;
    }
    Ok(())
}

/// The schema files `schema` writes, by relative path.
pub fn schema_files(registry: &peft_registry::Registry) -> Vec<(String, serde_json::Value)> {
    let mut v = vec![("run-config.schema.json".to_string(), run_config_schema())];
    for e in registry.entries() {
        v.push((
            format!("plugins/{}.schema.json", e.manifest.name),
            e.manifest.config_schema.clone(),
        ));
    }
    v
}
