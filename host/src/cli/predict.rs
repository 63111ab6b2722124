//! `predict`: a saved adapter's predictions on new text, as JSONL.
use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;

use crate::{
    device::DeviceSpec,
    serve::{folder, predict as p},
};

/// Arguments of `predict`.
pub struct PredictArgs {
    pub adapter: PathBuf,
    pub input: PathBuf,
    pub format: p::InputFormat,
    pub task: Option<String>,
    pub out: Option<PathBuf>,
    pub batch: Option<usize>,
    pub quiet: bool,
}

/// `predict` on the backend `device` names: the CPU, or CUDA in a build with the `cuda` feature.
pub fn predict(
    registry: &peft_registry::Registry,
    device: DeviceSpec,
    a: PredictArgs,
) -> anyhow::Result<ExitCode> {
    match device {
        DeviceSpec::Cpu => predict_on::<crate::device::Cpu>(registry, a, &Default::default()),
        DeviceSpec::Cuda(i) => {
            crate::device::check_cuda(i)?;
            #[cfg(feature = "cuda")]
            return predict_on::<crate::device::Cuda>(registry, a, &burn_cuda::CudaDevice::new(i));
            #[allow(unreachable_code)]
            {
                anyhow::bail!("CUDA support is not compiled in")
            }
        }
    }
}

fn predict_on<B: burn::tensor::backend::AutodiffBackend>(
    registry: &peft_registry::Registry,
    a: PredictArgs,
    dev: &B::Device,
) -> anyhow::Result<ExitCode> {
    // Inputs are read and checked whole before the model is built or anything is written.
    let examples = p::read_inputs(&a.input, a.format)?;
    let loaded = folder::load::<B>(&a.adapter, registry, dev)?;
    let task = match (
        crate::serve::foreign::unnamed_task(&loaded),
        a.task.as_deref(),
    ) {
        // An HF peft head answers LABEL_i until a task names its labels.
        (Some(head), Some(name)) => {
            let data = crate::paths::data_dir(None)?;
            let spec = crate::config::TaskSpec {
                name: name.to_string(),
                ..Default::default()
            };
            let t = crate::data::load(&data, &spec, 0)
                .with_context(|| format!("loading task `{name}` for its labels"))?;
            crate::serve::foreign::bind_task(head, &t, &a.adapter)?
        }
        (Some(head), None) => head.clone(),
        (None, name) => loaded.task(name)?.clone(),
    };
    let batch = a
        .batch
        .unwrap_or(loaded.manifest.config.training.batch_size);
    let stats = match &a.out {
        Some(path) => {
            let mut buf = Vec::new();
            let s = p::predict(&loaded, &task, &examples, batch, !a.quiet, &mut buf, dev)?;
            crate::files::write_atomic(path, &buf)
                .with_context(|| format!("writing {}", path.display()))?;
            s
        }
        None => {
            let stdout = std::io::stdout();
            let mut lock = stdout.lock();
            p::predict(&loaded, &task, &examples, batch, !a.quiet, &mut lock, dev)?
        }
    };
    if !a.quiet {
        eprintln!(
            "{} examples in {:.2} s ({:.1} examples/s, batch {batch}, task {})",
            stats.examples, stats.seconds, stats.examples_per_second, task.name
        );
    }
    Ok(ExitCode::SUCCESS)
}
