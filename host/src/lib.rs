//! peft-host: the host of the plugin API. Owns every tensor (the burn bridge in [`bridge`]),
//! the backbones, the parameter store, the trainer and the CLI. The burn-free parts (config,
//! data, metrics, report plots, files, paths) are the `peft-core` crate, re-exported here under
//! their old paths.
pub use model::context;
pub use peft_core::{config, data, files, metrics, paths, report};

pub mod adapters;
pub mod backbone;
pub mod bench;
pub mod bridge;
pub mod cli;
pub mod device;
pub mod dist;
pub mod fewshot;
pub mod heads;
pub mod hypermodel;
pub mod model;
pub mod modules;
pub mod nn;
pub mod params;
pub mod plan;
pub mod retrieval;
pub mod run;
pub mod serve;
pub mod train;
pub mod validate;

// Built-in plugins: referenced so that the linker keeps their inventory registrations.
use adapter_bias as _;
use houlsby as _;
use hypert5 as _;
use lora as _;
use maml as _;
use meta_adapters as _;
use multitask as _;
use parallel_adapter as _;
use pha as _;
use prefix as _;
use reptile as _;

/// The registry of built-in plugins plus those in plugin folders; unusable libraries are
/// reported and skipped.
pub fn registry(
    plugin_dirs: &[std::path::PathBuf],
) -> anyhow::Result<(peft_registry::Registry, Vec<peft_registry::RegistryError>)> {
    let mut r = peft_registry::Registry::with_static_plugins()?;
    let mut refused = Vec::new();
    for dir in peft_registry::plugin_dirs(plugin_dirs) {
        refused.extend(r.load_dir(&dir));
    }
    Ok((r, refused))
}
