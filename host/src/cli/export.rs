//! `export`: a saved adapter in HF peft's format, or merged into the backbone; `dump`: its
//! hidden states and logits on some texts, for cross-checks with HF.
use std::{path::PathBuf, process::ExitCode};

use crate::{
    device::DeviceSpec,
    serve::{export, folder, predict},
};

pub fn export(
    registry: &peft_registry::Registry,
    device: DeviceSpec,
    adapter: PathBuf,
    out: PathBuf,
    merge: bool,
    base_model: Option<String>,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(device == DeviceSpec::Cpu, "export runs on the CPU backend");
    let loaded = folder::load::<crate::device::Cpu>(&adapter, registry, &Default::default())?;
    if merge {
        export::merged(&loaded, &out)?;
        println!("merged model: {}", out.display());
    } else {
        for d in export::hf_peft(&loaded, base_model.as_deref(), &out)? {
            println!("HF peft adapter: {}", d.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn dump(
    registry: &peft_registry::Registry,
    device: DeviceSpec,
    adapter: PathBuf,
    input: PathBuf,
    task: Option<String>,
    out: PathBuf,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(device == DeviceSpec::Cpu, "dump runs on the CPU backend");
    let dev = Default::default();
    let examples = predict::read_inputs(&input, predict::InputFormat::Auto)?;
    anyhow::ensure!(!examples.is_empty(), "{}: no inputs", input.display());
    let loaded = folder::load::<crate::device::Cpu>(&adapter, registry, &dev)?;
    let record = if loaded.manifest.tasks.len() == 1 || task.is_some() {
        Some(loaded.task(task.as_deref())?.clone())
    } else {
        None
    };
    let texts: Vec<_> = examples
        .iter()
        .map(|e| (e.text_a.clone(), e.text_b.clone()))
        .collect();
    let j = predict::dump(&loaded, record.as_ref(), &texts, &dev)?;
    crate::files::write_atomic(&out, serde_json::to_string(&j)?.as_bytes())?;
    println!("outputs: {}", out.display());
    Ok(ExitCode::SUCCESS)
}
