//! The optimisers' state of a priming run in one checkpoint: every (optimizer, groups) key's
//! tensors and step counts, names prefixed with `<key>|`.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use burn::tensor::backend::AutodiffBackend;

use crate::train::optim::{AdamW, InnerPrim, Optim, OptimState, Sgd};

/// Every optimiser's state, names prefixed with `<key>|`.
pub(super) fn export_optims<B: AutodiffBackend>(
    optims: &BTreeMap<String, Optim<B>>,
) -> OptimState<B> {
    let (mut tensors, mut steps) = (Vec::new(), Vec::new());
    for (key, o) in optims {
        let (t, s) = o.export();
        tensors.extend(t.into_iter().map(|(n, v)| (format!("{key}|{n}"), v)));
        steps.extend(s.into_iter().map(|(n, c)| (format!("{key}|{n}"), c)));
        // An optimiser without per-parameter counts (SGD) still needs its key recorded.
        steps.push((format!("{key}|"), 0));
    }
    (tensors, steps)
}

pub(super) fn import_optims<B: AutodiffBackend>(
    mut tensors: HashMap<String, InnerPrim<B>>,
    steps: &[(String, usize)],
) -> anyhow::Result<BTreeMap<String, Optim<B>>> {
    let mut out = BTreeMap::new();
    let keys: BTreeSet<&str> = steps
        .iter()
        .filter_map(|(n, _)| n.split_once('|').map(|(k, _)| k))
        .collect();
    for key in keys {
        let mut o = if key.starts_with("sgd:") {
            Optim::Sgd(Sgd::new(0.0, 0.0, 0.0))
        } else {
            Optim::AdamW(AdamW::new(0.0, 0.0))
        };
        let prefix = format!("{key}|");
        let (mine, rest): (HashMap<_, _>, HashMap<_, _>) = std::mem::take(&mut tensors)
            .into_iter()
            .partition(|(k, _)| k.starts_with(&prefix));
        tensors = rest;
        let mine: HashMap<String, InnerPrim<B>> = mine
            .into_iter()
            .map(|(k, v)| (k[prefix.len()..].to_string(), v))
            .collect();
        let counts: Vec<(String, usize)> = steps
            .iter()
            .filter_map(|(n, c)| n.strip_prefix(&prefix).map(|n| (n.to_string(), *c)))
            .filter(|(n, _)| !n.is_empty())
            .collect();
        o.import(mine, &counts)?;
        out.insert(key.to_string(), o);
    }
    Ok(out)
}
