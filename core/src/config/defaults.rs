//! The runs `peft-host run --plugin NAME` starts without a config file, and what a run fills in
//! from its tasks before attaching (the task count and names of per-task methods).
use super::RunConfig;

impl RunConfig {
    /// The default run of `peft-host run --plugin NAME`.
    pub fn for_plugin(plugin: &str) -> Self {
        serde_json::from_value(serde_json::json!({
            "backbone": "all-MiniLM-L6-v2",
            "modules": [{ "plugin": plugin }],
        }))
        .expect("default run config")
    }

    /// The main job, `peft-host run --plugin NAME` (repeat to compose): MiniLM trained on a
    /// default set of real tasks at once — GLUE SST-2 (2,000 training sentences, a classifier)
    /// and GLUE RTE (all 2,240 pairs, the siamese head), drawn uniformly — 300 steps of 32, both
    /// evaluated on their official dev sets every 100 steps.
    pub fn default_run(plugins: &[String]) -> Self {
        if plugins == ["pha"] {
            return pha_default_run();
        }
        let modules: Vec<_> = plugins
            .iter()
            .map(|p| serde_json::json!({ "plugin": p }))
            .collect();
        serde_json::from_value(serde_json::json!({
            "backbone": "all-MiniLM-L6-v2",
            "modules": modules,
            "tasks": [
                { "name": "glue-sst2", "train_examples": 2000 },
                { "name": "glue/rte", "train_examples": 0, "head": "siamese" }
            ],
            "training": {
                "steps": 300, "batch_size": 32, "learning_rate": 2e-3, "warmup_steps": 30,
                "max_length": 96, "task_sampling": "uniform", "eval_every": 100
            }
        }))
        .expect("default run config")
    }
}

/// Sets `num_tasks` and `task_names` from the run's tasks in every module whose plugin's config
/// schema declares them (PHA's prototypes, or a third party's per-task method) and that leaves
/// them out.
pub fn fill_num_tasks(
    cfg: &RunConfig,
    tasks: &[String],
    registry: &peft_registry::Registry,
) -> RunConfig {
    let mut cfg = cfg.clone();
    for m in cfg.modules.iter_mut() {
        // Any plugin whose config declares the fields gets them, not only PHA.
        let declares = |field: &str| {
            registry.get(&m.plugin).is_ok_and(|e| {
                e.manifest
                    .config_schema
                    .pointer(&format!("/properties/{field}"))
                    .is_some()
            })
        };
        let (count, names) = (declares("num_tasks"), declares("task_names"));
        if !count && !names {
            continue;
        }
        if m.config.is_null() {
            m.config = serde_json::json!({});
        }
        if let Some(obj) = m.config.as_object_mut() {
            if count {
                obj.entry("num_tasks")
                    .or_insert(serde_json::json!(tasks.len()));
            }
            if names {
                obj.entry("task_names").or_insert(serde_json::json!(tasks));
            }
        }
    }
    cfg
}

/// `run --plugin pha`: PHA multi-task on six GLUE tasks with all-MiniLM-L6-v2, mixed batches
/// (the contrastive losses need several tasks per batch), sized to finish in minutes on two
/// CPU cores.
pub fn pha_default_run() -> RunConfig {
    let task = |name: &str, n: usize| serde_json::json!({ "name": name, "train_examples": n, "eval_examples": 400 });
    serde_json::from_value(serde_json::json!({
        "backbone": "all-MiniLM-L6-v2",
        "modules": [{ "plugin": "pha" }],
        "tasks": [
            task("glue-sst2", 2000), task("glue/mrpc", 2000), task("glue/rte", 0),
            task("glue/qnli", 2000), task("glue/cola", 2000), task("glue/stsb", 2000)
        ],
        "training": {
            "steps": 300, "batch_size": 32, "learning_rate": 1e-3, "warmup_steps": 30,
            "max_length": 96, "task_sampling": "temperature", "temperature": 10.0,
            "eval_every": 100, "mixed_batches": true,
            "train_groups": ["adapter", "retriever", "prototype", "hyper", "head"]
        }
    }))
    .expect("the PHA default run config")
}
