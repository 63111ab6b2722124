//! Evaluation metrics, as the papers and GLUE/CrossFit compute them.

/// Fraction of predictions equal to the labels.
pub fn accuracy(pred: &[usize], gold: &[usize]) -> f64 {
    assert_eq!(pred.len(), gold.len(), "accuracy: lengths differ");
    if pred.is_empty() {
        return 0.0;
    }
    pred.iter().zip(gold).filter(|(p, g)| p == g).count() as f64 / pred.len() as f64
}

/// Macro-averaged F1 over the classes present in either `pred` or `gold` (scikit-learn's
/// `f1_score(average="macro")`; a class with no true or predicted positives scores 0).
pub fn macro_f1(pred: &[usize], gold: &[usize]) -> f64 {
    assert_eq!(pred.len(), gold.len(), "macro_f1: lengths differ");
    let mut classes: Vec<usize> = pred.iter().chain(gold).copied().collect();
    classes.sort_unstable();
    classes.dedup();
    if classes.is_empty() {
        return 0.0;
    }
    let f1s = classes.iter().map(|&c| {
        let tp = pred
            .iter()
            .zip(gold)
            .filter(|(p, g)| **p == c && **g == c)
            .count() as f64;
        let fp = pred
            .iter()
            .zip(gold)
            .filter(|(p, g)| **p == c && **g != c)
            .count() as f64;
        let fn_ = pred
            .iter()
            .zip(gold)
            .filter(|(p, g)| **p != c && **g == c)
            .count() as f64;
        if tp == 0.0 {
            0.0
        } else {
            2.0 * tp / (2.0 * tp + fp + fn_)
        }
    });
    f1s.sum::<f64>() / classes.len() as f64
}

/// Matthews correlation coefficient for binary labels (GLUE CoLA); 0 when undefined.
pub fn matthews(pred: &[usize], gold: &[usize]) -> f64 {
    assert_eq!(pred.len(), gold.len(), "matthews: lengths differ");
    let count = |p: usize, g: usize| {
        pred.iter()
            .zip(gold)
            .filter(|(a, b)| **a == p && **b == g)
            .count() as f64
    };
    let (tp, tn, fp, fn_) = (count(1, 1), count(0, 0), count(1, 0), count(0, 1));
    let den = ((tp + fp) * (tp + fn_) * (tn + fp) * (tn + fn_)).sqrt();
    if den == 0.0 {
        0.0
    } else {
        (tp * tn - fp * fn_) / den
    }
}

/// Pearson correlation; 0 when either side is constant.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len(), "pearson: lengths differ");
    let n = x.len() as f64;
    if n == 0.0 {
        return 0.0;
    }
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
    if vx == 0.0 || vy == 0.0 {
        0.0
    } else {
        cov / (vx * vy).sqrt()
    }
}

/// Ranks with ties averaged (1-based), as scipy's `rankdata`.
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for k in &idx[i..=j] {
            r[*k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman rank correlation (Pearson of tie-averaged ranks).
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

/// SQuAD-style answer normalisation: lower case, no punctuation, no articles, single spaces.
pub fn normalize_answer(s: &str) -> String {
    let lower: String = s
        .to_lowercase()
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    lower
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Exact match after normalisation.
pub fn exact_match(pred: &[String], gold: &[String]) -> f64 {
    assert_eq!(pred.len(), gold.len(), "exact_match: lengths differ");
    if pred.is_empty() {
        return 0.0;
    }
    pred.iter()
        .zip(gold)
        .filter(|(p, g)| normalize_answer(p) == normalize_answer(g))
        .count() as f64
        / pred.len() as f64
}

/// ROUGE-L F-measure (longest common subsequence of whitespace tokens, after normalisation).
pub fn rouge_l(pred: &str, gold: &str) -> f64 {
    let (p, g) = (normalize_answer(pred), normalize_answer(gold));
    let (p, g): (Vec<&str>, Vec<&str>) = (
        p.split_whitespace().collect(),
        g.split_whitespace().collect(),
    );
    if p.is_empty() || g.is_empty() {
        return if p.is_empty() && g.is_empty() {
            1.0
        } else {
            0.0
        };
    }
    let mut dp = vec![vec![0usize; g.len() + 1]; p.len() + 1];
    for i in 1..=p.len() {
        for j in 1..=g.len() {
            dp[i][j] = if p[i - 1] == g[j - 1] {
                dp[i - 1][j - 1] + 1
            } else {
                dp[i - 1][j].max(dp[i][j - 1])
            };
        }
    }
    let lcs = dp[p.len()][g.len()] as f64;
    if lcs == 0.0 {
        return 0.0;
    }
    let (prec, rec) = (lcs / p.len() as f64, lcs / g.len() as f64);
    2.0 * prec * rec / (prec + rec)
}

/// Relative gain over a baseline score, `(s - base) / |base|` (the thesis' RG).
pub fn relative_gain(score: f64, baseline: f64) -> Option<f64> {
    (baseline.abs() > 1e-12).then(|| (score - baseline) / baseline.abs())
}

/// ARG (mean relative gain) and RGSTD (its population standard deviation) over tasks, skipping
/// tasks whose baseline is ~0 (as the thesis drops freebase_qa). Returns `(arg, rgstd, used)`.
pub fn arg_rgstd(scores: &[(f64, f64)]) -> (f64, f64, usize) {
    let rg: Vec<f64> = scores
        .iter()
        .filter_map(|&(s, b)| relative_gain(s, b))
        .collect();
    if rg.is_empty() {
        return (0.0, 0.0, 0);
    }
    let n = rg.len() as f64;
    let mean = rg.iter().sum::<f64>() / n;
    let var = rg.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt(), rg.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} != {b}");
    }

    // Expected values worked out by hand with scikit-learn's and scipy's definitions.
    #[test]
    fn classification_metrics_match_scikit_learn() {
        let gold = [0, 1, 2, 2, 1, 0, 1];
        let pred = [0, 2, 2, 2, 1, 1, 1];
        close(accuracy(&pred, &gold), 5.0 / 7.0);
        // f1 per class: 0 -> 2/3, 1 -> 2/3, 2 -> 0.8
        close(macro_f1(&pred, &gold), (2.0 / 3.0 + 2.0 / 3.0 + 0.8) / 3.0);
        let (g, p) = ([1, 1, 0, 0, 1, 0, 1, 1], [1, 0, 0, 1, 1, 0, 1, 1]);
        // tp=4 tn=2 fp=1 fn=1: (8-1)/sqrt(5*5*3*3) = 7/15
        close(matthews(&p, &g), 7.0 / 15.0);
        close(matthews(&[1, 1], &[1, 1]), 0.0);
    }

    #[test]
    fn correlations() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        close(pearson(&x, &[2.0, 4.0, 6.0, 8.0, 10.0]), 1.0);
        close(pearson(&x, &[5.0, 4.0, 3.0, 2.0, 1.0]), -1.0);
        // Monotone but not linear: Spearman 1, Pearson below 1.
        let y = [1.0, 4.0, 9.0, 16.0, 100.0];
        close(spearman(&x, &y), 1.0);
        assert!(pearson(&x, &y) < 0.95);
        // Ties are averaged: ranks [1, 2.5, 2.5, 4] vs [1, 2, 3, 4] give 4.5 / sqrt(4.5 * 5).
        close(
            spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0]),
            0.9486832980505138,
        );
    }

    #[test]
    fn text_metrics() {
        close(
            exact_match(
                &["The Cat!".into(), "dog".into()],
                &["cat".into(), "a dog".into()],
            ),
            1.0,
        );
        // Articles dropped: "cat sat on mat" vs "cat on mat": LCS 3, P = 3/4, R = 1.
        close(
            rouge_l("the cat sat on the mat", "the cat on the mat"),
            2.0 * 0.75 / 1.75,
        );
        close(rouge_l("", ""), 1.0);
        close(rouge_l("x", "y"), 0.0);
    }

    #[test]
    fn relative_gain_summary_skips_zero_baselines() {
        let (arg, std, used) = arg_rgstd(&[(0.6, 0.5), (0.4, 0.5), (0.3, 0.0)]);
        assert_eq!(used, 2);
        close(arg, 0.0);
        close(std, 0.2);
    }
}
