//! The op set: data, not vtable methods, so that it can grow in minor versions without changing
//! any layout. Each op takes input handles and [`Values`](crate::Values) and returns handles and
//! values. Inputs are consumed (moved) unless the op is marked *borrows*; the safe [`Tensor`]
//! wrapper clones (`DUP`) where a caller keeps using a tensor.
//!
//! Conventions: dims are signed (negative counts from the end); shapes are `ints`; scalars are
//! `floats`; names and JSON are `text`.
//!
//! [`Tensor`]: crate::Tensor
use abi_stable::StableAbi;

#[repr(transparent)]
#[derive(StableAbi, Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpCode(pub u32);

macro_rules! opcodes {
    ($( $(#[doc = $doc:literal])* $name:ident = $code:literal, since $minor:literal; )*) => {
        impl OpCode {
            $( $(#[doc = $doc])* pub const $name: OpCode = OpCode($code); )*

            /// Every op this copy of the API defines, with the minor version that added it.
            pub const ALL: &'static [(OpCode, &'static str, u32)] =
                &[$( (OpCode($code), stringify!($name), $minor) ),*];
        }
    };
}

opcodes! {
    /// (x) -> a second handle to the same tensor. Borrows.
    DUP = 1, since 0;
    /// (x) -> ints = shape. Borrows.
    SHAPE = 2, since 0;
    /// (x) -> ints = shape, data = values (float) or idata = values (int). Borrows.
    TO_DATA = 3, since 0;
    /// () ints = shape, data = values -> float tensor (no gradient).
    FROM_DATA = 4, since 0;
    /// () ints = shape, idata = values -> int tensor.
    FROM_INTS = 5, since 0;
    /// () ints = shape, floats = [value] -> float tensor filled with value.
    FULL = 6, since 0;
    /// (x) -> x cut from the autodiff graph.
    DETACH = 7, since 0;
    /// (x) -> a new leaf equal to x that requires gradients (MAML's adapted parameters).
    REQUIRE_GRAD = 8, since 0;

    /// (a, b) -> a + b, broadcasting.
    ADD = 10, since 0;
    /// (a, b) -> a - b, broadcasting.
    SUB = 11, since 0;
    /// (a, b) -> a * b, broadcasting.
    MUL = 12, since 0;
    /// (a, b) -> a / b, broadcasting.
    DIV = 13, since 0;
    /// (x) floats = [c] -> x + c.
    ADD_SCALAR = 14, since 0;
    /// (x) floats = [c] -> x * c.
    MUL_SCALAR = 15, since 0;
    /// (x) floats = [p] -> x ^ p.
    POW_SCALAR = 16, since 0;
    /// (x) floats = [min, max] -> clamp(x).
    CLAMP = 17, since 0;

    /// (x) -> -x.
    NEG = 20, since 0;
    /// (x) -> exp(x).
    EXP = 21, since 0;
    /// (x) -> ln(x).
    LOG = 22, since 0;
    /// (x) -> sqrt(x).
    SQRT = 23, since 0;
    /// (x) -> relu(x).
    RELU = 24, since 0;
    /// (x) ints = [approximate] -> gelu(x); approximate = 1 uses the tanh form ("gelu_new").
    GELU = 25, since 0;
    /// (x) -> x * sigmoid(x).
    SILU = 26, since 0;
    /// (x) -> tanh(x).
    TANH = 27, since 0;
    /// (x) -> sigmoid(x).
    SIGMOID = 28, since 0;
    /// (x) -> |x|.
    ABS = 29, since 0;

    /// (x) ints = [dim] -> softmax along dim.
    SOFTMAX = 30, since 0;
    /// (x) ints = [dim] -> log_softmax along dim.
    LOG_SOFTMAX = 31, since 0;
    /// (x) ints = [dim] -> sum along dim, kept as size 1; ints = [] -> sum of all, shape [1].
    SUM = 32, since 0;
    /// (x) ints = [dim] -> mean along dim, kept as size 1; ints = [] -> mean of all, shape [1].
    MEAN = 33, since 0;
    /// (x) ints = [dim] -> max along dim, kept as size 1.
    MAX = 34, since 0;
    /// (x, [weight, bias]) floats = [eps] -> layer norm over the last dim.
    LAYER_NORM = 35, since 0;
    /// (x, [weight]) floats = [eps] -> RMS norm over the last dim (T5's LayerNorm).
    RMS_NORM = 36, since 0;

    /// (a, b) -> a @ b, batched over leading dims (broadcast like torch.matmul).
    MATMUL = 40, since 0;
    /// (x, weight [out, in], [bias [out]]) -> x @ weight^T + bias (PyTorch layout).
    LINEAR = 41, since 0;
    /// (q [b, t, h], k [b, s, h], v [b, s, h], [keep [b, s]]) ints = [heads] floats = [scale]
    /// -> `softmax(q kᵀ · scale) v` per head, the heads split from `h` as `[heads, h / heads]`
    /// (BERT's layout) and merged back: `[b, t, h]`. Keys whose `keep` is 0 are masked out
    /// (a batch with none kept attends uniformly). No dropout. The host runs its fused kernel
    /// where it has one (never materialising the `[t, s]` scores); the same values as the
    /// composed `MATMUL`/`SOFTMAX` chain.
    ATTENTION = 42, since 2;
    /// (q [b, t, h], k [b, s, h], v [b, s, h], bias [heads, t, s], [keep [b, s]])
    /// ints = [heads, causal] floats = [scale] -> [`OpCode::ATTENTION`] with `bias` added to
    /// every batch's scaled scores (T5's relative position bias; it receives the score
    /// gradient summed over the batch when it is trainable) and, when `causal >= 0`, query
    /// `i` seeing key `j` only for `j <= i + causal` (`-1`: no causal mask).
    ATTENTION_BIAS = 43, since 3;

    /// (x) ints = shape (one entry may be -1) -> reshaped x.
    RESHAPE = 50, since 0;
    /// (x) ints = axes -> permuted x.
    PERMUTE = 51, since 0;
    /// (x) ints = [dim, start, end] -> x[.., start..end, ..] (end exclusive).
    SLICE = 52, since 0;
    /// (x1, x2, ...) ints = [dim] -> concatenation.
    CAT = 53, since 0;
    /// (x, index: int, same rank) ints = [dim] -> gather along dim.
    GATHER = 54, since 0;
    /// (x) ints = shape -> x broadcast to shape.
    EXPAND = 55, since 0;
    /// (x, index: int [n]) ints = [dim] -> rows selected along dim.
    INDEX_SELECT = 56, since 0;

    /// (logits [n, c], labels: int [n]) floats = [label_smoothing] ints = [ignore_index]
    /// -> mean cross-entropy, shape [1].
    CROSS_ENTROPY = 61, since 0;
    /// (x) floats = [p] -> inverted dropout in training mode, identity in eval mode.
    DROPOUT = 62, since 0;

    /// () text = JSON [`ParamSpec`](crate::ParamSpec) -> the new parameter. Names are
    /// namespaced by the calling module instance.
    PARAM_CREATE = 70, since 0;
    /// () text = name -> the parameter (or its substitute, when the host runs the model with a
    /// substituted parameter set). A name starting with `backbone:` reads a backbone weight by
    /// its HF key.
    PARAM = 71, since 0;
    /// () text = name -> a context tensor of this forward pass (e.g. `task_ids`, or what a
    /// context encoder or another module stored).
    CONTEXT = 72, since 0;
    /// (x) text = name -> stores x in this forward pass's context.
    SET_CONTEXT = 73, since 0;
    /// (x: shape [1]) floats = [weight] -> adds weight * x to the training objective (auxiliary
    /// losses such as PHA's InfoNCE terms).
    ADD_LOSS = 74, since 0;
    /// (inputs...) text = site name -> outputs of the modules attached there (lets a backbone
    /// written as a plugin call hook sites).
    SITE = 75, since 0;
    /// (x) text = name -> overwrites the named parameter (`backbone:<HF key>` or the module's
    /// own) with x, outside the autodiff graph (LoRA merge and unmerge).
    ASSIGN_PARAM = 76, since 0;

    /// (loss, p1, ..., pn) -> (g1, ..., gn): gradients of loss with respect to the given
    /// tensors (leaves or REQUIRE_GRAD results), detached. A tensor the loss does not depend on
    /// gets zeros.
    GRAD = 80, since 0;
    /// () -> ints = [1] in training mode, [0] in eval mode.
    IS_TRAINING = 81, since 0;

    /// (a, b) ints = [dim] floats = [eps] -> cosine similarity along dim (dim removed).
    COSINE_SIMILARITY = 90, since 1;
    /// (a, b) -> mean squared error, shape [1].
    MSE = 91, since 1;
}

impl OpCode {
    /// The op's name, if this copy of the API knows it.
    pub fn name(self) -> Option<&'static str> {
        Self::ALL
            .iter()
            .find(|(c, _, _)| *c == self)
            .map(|(_, n, _)| *n)
    }

    /// The API minor version that introduced the op.
    pub fn since_minor(self) -> Option<u32> {
        Self::ALL
            .iter()
            .find(|(c, _, _)| *c == self)
            .map(|(_, _, m)| *m)
    }

    /// Ops that read their inputs without consuming them.
    pub fn borrows_inputs(self) -> bool {
        matches!(self, OpCode::DUP | OpCode::SHAPE | OpCode::TO_DATA)
    }
}

impl std::fmt::Debug for OpCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n}"),
            None => write!(f, "op#{}", self.0),
        }
    }
}
