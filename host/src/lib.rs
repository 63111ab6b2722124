//! peft-host: the host of the plugin API. Owns every tensor (the burn bridge in [`bridge`]),
//! the backbones, the parameter store, the trainer and the CLI.
pub mod adapters;
pub mod backbone;
pub mod bench;
pub mod bridge;
pub mod cli;
pub mod config;
pub mod context;
pub mod data;
pub mod device;
pub mod dist;
pub mod fewshot;
pub mod files;
pub mod heads;
pub mod hypermodel;
pub mod metrics;
pub mod model;
pub mod modules;
pub mod nn;
pub mod params;
pub mod paths;
pub mod plan;
pub mod report;
pub mod retrieval;
pub mod run;
pub mod serve;
pub mod train;

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
