//! The examples' task ids in the pass context. A model's task map (`Model::task_index`) gives
//! each training task an id; a single-task pass marks its task (`task_id`, [1]) and
//! `Model::hooks` publishes `task_ids` ([n], int) for the rows the backbone runs, what modules
//! read. A mixed batch publishes one id per example itself (`train::mixed`).
use burn::tensor::{backend::AutodiffBackend, Int, Tensor, TensorData};

use super::Model;
use crate::bridge::{HostGraph, Value};

/// Context name of a single-task pass's task id ([1], int).
pub const TASK_ID: &str = "task_id";
/// Context name of the examples' task ids ([n], int), what modules read.
pub const TASK_IDS: &str = "task_ids";

/// Marks a pass over one task's examples with the task's id, when the model knows the task.
pub fn mark_task<B: AutodiffBackend>(model: &Model<B>, graph: &HostGraph<'_, B>, task: &str) {
    if let Some(&id) = model.task_index.borrow().get(task) {
        let t = Tensor::<B, 1, Int>::from_data(TensorData::new(vec![id], [1]), &graph.device());
        graph
            .context
            .borrow_mut()
            .insert(TASK_ID.into(), Value::Int(t.into_primitive()));
    }
}

/// Publishes `task_ids` for `n` rows from a pass's task mark; leaves ids a mixed batch set.
pub fn publish_task_ids<B: AutodiffBackend>(graph: &HostGraph<'_, B>, n: usize) {
    let mut ctx = graph.context.borrow_mut();
    let Some(Value::Int(id)) = ctx.get(TASK_ID).cloned() else {
        return;
    };
    let id = Tensor::<B, 1, Int>::from_primitive(id);
    ctx.insert(
        TASK_IDS.into(),
        Value::Int(id.repeat_dim(0, n).into_primitive()),
    );
}
