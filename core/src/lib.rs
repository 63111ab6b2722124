//! peft-core: the parts of the host that need no tensor library: the run config (types,
//! schemas, validation against the plugins' schemas), the task data readers, the metrics, the
//! report plots and atomic file writes. `peft-host` re-exports each module under its old path
//! (`peft_host::config`, ...). Dependencies point one way: this crate knows nothing of burn,
//! backbones or training; the checks that need a backbone live in `peft_host::validate`.
pub mod config;
pub mod data;
pub mod files;
pub mod metrics;
pub mod paths;
pub mod report;
