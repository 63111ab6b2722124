//! Label permutation (`training.permute_labels`): in context-encoder training a pass may show a
//! classification task under a random permutation of its label words, the same one in the
//! few-shot context and in the targets. A hypermodel trained on a fixed set of tasks can lower
//! its loss by learning each task's answer by heart and ignoring the examples (measured on
//! HyperT5: the generated prefix became the same for every task); under a permutation only the
//! examples tell which word answers which class.
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};

use crate::{
    data::{Task, TaskKind},
    heads::Head,
};

/// The label words a pass shows for `task`: `None` (its own) or a copy of the task, without
/// its examples, whose `labels` are permuted. Drawn with probability `p` from a stream seeded
/// by run seed, step and micro-batch, so a resumed run draws what an uninterrupted one does.
pub(crate) fn draw(
    task: &Task,
    head: &Head,
    p: f64,
    seed: u64,
    step: usize,
    micro: usize,
) -> Option<Task> {
    let eligible = task.kind == TaskKind::Classification
        && task.labels.len() > 1
        && matches!(head, Head::OptionScoring | Head::TextToText { .. });
    if p <= 0.0 || !eligible {
        return None;
    }
    let mut rng = StdRng::seed_from_u64(
        seed.wrapping_mul(0xA24B_AED4_963E_E407)
            .wrapping_add((step as u64) << 8)
            .wrapping_add(micro as u64),
    );
    if rng.random::<f64>() >= p {
        return None;
    }
    // Uniform over all permutations, the identity included: at `p` = 1 the pass's label words
    // say nothing about the classes; only the examples do.
    let mut labels = task.labels.clone();
    labels.shuffle(&mut rng);
    if labels == task.labels {
        return None;
    }
    Some(Task {
        name: task.name.clone(),
        kind: task.kind,
        labels,
        train: Vec::new(),
        eval: Vec::new(),
        eval_split: task.eval_split.clone(),
        metric: task.metric.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(kind: TaskKind, labels: &[&str]) -> Task {
        Task {
            name: "t".into(),
            kind,
            labels: labels.iter().map(|s| s.to_string()).collect(),
            train: Vec::new(),
            eval: Vec::new(),
            eval_split: "dev".into(),
            metric: "accuracy".into(),
        }
    }

    #[test]
    fn permutes_classification_words_only_and_reproducibly() {
        let t = task(TaskKind::Classification, &["no", "yes", "maybe"]);
        let (mut moved, mut seen) = (0, std::collections::BTreeSet::new());
        for step in 0..600 {
            let a = draw(&t, &Head::OptionScoring, 0.5, 7, step, 0);
            let again = draw(&t, &Head::OptionScoring, 0.5, 7, step, 0);
            assert_eq!(
                a.as_ref().map(|x| &x.labels),
                again.as_ref().map(|x| &x.labels)
            );
            if let Some(a) = a {
                moved += 1;
                assert_ne!(a.labels, t.labels);
                let (mut x, mut y) = (a.labels.clone(), t.labels.clone());
                x.sort();
                y.sort();
                assert_eq!(x, y, "a permutation of the same words");
                seen.insert(a.labels);
            }
        }
        // Drawn with p = 0.5, then uniform over the 6 orders (5 move a word): 600 · 5/12 = 250
        // expected (binomial sd ~12), and every non-identity order occurs.
        assert!((190..310).contains(&moved), "{moved} of 600 permuted");
        assert_eq!(seen.len(), 5);
        assert!(draw(&t, &Head::OptionScoring, 0.0, 7, 1, 0).is_none());
        let mc = task(TaskKind::MultipleChoice, &[]);
        assert!(draw(&mc, &Head::OptionScoring, 1.0, 7, 1, 0).is_none());
        let one = task(TaskKind::Classification, &["only"]);
        assert!(draw(&one, &Head::OptionScoring, 1.0, 7, 1, 0).is_none());
        let head = Head::Classification {
            prefix: "h".into(),
            classes: 3,
        };
        assert!(
            draw(&t, &head, 1.0, 7, 1, 0).is_none(),
            "a class head has no label words"
        );
    }
}
