use super::{round_bits, round_chunks, round_into};

/// `round_into` gives `round_bits`'s bits for every kind of value: normal values on
/// `vcvtne2ps2bf16` where the CPU has it (ties to even, values that round up to infinity,
/// both signs), and subnormals and NaNs, whose chunks the instruction would read as zero or
/// keep the payload of, on the exact rounding; lengths that leave a partial chunk.
/// Non-NaN values also equal `half`'s rounding, which the weights' conversion uses.
#[test]
fn rounding_in_chunks_equals_round_bits() {
    let mut state = 0x9E37_79B9u32;
    let mut bits = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    // Normal values (exponent 1..=254) with random sign and mantissa; every eighth one a tie
    // (the 16 bits dropped are exactly half a unit), the largest finite value (rounds to ∞).
    let mut vals: Vec<f32> = (0..4096)
        .map(|i| {
            let b = bits();
            let exp = (b >> 23) % 254 + 1;
            let mant = if i % 8 == 0 {
                (b & 0x7f_0000) | 0x8000
            } else {
                b & 0x7f_ffff
            };
            f32::from_bits((b & 0x8000_0000) | exp << 23 | mant)
        })
        .collect();
    vals[100] = f32::MAX;
    vals[101] = -f32::MAX;
    vals[102] = f32::INFINITY;
    vals[103] = 0.0;
    vals[104] = -0.0;
    // The special values sit in the second half, among chunks the instruction rounds.
    let specials = [
        0x0000_0123,
        0x8060_0000,
        0x0000_8000,
        0x7fc0_1234,
        0xffa0_0001,
        0x7f80_0001,
    ];
    for (i, s) in specials.into_iter().enumerate() {
        vals[2048 + 5 + 300 * i] = f32::from_bits(s);
    }
    for len in [4096, 4095, 2048 + 37, 64, 33, 31, 0] {
        let mut got = vec![0u16; len];
        round_into(&vals[..len], &mut got);
        for (g, v) in got.iter().zip(&vals) {
            assert_eq!(
                *g,
                round_bits(*v),
                "{v:e} ({:#010x}) at length {len}",
                v.to_bits()
            );
            if !v.is_nan() {
                assert_eq!(*g, half::bf16::from_f32(*v).to_bits(), "{v:e} as half's");
            }
        }
    }
    // The instruction's loop takes every whole chunk, special or not, where the CPU has it.
    let mut out = vec![0u16; 4095];
    let done = round_chunks(&vals[..4095], &mut out);
    let has = crate::nn::dpbf16::cpu_has_bf16();
    assert_eq!(done, if has { 4064 } else { 0 });
}
