//! Using what a run trained: the adapter folder every run saves ([`folder`]), predictions on
//! new text ([`predict`]), scoring a saved adapter on a task ([`eval`]), dumping outputs for
//! cross-checks and HF formats out ([`export`]). The CLI verbs only call in here.
pub mod adapt;
pub mod eval;
pub mod export;
pub mod folder;
pub mod foreign;
pub mod init;
pub mod predict;

use std::collections::BTreeMap;

/// The peft-host build: the git commit it was compiled from (with `-dirty` when the tree had
/// uncommitted changes), or the crate version when built outside a git checkout. Grids reuse a
/// stored result only when this equals the running build's.
pub fn code_version() -> String {
    CODE_VERSION.to_string()
}

/// [`code_version`] as a constant (`peft-host --version` prints it).
pub const CODE_VERSION: &str = env!("PEFT_HOST_CODE_VERSION");

/// Named f32 tensors: name, shape, values.
pub type NamedTensors = Vec<(String, Vec<usize>, Vec<f32>)>;

/// f32 tensors as a safetensors file.
pub fn safetensors_bytes(
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    metadata: BTreeMap<String, String>,
) -> anyhow::Result<Vec<u8>> {
    crate::backbone::weights::serialize_f32_with(tensors, Some(metadata.into_iter().collect()))
}

/// A tensor's values as f32.
pub(crate) fn floats<B: burn::tensor::backend::Backend, const D: usize>(
    t: burn::tensor::Tensor<B, D>,
) -> anyhow::Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))
}
