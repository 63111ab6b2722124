//! The host's [`TrainerAbi`]: the training services a priming plugin drives (see
//! docs/architecture.md §6). Every service takes JSON arguments and tensor handles of the one
//! [`HostGraph`] the plugin's `run` received; an unknown name answers `UNSUPPORTED`, bad
//! arguments a clear `INVALID_ARGUMENT`, and nothing panics across the boundary.
//!
//! | service | arguments | result |
//! |---|---|---|
//! | `info` | — | groups, tasks, steps, the step reached (after a resume) |
//! | `params` | `groups` | `names`, `shapes` of the parameters in those groups |
//! | `next_step` | `loss`? (of the step that ends) | `{step, done}`; checkpoints, stops on SIGINT |
//! | `sample_task` | `k`? | `tasks`: k distinct task names, drawn per step |
//! | `batch` | `task`, `size` or `sizes` | `batches`: ids of disjoint batches of the task |
//! | `loss` | `batch`, `overrides`? + one tensor per override | the loss tensor `[1]`, `{loss}` |
//! | `step` | `groups`, `lr`, `optimizer`, `names`? + gradients, or `from_loss` + a loss | `{updated}` |
//! | `evaluate` | `task` | the task's evaluation (metric, score, loss) |
use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RResult, RStr, RVec},
};
use burn::tensor::backend::AutodiffBackend;
use peft_api::{
    error::guard, ApiError, ErrorKind, GraphRef, OpOutput, TensorHandle, TrainerAbi, TrainerAbi_TO,
    TrainerRef, Values,
};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use serde_json::{json, Value as Json};

mod args;
mod optims;
mod update;

use self::{
    args::*,
    optims::{export_optims, import_optims},
};
use super::{checkpoint, optim::Optim, TaskRun};
use crate::{bridge::HostGraph, config::RunConfig, model::Model};

/// Batches kept alive at once; older ids expire (they also expire at every `next_step`).
const MAX_BATCHES: usize = 1024;

/// What the services need to know beyond the model and the tasks.
#[derive(Clone, Debug, Default)]
pub struct ServiceOptions {
    pub upstream_groups: Vec<String>,
    pub downstream_groups: Vec<String>,
    /// Upstream steps the plugin runs (`next_step` answers `done` after them).
    pub steps: usize,
    /// Checkpoint every this many steps (0: only when stopped).
    pub checkpoint_every: usize,
    /// Where checkpoints go; none: no checkpoints (and no resume).
    pub checkpoint_dir: Option<PathBuf>,
    pub resume: bool,
    /// Stop after this many steps, as SIGINT does (tests).
    pub stop_after: Option<usize>,
}

struct State<B: AutodiffBackend> {
    rng: StdRng,
    /// Steps completed.
    done: usize,
    /// A step was begun by `next_step` and not yet ended.
    in_step: bool,
    batches: BTreeMap<u64, (usize, Vec<usize>)>,
    next_batch: u64,
    /// Optimiser state per `<optimizer>:<groups>` key.
    optims: BTreeMap<String, Optim<B>>,
    losses: Vec<(usize, f64)>,
    /// Set when the run stopped for SIGINT or `stop_after` (after checkpointing).
    pub stopped: Option<usize>,
}

/// The host's trainer services over one model, its upstream tasks and the priming graph.
pub struct Services<'a, 'p, B: AutodiffBackend> {
    pub model: &'a Model<B>,
    pub graph: &'a HostGraph<'p, B>,
    pub tasks: &'a [TaskRun<'a>],
    pub cfg: &'a RunConfig,
    pub device: B::Device,
    pub opts: ServiceOptions,
    state: RefCell<State<B>>,
}

fn step_seed(seed: u64, step: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(step as u64)
        ^ 0x0050_5249_4D49_4E47
}

impl<'a, 'p, B: AutodiffBackend> Services<'a, 'p, B> {
    /// Services over `tasks`; resumes from the checkpoint when `opts.resume` is set (the
    /// parameters and optimiser state are restored into the model here).
    pub fn new(
        model: &'a Model<B>,
        graph: &'a HostGraph<'p, B>,
        tasks: &'a [TaskRun<'a>],
        cfg: &'a RunConfig,
        device: B::Device,
        opts: ServiceOptions,
    ) -> anyhow::Result<Self> {
        let mut state = State {
            rng: StdRng::seed_from_u64(cfg.seed),
            done: 0,
            in_step: false,
            batches: BTreeMap::new(),
            next_batch: 1,
            optims: BTreeMap::new(),
            losses: Vec::new(),
            stopped: None,
        };
        if opts.resume {
            let dir = opts
                .checkpoint_dir
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("--resume needs a checkpoint folder"))?;
            let (tensors, progress) = checkpoint::load(dir, &mut model.params.borrow_mut())?;
            state.optims = import_optims::<B>(tensors, &progress.optimizer_steps)?;
            state.done = progress.step;
            state.losses = progress.losses;
            tracing::info!(step = state.done, "priming resumed from checkpoint");
        }
        Ok(Services {
            model,
            graph,
            tasks,
            cfg,
            device,
            opts,
            state: RefCell::new(state),
        })
    }

    /// The ABI object handed to the plugin.
    pub fn as_abi(&self) -> TrainerRef<'_> {
        TrainerAbi_TO::from_ptr(self, TD_Opaque)
    }

    /// Steps completed so far.
    pub fn steps_done(&self) -> usize {
        self.state.borrow().done
    }

    /// The step at which the run stopped early, if it did.
    pub fn stopped(&self) -> Option<usize> {
        self.state.borrow().stopped
    }

    pub fn losses(&self) -> Vec<(usize, f64)> {
        self.state.borrow().losses.clone()
    }

    /// Runs one service (the Rust-side entry point; [`TrainerAbi::service`] wraps it).
    pub fn call(
        &self,
        name: &str,
        json: &str,
        inputs: Vec<TensorHandle>,
    ) -> Result<OpOutput, ApiError> {
        // Inputs are the caller's to give up: take them now, so none leak on an error path.
        let mut taken = Vec::with_capacity(inputs.len());
        for h in inputs {
            taken.push(self.graph.take(h)?);
        }
        let (tensors, value) = match name {
            "info" => (vec![], self.info()),
            "params" => (vec![], self.params(&args::<GroupsArgs>(name, json)?.groups)?),
            "next_step" => (vec![], self.next_step(args(name, json)?)?),
            "sample_task" => (vec![], self.sample_task(args(name, json)?)?),
            "batch" => (vec![], self.batch(args(name, json)?)?),
            "loss" => {
                let (t, v) = self.loss(args(name, json)?, taken)?;
                (vec![t], v)
            }
            "step" => (vec![], self.step(args(name, json)?, taken)?),
            "evaluate" => (vec![], self.evaluate(args(name, json)?)?),
            other => {
                return Err(ApiError::unsupported(format!(
                    "trainer service `{other}` is not offered by this host (it has info, params, next_step, sample_task, batch, loss, step, evaluate)"
                )))
            }
        };
        Ok(OpOutput {
            tensors: tensors.into_iter().map(|v| self.graph.insert(v)).collect(),
            values: Values {
                text: value.to_string().into(),
                ..Values::default()
            },
        })
    }

    fn info(&self) -> Json {
        let st = self.state.borrow();
        json!({
            "upstream_groups": self.opts.upstream_groups,
            "downstream_groups": self.opts.downstream_groups,
            "tasks": self.tasks.iter().map(|t| t.task.name.clone()).collect::<Vec<_>>(),
            "steps": self.opts.steps,
            "step": st.done,
            "seed": self.cfg.seed,
            "batch_size": self.cfg.training.batch_size,
        })
    }

    fn group_names(&self, service: &str, groups: &[String]) -> Result<Vec<String>, ApiError> {
        let store = self.model.params.borrow();
        let known: BTreeSet<&str> = store.iter().map(|p| p.group.as_str()).collect();
        for g in groups {
            if !known.contains(g.as_str()) {
                return Err(bad(
                    service,
                    format!("no parameter is in group `{g}` (groups: {known:?})"),
                ));
            }
        }
        Ok(store
            .iter()
            .filter(|p| groups.contains(&p.group))
            .map(|p| p.name.clone())
            .collect())
    }

    fn params(&self, groups: &[String]) -> Result<Json, ApiError> {
        let names = self.group_names("params", groups)?;
        let store = self.model.params.borrow();
        let shapes: Vec<&Vec<usize>> = names
            .iter()
            .filter_map(|n| store.get(n).map(|p| &p.shape))
            .collect();
        Ok(json!({ "names": names, "shapes": shapes }))
    }

    fn next_step(&self, a: NextStepArgs) -> Result<Json, ApiError> {
        let mut st = self.state.borrow_mut();
        if st.stopped.is_some() {
            return Err(bad("next_step", "the run was stopped; it cannot continue"));
        }
        if st.in_step {
            st.in_step = false;
            st.done += 1;
            let step = st.done;
            if let Some(l) = a.loss {
                st.losses.push((step, l));
            }
            let stop = self.opts.stop_after == Some(step)
                || crate::train::INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst);
            let periodic = self.opts.checkpoint_every > 0
                && step.is_multiple_of(self.opts.checkpoint_every)
                && step != self.opts.steps;
            if stop || periodic {
                if let Some(dir) = &self.opts.checkpoint_dir {
                    let progress = checkpoint::Progress {
                        step,
                        losses: st.losses.clone(),
                        evaluations: vec![],
                        optimizer_steps: vec![],
                        train_seconds: 0.0,
                    };
                    checkpoint::save(
                        dir,
                        &self.model.params.borrow(),
                        export_optims(&st.optims),
                        &progress,
                    )
                    .map_err(|e| ApiError::internal(format!("writing a checkpoint: {e:#}")))?;
                }
            }
            if stop {
                st.stopped = Some(step);
                return Err(ApiError::new(
                    ErrorKind::INTERNAL,
                    format!("priming interrupted after step {step}"),
                ));
            }
        }
        st.batches.clear();
        // Batch ids restart each step: they seed dropout, and a resumed run must see the same.
        st.next_batch = 1;
        if st.done >= self.opts.steps {
            return Ok(json!({ "done": true, "step": st.done }));
        }
        let step = st.done + 1;
        st.in_step = true;
        // Sampling and dropout are seeded per step, so a resumed run draws what an
        // uninterrupted one does.
        st.rng = StdRng::seed_from_u64(step_seed(self.cfg.seed, step));
        Ok(json!({ "done": false, "step": step, "steps": self.opts.steps }))
    }

    fn sample_task(&self, a: SampleArgs) -> Result<Json, ApiError> {
        let k = a.k.unwrap_or(1);
        let n = self.tasks.len();
        if k == 0 || k > n {
            return Err(bad(
                "sample_task",
                format!("k = {k}, but there are {n} upstream tasks"),
            ));
        }
        let mut idx: Vec<usize> = (0..n).collect();
        idx.shuffle(&mut self.state.borrow_mut().rng);
        let names: Vec<&str> = idx[..k]
            .iter()
            .map(|&i| self.tasks[i].task.name.as_str())
            .collect();
        Ok(json!({ "tasks": names }))
    }

    fn task_index(&self, service: &str, name: &str) -> Result<usize, ApiError> {
        self.tasks
            .iter()
            .position(|t| t.task.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = self.tasks.iter().map(|t| t.task.name.as_str()).collect();
                bad(
                    service,
                    format!("no upstream task `{name}` (tasks: {known:?})"),
                )
            })
    }

    fn batch(&self, a: BatchArgs) -> Result<Json, ApiError> {
        let ti = self.task_index("batch", &a.task)?;
        let sizes = match (a.size, a.sizes) {
            (Some(s), None) => vec![s],
            (None, Some(v)) if !v.is_empty() => v,
            (None, None) => vec![self.cfg.training.batch_size],
            _ => return Err(bad("batch", "give `size` or a non-empty `sizes`, not both")),
        };
        if sizes.contains(&0) {
            return Err(bad("batch", "a batch size is 0"));
        }
        let n = self.tasks[ti].task.train.len();
        let total: usize = sizes.iter().sum();
        let mut st = self.state.borrow_mut();
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut st.rng);
        // Disjoint batches when the task has enough examples; else each batch is its own
        // draw (a 16-shot task asked for 2 x 32 gets two overlapping batches of 16).
        let disjoint = total <= n;
        let mut ids = Vec::with_capacity(sizes.len());
        let mut cursor = 0;
        for s in sizes {
            let idx: Vec<usize> = if disjoint {
                cursor += s;
                order[cursor - s..cursor].to_vec()
            } else {
                order.shuffle(&mut st.rng);
                order[..s.min(n)].to_vec()
            };
            let id = st.next_batch;
            st.next_batch += 1;
            st.batches.insert(id, (ti, idx));
            while st.batches.len() > MAX_BATCHES {
                st.batches.pop_first();
            }
            ids.push(id);
        }
        Ok(json!({ "batches": ids }))
    }

    fn evaluate(&self, a: EvalArgs) -> Result<Json, ApiError> {
        let ti = self.task_index("evaluate", &a.task)?;
        let step = self.state.borrow().done;
        let e = crate::train::evaluate(self.model, &self.tasks[ti], self.cfg, step, &self.device)
            .map_err(|e| ApiError::invalid(format!("trainer service `evaluate`: {e:#}")))?;
        serde_json::to_value(e).map_err(|e| ApiError::internal(e.to_string()))
    }
}

impl<B: AutodiffBackend> TrainerAbi for Services<'_, '_, B> {
    fn service(
        &self,
        _graph: GraphRef<'_>,
        name: RStr<'_>,
        json: RStr<'_>,
        inputs: RVec<TensorHandle>,
    ) -> RResult<OpOutput, ApiError> {
        guard(|| self.call(name.as_str(), json.as_str(), inputs.into_vec())).into()
    }
}
