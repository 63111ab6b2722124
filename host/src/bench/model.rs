//! `peft-host bench model`: MiniLM-shaped inference and a full training step of any module
//! composition (PHA with its tasks mixed in the batch, a context encoder's hypermodel in each
//! training pass), with the GFLOP/s the forward and the step reach against the GEMM.

use burn::tensor::{activation, backend::AutodiffBackend, Tensor};
use peft_registry::Registry;
use serde::Serialize;

use super::{
    adamw_step, encoder_flops, gemm_rate, rayon_threads, summarise, time_phase, PhaseOps, Timing,
};
use crate::bridge::HostGraph;

#[derive(Serialize, Debug)]
pub struct ModelBench {
    pub backbone: String,
    /// How the frozen weight matrices are held (`f32`, `bf16`), and the backbone weights' size.
    pub backbone_dtype: String,
    /// `backbone.matmul_precision` (`high`, `medium`).
    pub matmul_precision: String,
    /// What multiplied the frozen bf16 weights on this CPU: `amx`, `vdpbf16ps` (medium without
    /// AMX), `f32 gemm` (widened weights); `f32 gemm` for an f32 backbone too.
    pub bf16_products: String,
    pub backbone_weights_mib: f64,
    pub modules: Vec<String>,
    pub batch: usize,
    pub seq: usize,
    pub threads: usize,
    pub inference: Timing,
    pub tokens_per_second: f64,
    pub train_step: Option<Timing>,
    pub trainable_parameters: usize,
    /// FLOPs of one forward (see [`encoder_flops`]), in GFLOP.
    pub forward_gflop: f64,
    /// The forward's rate, and the train step's counting its useful work (the forward, the
    /// input gradient of every product: twice the projections and three times attention's
    /// products; not the blocked backward's recomputed scores), in GFLOP/s.
    pub forward_gflops_per_s: f64,
    pub train_step_gflops_per_s: Option<f64>,
    /// `[batch·seq, hidden] × [hidden, intermediate]` through the kernels' GEMM, GFLOP/s:
    /// the rate the whole forward is held against.
    pub gemm_gflops_per_s: f64,
    /// Time per kernel in each phase, when op times are collected (`--op-times`).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub op_times: Vec<PhaseOps>,
}

/// What [`model_bench`] runs on: `batch` × `seq` tokens, `tasks` tasks mixed in the batch.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub batch: usize,
    pub seq: usize,
    pub tasks: usize,
}

/// MiniLM-shaped inference and (with modules) a full training step — forward, backward (the
/// modules' auxiliary losses included, as training adds them), AdamW — on `batch` x `seq`
/// tokens, example `i` of task `i mod tasks`, median over `runs`.
pub fn model_bench<B: AutodiffBackend>(
    cfg: &crate::config::RunConfig,
    registry: &Registry,
    Shape { batch, seq, tasks }: Shape,
    runs: usize,
    train: bool,
    device: &B::Device,
) -> anyhow::Result<ModelBench> {
    use crate::{backbone::TextBatch, bridge::Value, model::TASK_IDS, train::optim::AdamW};
    use burn::tensor::{Int, TensorData};
    let model = crate::model::Model::<B>::build(cfg, registry, device, 2)?;
    let task_ids = Tensor::<B, 1, Int>::from_data(
        TensorData::new(
            (0..batch as i64).map(|i| i % tasks.max(1) as i64).collect(),
            [batch],
        ),
        device,
    );
    let with_tasks = |g: &HostGraph<'_, B>| {
        let ids = Value::Int(task_ids.clone().into_primitive());
        g.context.borrow_mut().insert(TASK_IDS.into(), ids);
    };
    // A context encoder (HyperT5) reads `k` examples of the pass's task: here `k` texts as long
    // as its `max_length` allows, fixed for the task. Each training pass runs the hypermodel
    // over them on the pass's graph (a stage-2 step); inference reads the values generated
    // once for the task, as evaluation does.
    let task = crate::data::Task {
        name: "bench".into(),
        kind: crate::data::TaskKind::Classification,
        labels: vec!["0".into(), "1".into()],
        train: Vec::new(),
        eval: Vec::new(),
        eval_split: "none".into(),
        metric: "accuracy".into(),
    };
    if let Some(c) = &model.context_encoder {
        let words = [
            "context", "shows", "an", "example", "of", "the", "task", "and",
        ];
        let text = |j: usize| -> String {
            let n = c.max_length.max(1);
            (0..n)
                .map(|w| words[(w + j) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        };
        c.set_fixed_context(&task.name, (0..c.k).map(text).collect());
    }
    let vocab = model.info().vocab_size as i64;
    // Deterministic pseudo-random token ids (no padding: every position is real).
    let ids: Vec<i64> = (0..batch * seq)
        .map(|i| 1000 + (i as i64 * 7919) % (vocab - 1000))
        .collect();
    let mk = |v: Vec<i64>| Tensor::<B, 2, Int>::from_data(TensorData::new(v, [batch, seq]), device);
    let tb = TextBatch {
        input_ids: mk(ids),
        attention_mask: mk(vec![1; batch * seq]),
        token_type_ids: None,
    };
    let labels = Tensor::<B, 1, Int>::from_data(
        TensorData::new(
            (0..batch as i64).map(|i| i % 2).collect::<Vec<_>>(),
            [batch],
        ),
        device,
    );

    model.set_trainable(&[])?;
    let mut op_times = Vec::new();
    let times = time_phase("inference", runs, &mut op_times, &mut || {
        let g = HostGraph::inference(&model.params);
        with_tasks(&g);
        crate::model::context::before_eval_pass(&model, &g, &task)?;
        let _ = model.encode(&g, &tb)?.into_data();
        Ok(())
    })?;
    let inference = summarise("inference", times);

    let mut trainable_parameters = 0;
    let train_step = if train {
        model.set_trainable(&cfg.training.train_groups)?;
        trainable_parameters = model.params.borrow().trainable().map(|p| p.numel()).sum();
        let mut opt = AdamW::<B>::new(1e-4, 0.0);
        let times = time_phase("train step", runs, &mut op_times, &mut || {
            let g = HostGraph::new(&model.params, true);
            with_tasks(&g);
            crate::model::context::before_train_pass(&model, &g, &task, &task, &[])?;
            let logits = model.logits(&g, &tb)?;
            let logp = activation::log_softmax(logits, 1);
            let nll = logp
                .gather(1, labels.clone().unsqueeze_dim::<2>(1))
                .neg()
                .mean();
            let loss = g.with_aux_losses(nll);
            let grads = loss.backward();
            drop(g);
            adamw_step(&model, &grads, &mut opt)?;
            Ok(())
        })?;
        Some(summarise("train step", times))
    } else {
        None
    };
    let tokens_per_second = (batch * seq) as f64 / (inference.median_ms / 1e3);
    let info = model.info();
    let (l, h, i) = (info.num_layers, info.hidden_size, info.intermediate_size);
    let forward = encoder_flops(l, h, i, batch, seq);
    // Attention's two products per layer: 2 · 2 · tokens · seq · hidden.
    let attn = 4.0 * (l * batch * seq * seq * h) as f64;
    let step = 2.0 * (forward - attn) + 3.0 * attn;
    let gemm = gemm_rate(batch * seq, h, i, 5);
    let forward_gflops_per_s = forward / 1e9 / (inference.median_ms / 1e3);
    let backbone_weights_mib = model
        .params
        .borrow()
        .iter()
        .filter(|p| p.owner == "backbone")
        .map(|p| {
            let bf16 = burn::tensor::TensorMetadata::dtype(&p.value) == burn::tensor::DType::BF16;
            (p.numel() * if bf16 { 2 } else { 4 }) as f64
        })
        .sum::<f64>()
        / (1u64 << 20) as f64;
    Ok(ModelBench {
        backbone: model.info().name.clone(),
        backbone_dtype: cfg.backbone.dtype().as_str().into(),
        matmul_precision: cfg.backbone.matmul_precision().as_str().into(),
        bf16_products: crate::nn::bf16::ProductPath::current().as_str().into(),
        backbone_weights_mib,
        modules: cfg.modules.iter().map(|m| m.instance_name()).collect(),
        batch,
        seq,
        threads: rayon_threads(),
        inference,
        tokens_per_second,
        forward_gflop: forward / 1e9,
        forward_gflops_per_s,
        train_step_gflops_per_s: train_step
            .as_ref()
            .map(|t| step / 1e9 / (t.median_ms / 1e3)),
        gemm_gflops_per_s: gemm,
        train_step,
        trainable_parameters,
        op_times,
    })
}
