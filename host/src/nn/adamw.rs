//! AdamW's update of one parameter in a single pass on the CPU backend.
//!
//! Why: written with burn's ops the update is eleven elementwise passes, each reading and
//! writing the whole parameter (a HyperT5 hypermodel's 12.9 M values made it 48 ms a step);
//! here each element's `m`, `v` and new value are computed where they lie, the moments in
//! place and the new value into the gradient's buffer, over both cores. The arithmetic is the
//! composed version's, operation for operation (the same f32 roundings of the f64 scalars, no
//! fused multiply-adds), so the two agree bit for bit (`train/tests/optim.rs`).
use std::any::Any;

use burn::tensor::{backend::AutodiffBackend, DType, TensorData};
use rayon::prelude::*;

use super::autodiff::{AdTensor, FlexTensor};
use super::math::simd_dispatch;
use super::value::FloatPrim;

/// A float primitive of `B`'s inner (gradient-free) backend: what gradients and moments are.
type InnerPrim<B> = burn::tensor::ops::FloatTensor<<B as AutodiffBackend>::InnerBackend>;

/// The scalars of one update (PyTorch's AdamW: decoupled weight decay, bias correction).
#[derive(Clone, Copy, Debug)]
pub struct Hyper {
    pub lr: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// This update's step count, from 1.
    pub t: usize,
}

/// The same scalars rounded to f32 the way burn's scalar ops round them (`s as f32`).
#[derive(Clone, Copy)]
struct Scalars {
    b1: f32,
    c1: f32,
    b2: f32,
    c2: f32,
    bc1: f32,
    bc2: f32,
    decay: Option<f32>,
    eps: f32,
    lr: f32,
}

/// Whether [`step`] takes these tensors: `w` and `g` f32, of one shape, contiguous from
/// offset 0, and the moments (when there are any) the same.
fn fits(w: &FlexTensor, g: &FlexTensor, moments: Option<(&FlexTensor, &FlexTensor)>) -> bool {
    let n = w.layout().num_elements();
    let flat = |x: &FlexTensor| {
        x.dtype() == DType::F32
            && x.layout().num_elements() == n
            && x.layout().contiguous_offsets() == Some((0, n))
    };
    let moments_fit = moments.is_none_or(|(m, v)| flat(m) && flat(v));
    flat(w) && flat(g) && g.layout().shape() == w.layout().shape() && moments_fit
}

/// The new value, first moment and second moment of a parameter (its layouts checked by
/// [`fits`]). The moments are updated in place, the new value written into `g`'s buffer
/// (each copied first only if shared); no moments: the first step, from zeros.
fn step(
    w: &FlexTensor,
    g: FlexTensor,
    moments: Option<(FlexTensor, FlexTensor)>,
    h: Hyper,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let n = w.layout().num_elements();
    let (mut m, mut v) = moments.unwrap_or_else(|| {
        let zeros = || {
            let shape = w.layout().shape().clone();
            FlexTensor::from_data(TensorData::new(vec![0f32; n], shape))
        };
        (zeros(), zeros())
    });
    let s = Scalars {
        b1: h.beta1 as f32,
        c1: (1.0 - h.beta1) as f32,
        b2: h.beta2 as f32,
        c2: (1.0 - h.beta2) as f32,
        bc1: (1.0 - h.beta1.powi(h.t as i32)) as f32,
        bc2: (1.0 - h.beta2.powi(h.t as i32)) as f32,
        decay: (h.weight_decay > 0.0).then_some((h.lr * h.weight_decay) as f32),
        eps: h.eps as f32,
        lr: h.lr as f32,
    };
    let mut g = g;
    {
        let w = &w.storage::<f32>()[..n];
        let gs = &mut g.storage_mut::<f32>()[..n];
        let ms = &mut m.storage_mut::<f32>()[..n];
        let vs = &mut v.storage_mut::<f32>()[..n];
        // Chunks large enough that the split costs nothing, small enough for both cores.
        const CHUNK: usize = 1 << 14;
        gs.par_chunks_mut(CHUNK)
            .zip(ms.par_chunks_mut(CHUNK))
            .zip(vs.par_chunks_mut(CHUNK))
            .zip(w.par_chunks(CHUNK))
            .for_each(|(((g, m), v), w)| update_chunk(g, m, v, w, s));
    }
    (g, m, v)
}

/// A parameter's new value (a trainable leaf of `B`) and moments, on the CPU autodiff backend
/// when the layouts fit ([`fits`]); otherwise the gradient and moments handed back untouched
/// for the composed update.
#[allow(clippy::type_complexity)]
pub fn adamw_step<B: AutodiffBackend>(
    value: &FloatPrim<B>,
    grad: InnerPrim<B>,
    moments: Option<(InnerPrim<B>, InnerPrim<B>)>,
    h: Hyper,
) -> Result<
    (FloatPrim<B>, InnerPrim<B>, InnerPrim<B>),
    (InnerPrim<B>, Option<(InnerPrim<B>, InnerPrim<B>)>),
> {
    let cpu = super::autodiff::enabled::<B>();
    let w = (value as &dyn Any).downcast_ref::<AdTensor>();
    fn flex<T: 'static>(x: &T) -> Option<&FlexTensor> {
        (x as &dyn Any).downcast_ref::<FlexTensor>()
    }
    // `Some(None)`: no moments yet; `None`: moments of another primitive type.
    let m = match &moments {
        Some((m, v)) => flex(m).zip(flex(v)).map(Some),
        None => Some(None),
    };
    let ok = cpu
        && w.zip(flex(&grad))
            .zip(m)
            .is_some_and(|((w, g), m)| fits(&w.primitive, g, m));
    let (Some(w), true) = (w, ok) else {
        return Err((grad, moments));
    };
    // `B` is the CPU autodiff backend (`enabled` compared the type ids), so its inner float
    // primitive is `FlexTensor`: these casts cannot fail.
    const SAME: &str = "the CPU autodiff backend's inner primitive is FlexTensor";
    let into_flex =
        |x: InnerPrim<B>| -> FlexTensor { *(Box::new(x) as Box<dyn Any>).downcast().expect(SAME) };
    let back =
        |x: FlexTensor| -> InnerPrim<B> { *(Box::new(x) as Box<dyn Any>).downcast().expect(SAME) };
    let moments = moments.map(|(m, v)| (into_flex(m), into_flex(v)));
    let (w, m, v) = step(&w.primitive, into_flex(grad), moments, h);
    let value = B::float_set_require_grad(B::from_inner(back(w)), true);
    Ok((value, back(m), back(v)))
}

simd_dispatch! {
    /// One chunk: `m`, `v` updated in place, `g` overwritten by the new value. Each line is
    /// one of the composed version's burn ops, in its order.
    fn update_chunk(g: &mut [f32], m: &mut [f32], v: &mut [f32], w: &[f32], s: Scalars) {
        for (((g, m), v), &w) in g.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(w) {
            let gi = *g;
            let mi = *m * s.b1 + gi * s.c1;
            let vi = *v * s.b2 + (gi * gi) * s.c2;
            *m = mi;
            *v = vi;
            let mhat = mi / s.bc1;
            let vhat = vi / s.bc2;
            let w = match s.decay {
                Some(d) => w - w * d,
                None => w,
            };
            *g = w - mhat / (vhat.sqrt() + s.eps) * s.lr;
        }
    }
}
