//! PHA's contrastive losses and prototype retrieval.
use peft_api::{ApiError, Ctx, Result, Tensor};

/// Supervised InfoNCE over the batch (Khosla et al.'s form of the paper's Eq. 3–4): for each
/// anchor `i` with at least one positive (another example of its task), the mean over positives
/// `j` of `−log softmax_{m≠i}(cos(z_i, z_m)/τ)_j`, averaged over those anchors. `None` when no
/// example has a positive.
pub fn info_nce<'c>(
    ctx: &'c Ctx<'_>,
    z: Tensor<'c>,
    ids: &[i64],
    tau: f64,
) -> Result<Option<Tensor<'c>>> {
    let n = ids.len();
    let mut weights = vec![0f32; n * n];
    let mut self_mask = vec![0f32; n * n];
    let counts: Vec<usize> = (0..n)
        .map(|i| (0..n).filter(|&j| j != i && ids[j] == ids[i]).count())
        .collect();
    let anchors = counts.iter().filter(|&&c| c > 0).count();
    if anchors == 0 {
        return Ok(None);
    }
    for i in 0..n {
        self_mask[i * n + i] = -1e9;
        for j in 0..n {
            if j != i && ids[j] == ids[i] {
                weights[i * n + j] = 1.0 / (counts[i] * anchors) as f32;
            }
        }
    }
    let sim = z
        .clone()
        .unsqueeze(1)?
        .cosine_similarity(z.unsqueeze(0)?, -1, 1e-8)?
        .mul_scalar(1.0 / tau)?
        .add(ctx.from_data(&[n, n], self_mask)?)?;
    let loss = sim
        .log_softmax(1)?
        .mul(ctx.from_data(&[n, n], weights)?)?
        .sum()?
        .neg()?;
    Ok(Some(loss))
}

/// `L_Pro`: cross-entropy of `cos(z, k)/τ` over the prototypes against each example's task.
pub fn prototype<'c>(
    ctx: &'c Ctx<'_>,
    z: Tensor<'c>,
    k: Tensor<'c>,
    ids: &[i64],
    tau: f64,
) -> Result<Tensor<'c>> {
    let logits = z
        .unsqueeze(1)?
        .cosine_similarity(k.unsqueeze(0)?, -1, 1e-8)?
        .mul_scalar(1.0 / tau)?;
    logits.cross_entropy(ctx.from_ints(&[ids.len()], ids.to_vec())?, 0.0)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na.max(1e-8) * nb.max(1e-8))
}

/// Index of the largest value (the first of equal maxima).
fn argmax(v: &[f64]) -> usize {
    (0..v.len()).fold(0, |b, j| if v[j] > v[b] { j } else { b })
}

/// Each example's nearest prototype by cosine (no gradient: an index choice).
pub fn nearest(z: &Tensor<'_>, k: &Tensor<'_>, tasks: usize) -> Result<Vec<i64>> {
    let (z, k) = (z.to_vec()?, k.to_vec()?);
    if tasks == 0 || k.len() % tasks != 0 {
        return Err(ApiError::shape("pha: prototypes do not match num_tasks"));
    }
    let dim = k.len() / tasks;
    Ok(z.chunks(dim)
        .map(|zi| argmax(&k.chunks(dim).map(|ki| cosine(zi, ki)).collect::<Vec<_>>()) as i64)
        .collect())
}

/// The mean of `rows` and its cosine to each prototype (rows of `k`, width `dim`); the index of
/// the highest.
pub fn retrieve(rows: &[Vec<f32>], k: &[f32], dim: usize) -> Result<(usize, Vec<f64>)> {
    if rows.is_empty() {
        return Err(ApiError::invalid(
            "pha: retrieve needs at least one example",
        ));
    }
    let mut mean = vec![0f32; dim];
    for r in rows {
        if r.len() != dim {
            return Err(ApiError::shape(format!(
                "pha: retrieve: a z row has {} values, z_dim is {dim}",
                r.len()
            )));
        }
        for (m, v) in mean.iter_mut().zip(r) {
            *m += v / rows.len() as f32;
        }
    }
    let cosines: Vec<f64> = k.chunks(dim).map(|ki| cosine(&mean, ki)).collect();
    Ok((argmax(&cosines), cosines))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retrieval_picks_the_closest_prototype() {
        let k = [1.0, 0.0, 0.0, 1.0, -1.0, 0.0];
        let (picked, cos) = retrieve(&[vec![0.1, 0.9], vec![0.3, 0.7]], &k, 2).unwrap();
        assert_eq!(picked, 1);
        assert!((cos[0] - 0.2 / (0.2f64 * 0.2 + 0.8 * 0.8).sqrt()).abs() < 1e-6);
        assert!(cos[2] < 0.0);
        assert!(retrieve(&[], &k, 2).is_err());
        assert!(retrieve(&[vec![1.0]], &k, 2).is_err());
    }
}
