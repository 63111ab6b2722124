//! Helpers the kernel tests share: small deterministic tensors on the CPU autodiff backend.
use burn::tensor::{backend::Backend, Tensor, TensorData};

pub type A = burn::backend::Autodiff<burn::backend::Flex>;

/// Each named pair of value lists has equal length and agrees to `tol`.
pub fn assert_close(pairs: &[(&str, &Vec<f32>, &Vec<f32>)], tol: f32) {
    for (name, x, y) in pairs {
        assert_eq!(x.len(), y.len(), "{name}: lengths");
        let d = x
            .iter()
            .zip(y.iter())
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(d < tol, "{name}: max abs diff {d}");
    }
}

/// A tracked leaf of smooth, distinct values.
pub fn leaf(seed: f32, shape: [usize; 3]) -> Tensor<A, 3> {
    let n = shape.iter().product::<usize>();
    let v: Vec<f32> = (0..n)
        .map(|i| (i as f32 * 0.61 + seed).sin() * 1.1)
        .collect();
    Tensor::<A, 3>::from_data(TensorData::new(v, shape), &Default::default()).require_grad()
}

pub fn vals<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().unwrap()
}
