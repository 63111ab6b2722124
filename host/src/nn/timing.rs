//! Wall time per CPU kernel, on request (`PEFT_OP_TIMES=1`): where a forward or a training
//! step spends its time, op by op, without a sampling profiler (whose call stacks stop at
//! rayon's worker threads). Each kernel entry point opens a [`span`]; only the outermost span
//! on a thread counts, so a kernel that calls another is not counted twice. What no span covers
//! (burn's element-wise ops, the autodiff engine's bookkeeping, allocation) is what remains of
//! the phase's wall time; `peft-host bench model` prints both.
use std::{
    cell::Cell,
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU8, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

/// 0: not decided yet (read `PEFT_OP_TIMES` on first use), 1: off, 2: on.
static ON: AtomicU8 = AtomicU8::new(0);
static TABLE: Mutex<BTreeMap<&'static str, (u64, Duration)>> = Mutex::new(BTreeMap::new());

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Whether op times are collected: [`set_enabled`], else `PEFT_OP_TIMES=1` (read once).
pub fn enabled() -> bool {
    match ON.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var("PEFT_OP_TIMES").is_ok_and(|v| v == "1");
            ON.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
        v => v == 2,
    }
}

/// Turns collection on or off for the whole process (`peft-host bench model --op-times`).
pub fn set_enabled(on: bool) {
    ON.store(if on { 2 } else { 1 }, Ordering::Relaxed);
}

/// Times the enclosing scope as `op` when collection is on (an inert guard otherwise).
pub(crate) fn span(op: &'static str) -> Span {
    if !enabled() {
        return Span(None);
    }
    let outer = DEPTH.with(|d| {
        let v = d.get();
        d.set(v + 1);
        v == 0
    });
    Span(Some((op, outer.then(Instant::now))))
}

/// Times the enclosing scope as `op <NAME>`, an op a plugin called through the op API (the
/// kernels it calls count towards it): what the time outside the kernels is made of.
pub(crate) fn op_span(name: Option<&'static str>) -> Span {
    if !enabled() {
        return Span(None);
    }
    static NAMES: Mutex<BTreeMap<&'static str, &'static str>> = Mutex::new(BTreeMap::new());
    let name = name.unwrap_or("?");
    let label = *NAMES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(name)
        // One small string per opcode for the life of the process: the table's keys are
        // `&'static str`.
        .or_insert_with(|| Box::leak(format!("op {name}").into_boxed_str()));
    span(label)
}

/// An open [`span`]: records on drop.
pub(crate) struct Span(Option<(&'static str, Option<Instant>)>);

impl Drop for Span {
    fn drop(&mut self) {
        let Some((op, start)) = self.0 else {
            return;
        };
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
        if let Some(start) = start {
            let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
            let e = t.entry(op).or_default();
            e.0 += 1;
            e.1 += start.elapsed();
        }
    }
}

/// The times collected since the last call, `(op, calls, total)`, longest first; clears them.
pub fn take() -> Vec<(&'static str, u64, Duration)> {
    let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let mut v: Vec<_> = std::mem::take(&mut *t)
        .into_iter()
        .map(|(op, (n, d))| (op, n, d))
        .collect();
    v.sort_by_key(|o| std::cmp::Reverse(o.2));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nested spans count once (the outer one), `take` empties the table, and a span opened
    /// with collection off records nothing.
    #[test]
    fn nested_spans_count_once() {
        set_enabled(true);
        {
            let _outer = span("test outer");
            let _inner = span("test inner");
        }
        let got = take();
        assert!(got.iter().any(|(op, n, _)| *op == "test outer" && *n == 1));
        assert!(!got.iter().any(|(op, ..)| *op == "test inner"));
        set_enabled(false);
        drop(span("test off"));
        assert!(!take().iter().any(|(op, ..)| op.starts_with("test ")));
    }
}
