//! AdamW's one-pass CPU update (`nn::adamw`) against the composed burn ops it replaces.
use burn::tensor::{Tensor, TensorData, TensorPrimitive};

use super::{AdamW, Optim};
use crate::params::{InnerPrim, Param};

use crate::nn::test_support::{vals, values, A};

type Inner = burn::backend::Flex;

fn param(shape: [usize; 2], seed: u64) -> Param<A> {
    let data = TensorData::new(values(seed, shape[0] * shape[1]), shape);
    let value = Tensor::<A, 2>::from_data(data, &Default::default()).require_grad();
    Param {
        name: format!("p{seed}"),
        group: "g".into(),
        owner: "test".into(),
        shape: shape.to_vec(),
        value: value.into_primitive().tensor(),
        trainable: true,
    }
}

fn grad(shape: [usize; 2], seed: u64, transposed: bool) -> InnerPrim<A> {
    let [r, c] = shape;
    let t = if transposed {
        Tensor::<Inner, 2>::from_data(
            TensorData::new(values(seed, r * c), [c, r]),
            &Default::default(),
        )
        .transpose()
    } else {
        Tensor::<Inner, 2>::from_data(
            TensorData::new(values(seed, r * c), [r, c]),
            &Default::default(),
        )
    };
    match t.into_primitive() {
        TensorPrimitive::Float(p) => p,
        TensorPrimitive::QFloat(_) => unreachable!("a float tensor"),
    }
}

fn value_of(p: &Param<A>) -> Vec<f32> {
    vals(Tensor::<A, 2>::from_primitive(TensorPrimitive::Float(
        p.value.clone(),
    )))
}

/// Three updates of the one-pass kernel against burn's composed ops (the kernels turned off),
/// with and without weight decay, on a shape off the SIMD width and one over several chunks:
/// the same values and moments bit for bit, and the result a trainable leaf.
#[test]
fn one_pass_update_equals_the_composed_ops_bit_for_bit() {
    for (shape, wd) in [([37, 53], 0.0), ([37, 53], 0.01), ([300, 257], 0.1)] {
        let (mut fused, mut composed) = (param(shape, 3), param(shape, 3));
        let mut o1 = Optim::AdamW(AdamW::<A>::new(1e-3, wd));
        let mut o2 = Optim::AdamW(AdamW::<A>::new(1e-3, wd));
        for step in 0..3 {
            let g = || grad(shape, 10 + step, false);
            o1.step(&mut fused, g()).unwrap();
            crate::nn::generic_ops(|| o2.step(&mut composed, g())).unwrap();
            assert_eq!(
                value_of(&fused),
                value_of(&composed),
                "{shape:?} wd {wd} step {step}"
            );
        }
        let t = Tensor::<A, 2>::from_primitive(TensorPrimitive::Float(fused.value.clone()));
        assert!(t.is_require_grad());
        let state = |o: &Optim<A>| {
            let (tensors, steps) = o.export();
            let vals: Vec<Vec<f32>> = tensors
                .into_iter()
                .map(|(_, p)| {
                    vals(Tensor::<Inner, 2>::from_primitive(TensorPrimitive::Float(
                        p,
                    )))
                })
                .collect();
            (vals, steps)
        };
        assert_eq!(state(&o1), state(&o2), "moments and step counts");
    }
}

/// A gradient that is a transposed view does not fit the kernel: the composed update runs and
/// gives the same values; an old value still held elsewhere is not written.
#[test]
fn other_layouts_fall_back_and_nothing_shared_is_written() {
    let shape = [19, 23];
    let (mut a, mut b) = (param(shape, 5), param(shape, 5));
    let before = value_of(&a);
    let held = a.value.clone();
    let mut o1 = Optim::AdamW(AdamW::<A>::new(1e-2, 0.0));
    let mut o2 = Optim::AdamW(AdamW::<A>::new(1e-2, 0.0));
    o1.step(&mut a, grad(shape, 7, true)).unwrap();
    crate::nn::generic_ops(|| o2.step(&mut b, grad(shape, 7, true))).unwrap();
    assert_eq!(value_of(&a), value_of(&b));
    let held = vals(Tensor::<A, 2>::from_primitive(TensorPrimitive::Float(held)));
    assert_eq!(held, before);
    o1.step(&mut a, grad(shape, 8, false)).unwrap();
    crate::nn::generic_ops(|| o2.step(&mut b, grad(shape, 8, false))).unwrap();
    assert_eq!(value_of(&a), value_of(&b));
}
