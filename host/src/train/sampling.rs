//! Which examples each micro-batch trains on: a seeded shuffle per task and epoch, and the
//! draw of a batch's task in multi-task runs.
use anyhow::Context;
use rand::{
    distr::{weighted::WeightedIndex, Distribution},
    rngs::StdRng,
    seq::SliceRandom,
    SeedableRng,
};

use crate::config::TaskSampling;

/// Picks the training examples of every micro-batch of one task, in order: a seeded shuffle
/// per epoch.
pub(crate) struct Sampler {
    rng: StdRng,
    order: Vec<usize>,
    cursor: usize,
}

impl Sampler {
    pub(crate) fn new(n: usize, seed: u64) -> Self {
        Sampler {
            rng: StdRng::seed_from_u64(seed),
            order: (0..n).collect(),
            cursor: n,
        }
    }

    pub(crate) fn next_batch(&mut self, size: usize) -> Vec<usize> {
        let mut batch = Vec::with_capacity(size);
        while batch.len() < size.min(self.order.len()) {
            if self.cursor >= self.order.len() {
                self.order.shuffle(&mut self.rng);
                self.cursor = 0;
            }
            batch.push(self.order[self.cursor]);
            self.cursor += 1;
        }
        batch
    }
}

/// The probability of drawing each task for a batch: proportional to n_i, to n_i^(1/T), or
/// uniform.
pub fn task_probabilities(sizes: &[usize], sampling: TaskSampling, temperature: f64) -> Vec<f64> {
    let w: Vec<f64> = sizes
        .iter()
        .map(|&n| match sampling {
            TaskSampling::Proportional => n as f64,
            TaskSampling::Temperature => (n as f64).powf(1.0 / temperature),
            TaskSampling::Uniform => 1.0,
        })
        .collect();
    let total: f64 = w.iter().sum();
    w.iter().map(|x| x / total).collect()
}

/// Draws each micro-batch's task, then its examples from that task's sampler.
pub(crate) struct MultiSampler {
    rng: StdRng,
    pick: Option<WeightedIndex<f64>>,
    tasks: Vec<Sampler>,
}

impl MultiSampler {
    pub(crate) fn new(
        sizes: &[usize],
        t: &crate::config::TrainingSpec,
        seed: u64,
    ) -> anyhow::Result<Self> {
        let probs = task_probabilities(sizes, t.task_sampling, t.temperature);
        Ok(MultiSampler {
            rng: StdRng::seed_from_u64(seed ^ 0x7A5C_0DE5),
            // One task: no draw, so single-task runs see the data order they always did.
            pick: if sizes.len() > 1 {
                Some(WeightedIndex::new(&probs).context("task sampling weights")?)
            } else {
                None
            },
            tasks: sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| Sampler::new(n, seed.wrapping_add(i as u64)))
                .collect(),
        })
    }

    pub(crate) fn next_batch(&mut self, size: usize) -> (usize, Vec<usize>) {
        let task = match &self.pick {
            Some(w) => w.sample(&mut self.rng),
            None => 0,
        };
        (task, self.tasks[task].next_batch(size))
    }
}
