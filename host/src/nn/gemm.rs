//! The one place that calls `gemm::gemm`: strided matrix views that check their extent when
//! made, and [`matmul`] and [`product`], which check that the views' shapes agree before their
//! `unsafe` call. Every CPU kernel multiplies through them.
use std::marker::PhantomData;

pub use gemm::Parallelism;

/// Whether a `rows × cols` matrix at `offset` with strides `rs`, `cs` lies inside `len`
/// elements (overflow counts as not fitting).
fn fits(len: usize, offset: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    if rows == 0 || cols == 0 {
        return offset <= len;
    }
    (rows - 1)
        .checked_mul(rs)
        .zip((cols - 1).checked_mul(cs))
        .and_then(|(a, b)| a.checked_add(b))
        .and_then(|e| e.checked_add(offset))
        .is_some_and(|last| last < len)
}

/// A read-only `rows × cols` matrix inside a slice: element `(i, j)` is
/// `data[offset + i·rs + j·cs]`, every one of them in bounds (checked by [`Mat::new`]).
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a> {
    data: &'a [f32],
    offset: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// Panics when the matrix does not lie inside `data`, as slice indexing does.
    pub fn new(
        data: &'a [f32],
        offset: usize,
        rows: usize,
        cols: usize,
        rs: usize,
        cs: usize,
    ) -> Self {
        assert!(
            fits(data.len(), offset, rows, cols, rs, cs),
            "matrix {rows}x{cols} at {offset} (strides {rs}, {cs}) outside {} elements",
            data.len()
        );
        Mat {
            data,
            offset,
            rows,
            cols,
            rs,
            cs,
        }
    }

    /// A row-major block: rows `stride` apart, columns adjacent.
    pub fn rows(data: &'a [f32], offset: usize, rows: usize, cols: usize, stride: usize) -> Self {
        Self::new(data, offset, rows, cols, stride, 1)
    }

    /// The transpose, reading the same elements.
    pub fn t(self) -> Self {
        Mat {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
    /// Rows `r0..r0 + n`, reading the same elements; panics past the last row.
    pub fn sub_rows(self, r0: usize, n: usize) -> Self {
        assert!(
            r0 + n <= self.rows,
            "rows {r0}..{} of {}",
            r0 + n,
            self.rows
        );
        Mat {
            offset: self.offset + r0 * self.rs,
            rows: n,
            ..self
        }
    }

    /// The number of rows.
    pub fn nrows(&self) -> usize {
        self.rows
    }

    /// The number of columns.
    pub fn ncols(&self) -> usize {
        self.cols
    }

    /// Row `i` as a slice (columns adjacent: `cs == 1`, asserted).
    pub fn row(&self, i: usize) -> &'a [f32] {
        assert!(
            i < self.rows && self.cs == 1,
            "row {i} of a {}x{} view (cs {})",
            self.rows,
            self.cols,
            self.cs
        );
        let start = self.offset + i * self.rs;
        &self.data[start..start + self.cols]
    }
}

/// A writable `rows × cols` matrix: a unique borrow of exactly its elements, which lie inside
/// the buffer it was made from (checked when made), so views of disjoint element sets of one
/// buffer (see [`MatMut::blocks`]) may be written from different threads.
#[derive(Debug)]
pub struct MatMut<'a> {
    /// Element `(0, 0)`.
    ptr: *mut f32,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
    _borrow: PhantomData<&'a mut [f32]>,
}

// SAFETY: a `MatMut` is a unique borrow of its elements, like `&mut [f32]`, which is `Send`;
// no two live `MatMut`s share an element (`new` borrows the whole slice, `blocks` partitions it).
unsafe impl Send for MatMut<'_> {}

impl<'a> MatMut<'a> {
    /// Panics when the matrix does not lie inside `data`.
    pub fn new(
        data: &'a mut [f32],
        offset: usize,
        rows: usize,
        cols: usize,
        rs: usize,
        cs: usize,
    ) -> Self {
        assert!(
            fits(data.len(), offset, rows, cols, rs, cs),
            "matrix {rows}x{cols} at {offset} (strides {rs}, {cs}) outside {} elements",
            data.len()
        );
        MatMut {
            // In bounds (or one past the end of an empty matrix): checked just above.
            ptr: data.as_mut_ptr().wrapping_add(offset),
            rows,
            cols,
            rs,
            cs,
            _borrow: PhantomData,
        }
    }

    /// A row-major `rows × cols` matrix filling `data`.
    pub fn dense(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(
            Some(data.len()),
            rows.checked_mul(cols),
            "dense matrix {rows}x{cols}"
        );
        Self::new(data, 0, rows, cols, cols, 1)
    }

    /// The row-major `rows × cols` matrix in `data` cut into a grid of `br × bc` blocks, in
    /// row-major block order: attention's (batch, head) slices of a `[b·t, h]` activation.
    /// Panics unless the blocks tile the matrix exactly.
    pub fn blocks(
        data: &'a mut [f32],
        rows: usize,
        cols: usize,
        br: usize,
        bc: usize,
    ) -> Vec<Self> {
        assert!(
            rows.checked_mul(cols) == Some(data.len())
                && br > 0
                && bc > 0
                && rows.is_multiple_of(br)
                && cols.is_multiple_of(bc),
            "{br}x{bc} blocks do not tile a {rows}x{cols} matrix of {} elements",
            data.len()
        );
        let base = data.as_mut_ptr();
        let mut out = Vec::with_capacity((rows / br) * (cols / bc));
        for bi in 0..rows / br {
            for bj in 0..cols / bc {
                out.push(MatMut {
                    // In bounds: bi·br < rows and bj·bc < cols.
                    ptr: base.wrapping_add(bi * br * cols + bj * bc),
                    rows: br,
                    cols: bc,
                    rs: cols,
                    cs: 1,
                    _borrow: PhantomData,
                });
            }
        }
        out
    }
}

impl MatMut<'_> {
    /// Rows `r0..r0 + n` of this matrix, reborrowed from it; panics past the last row.
    pub fn sub_rows(&mut self, r0: usize, n: usize) -> MatMut<'_> {
        assert!(
            r0 + n <= self.rows,
            "rows {r0}..{} of {}",
            r0 + n,
            self.rows
        );
        MatMut {
            // Row r0 of the view (checked: r0 + n ≤ rows); with n = 0 nothing is ever read
            // or written through it, hence `wrapping_add`.
            ptr: self.ptr.wrapping_add(r0 * self.rs),
            rows: n,
            cols: self.cols,
            rs: self.rs,
            cs: self.cs,
            _borrow: PhantomData,
        }
    }

    /// Calls `f(i, row)` with each row as a mutable slice (columns adjacent: `cs == 1`,
    /// asserted): what the blocked attention rescales its accumulator rows with.
    pub fn for_each_row(&mut self, mut f: impl FnMut(usize, &mut [f32])) {
        assert_eq!(self.cs, 1, "rows of a view whose columns are not adjacent");
        if self.cols == 0 {
            return;
        }
        for i in 0..self.rows {
            // SAFETY: the view uniquely borrows its elements, all inside the buffer it was
            // made from (checked by `new`/`blocks`, kept by `sub_rows`); with `cs == 1` row
            // `i` is the `cols` adjacent elements from `ptr + i·rs`, all the view's own. Only
            // one row's slice lives at a time (it ends when `f` returns) and `&mut self`
            // keeps every other borrow of the view out meanwhile.
            let row =
                unsafe { std::slice::from_raw_parts_mut(self.ptr.add(i * self.rs), self.cols) };
            f(i, row);
        }
    }
}

/// `dst = alpha·dst + beta·(a · b)` (with `alpha = 0`, `dst` is only written). Panics when the
/// shapes disagree.
pub fn matmul(
    dst: &mut MatMut<'_>,
    alpha: f32,
    a: Mat<'_>,
    b: Mat<'_>,
    beta: f32,
    par: Parallelism,
) {
    assert!(
        dst.rows == a.rows && dst.cols == b.cols && a.cols == b.rows,
        "matmul: [{}x{}] = [{}x{}] · [{}x{}]",
        dst.rows,
        dst.cols,
        a.rows,
        a.cols,
        b.rows,
        b.cols
    );
    // SAFETY: `dst` writes only its own elements inside its buffer (checked when made) and
    // is a unique borrow, so it aliases neither `a` nor `b`; the shapes agree (asserted
    // above).
    unsafe {
        gemm_raw(
            dst.ptr,
            [dst.rows, dst.cols, dst.rs, dst.cs],
            alpha,
            a,
            b,
            beta,
            par,
        )
    }
}

/// `dst = alpha·dst + beta·(a · b)` through `gemm::gemm`, reading `dst` only when `alpha != 0`.
///
/// # Safety
/// `dst` with `[rows, cols, rs, cs]` must be valid for writes (and, with `alpha != 0`, reads)
/// of every element `(i, j)`, `i < rows`, `j < cols`, at `dst + i·rs + j·cs`, alias neither
/// `a` nor `b`, and `rows == a.rows`, `cols == b.cols`, `a.cols == b.rows`. (`a` and `b` read
/// only elements inside their slices: each view checked its extent when made, so gemm touches
/// a for k < a.cols and b for k < b.rows only; strides fit `isize`, spanning allocated slices.)
unsafe fn gemm_raw(
    dst: *mut f32,
    [rows, cols, rs, cs]: [usize; 4],
    alpha: f32,
    a: Mat<'_>,
    b: Mat<'_>,
    beta: f32,
    par: Parallelism,
) {
    let s = |x: usize| x as isize;
    // SAFETY: the caller's contract above.
    unsafe {
        gemm::gemm(
            rows,
            cols,
            a.cols,
            dst,
            s(cs),
            s(rs),
            alpha != 0.0,
            a.data.as_ptr().add(a.offset),
            s(a.cs),
            s(a.rs),
            b.data.as_ptr().add(b.offset),
            s(b.cs),
            s(b.rs),
            alpha,
            beta,
            false,
            false,
            false,
            par,
        );
    }
}

/// `beta·(a · b)` as a new row-major `[a.rows, b.cols]` buffer that the GEMM writes once: no
/// zeroing or bias pass before it and no read of the destination inside it (a linear's output
/// filled with its bias rows first and then accumulated into ran 8 % slower on `[4096, 384] ×
/// [384, 1536]` here than this product followed by a bias pass). Panics when the shapes
/// disagree.
pub fn product(a: Mat<'_>, b: Mat<'_>, beta: f32, par: Parallelism) -> Vec<f32> {
    assert!(
        a.cols == b.rows,
        "product: [{}x{}] · [{}x{}]",
        a.rows,
        a.cols,
        b.rows,
        b.cols
    );
    let (m, n) = (a.rows, b.cols);
    let len = m.checked_mul(n).expect("product: size overflows usize");
    let mut y: Vec<f32> = Vec::with_capacity(len);
    if len == 0 {
        return y;
    }
    // SAFETY: the destination is `y`'s own `len = m·n` elements of spare capacity, row-major
    // (row stride n, column stride 1), aliasing neither operand; the shapes agree (asserted
    // above). With alpha = 0 (`read_dst = false`) gemm-common 0.19 (`gemm_basic_generic`)
    // stores `beta·(a·b)` into every destination element in its first block along k without
    // reading it (microkernel `alpha_status` 0) and later blocks accumulate into what it
    // stored; with k = 0 it stores zeros. Every element is therefore written before any is
    // read, and all `len` are initialised when it returns, which makes `set_len` sound
    // (`tests/gemm.rs` checks the values against `matmul` over a zeroed buffer, k = 0
    // included).
    unsafe {
        gemm_raw(y.as_mut_ptr(), [m, n, n, 1], 0.0, a, b, beta, par);
        y.set_len(len);
    }
    y
}
