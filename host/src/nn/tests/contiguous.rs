use burn::{
    backend::Flex,
    tensor::{Tensor, TensorData},
};

use super::{contiguous, Buf};

fn flex<const D: usize>(t: Tensor<Flex, D>) -> super::FlexTensor {
    t.into_primitive().tensor()
}

/// Run-by-run copies of the views attention and prefix tuning make (a head split, a batch
/// broadcast, a narrowed block, a permutation whose last dim is not adjacent) hold the
/// values burn reads from the view, in row-major order; `Buf` borrows what is contiguous.
#[test]
fn contiguous_copies_equal_burns_reading_of_each_view() {
    let (b, t, heads, dh) = (2, 5, 3, 4);
    let v: Vec<f32> = (0..b * t * heads * dh)
        .map(|i| i as f32 * 0.5 - 7.0)
        .collect();
    let x = Tensor::<Flex, 1>::from_data(
        TensorData::new(v, [b * t * heads * dh]),
        &Default::default(),
    );
    let split = x.clone().reshape([b, t, heads, dh]).swap_dims(1, 2);
    let row = x.clone().narrow(0, 0, 3 * dh).reshape([1, 1, 3, dh]);
    let views = [
        split.clone(),
        split.clone().narrow(2, 1, 3),
        row.expand([b, heads, 3, dh]),
        x.clone().reshape([b, t, heads, dh]).permute([0, 1, 3, 2]),
        x.reshape([b, heads, t, dh]),
    ];
    for (i, view) in views.into_iter().enumerate() {
        let want: Vec<f32> = view.clone().into_data().into_vec().unwrap();
        let got = contiguous(flex(view));
        assert!(
            got.is_contiguous() && got.layout().start_offset() == 0,
            "view {i}"
        );
        assert_eq!(got.storage::<f32>()[..want.len()], want[..], "view {i}");
        assert_eq!(Buf::new(got)[..], want[..], "view {i}: Buf");
    }
}
