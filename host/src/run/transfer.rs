//! `prototype`: a new task mapped to a trained PHA's prototype before fine-tuning — the one its
//! examples retrieve, a random one (the ablation), or a given index — and what was picked.
use anyhow::Context;
use burn::tensor::backend::AutodiffBackend;
use rand::{Rng, SeedableRng};

use crate::{
    config::{PickRule, PrototypePick, PrototypeSpec},
    data::Example,
    model::Model,
    retrieval::{self, Retrieval},
    train::TaskRun,
};

/// Maps each task of the run to a prototype (`Model::task_index`) and reports the choice.
pub fn pick_prototypes<B: AutodiffBackend>(
    model: &Model<B>,
    spec: &PrototypeSpec,
    runs: &[TaskRun<'_>],
    max_length: usize,
    seed: u64,
    device: &B::Device,
) -> anyhow::Result<Vec<Retrieval>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for run in runs {
        let name = &run.task.name;
        let examples: Vec<&Example> = run.task.train.iter().collect();
        // The cosines are reported whatever the rule; only `retrieve` adopts the nearest.
        let mut r = retrieval::retrieve(
            model,
            &spec.module,
            name,
            &examples,
            max_length,
            false,
            device,
        )
        .with_context(|| format!("/prototype: task `{name}`"))?;
        let count = r.cosines.len();
        let picked = match spec.pick {
            PrototypePick::Rule(PickRule::Retrieve) => r.picked,
            PrototypePick::Rule(PickRule::Random) => rng.random_range(0..count),
            PrototypePick::Index(i) => {
                anyhow::ensure!(
                    i < count,
                    "/prototype/pick: index {i}, but module `{}` has {count} prototypes",
                    spec.module
                );
                i
            }
        };
        if r.picked_task.is_some() {
            r.picked_task = r.cosines.get(picked).map(|c| c.0.clone());
        }
        r.picked = picked;
        model
            .task_index
            .borrow_mut()
            .insert(name.clone(), picked as i64);
        tracing::info!("{}", retrieval::render(&r));
        out.push(r);
    }
    Ok(out)
}
