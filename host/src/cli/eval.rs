//! `eval`: a saved adapter scored on a task, with `run`'s table and an eval.json.
use std::{path::PathBuf, process::ExitCode};

use crate::{
    device::DeviceSpec,
    serve::{eval as e, folder},
};

/// Arguments of `eval`.
pub struct EvalArgs {
    pub adapter: PathBuf,
    pub task: Option<String>,
    pub data: Option<PathBuf>,
    pub eval_examples: Option<usize>,
    pub out: Option<PathBuf>,
}

/// `eval` on the backend `device` names: the CPU, or CUDA in a build with the `cuda` feature.
pub fn eval(
    registry: &peft_registry::Registry,
    device: DeviceSpec,
    a: EvalArgs,
) -> anyhow::Result<ExitCode> {
    match device {
        DeviceSpec::Cpu => eval_on::<crate::device::Cpu>(registry, a, &Default::default()),
        DeviceSpec::Cuda(i) => {
            crate::device::check_cuda(i)?;
            #[cfg(feature = "cuda")]
            return eval_on::<crate::device::Cuda>(registry, a, &burn_cuda::CudaDevice::new(i));
            #[allow(unreachable_code)]
            {
                anyhow::bail!("CUDA support is not compiled in")
            }
        }
    }
}

fn eval_on<B: burn::tensor::backend::AutodiffBackend>(
    registry: &peft_registry::Registry,
    a: EvalArgs,
    dev: &B::Device,
) -> anyhow::Result<ExitCode> {
    let data = crate::paths::data_dir(a.data.as_deref())?;
    let loaded = folder::load::<B>(&a.adapter, registry, dev)?;
    let r = e::eval(&loaded, a.task.as_deref(), a.eval_examples, &data, dev)?;
    let modules: Vec<&str> = loaded
        .manifest
        .plugins
        .iter()
        .map(|p| p.instance.as_str())
        .collect();
    let trainable: usize = loaded
        .manifest
        .tensors
        .iter()
        .map(|t| t.shape.iter().product::<usize>())
        .sum();
    print!("{}", e::render(&modules.join("+"), trainable, &r));
    let path = a.out.unwrap_or_else(|| a.adapter.join("eval.json"));
    crate::files::write_atomic(&path, serde_json::to_string_pretty(&r)?.as_bytes())?;
    println!("result: {}", path.display());
    Ok(ExitCode::SUCCESS)
}
