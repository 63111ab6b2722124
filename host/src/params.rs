//! Every parameter lives here, named and grouped: backbone weights under their HF keys (group
//! `backbone`), module parameters as `<module>.<local name>`. Training, freezing, priming and
//! saving all select by group.
use std::collections::BTreeMap;

/// A tensor of the inner (non-autodiff) backend: gradients and optimiser state.
pub type InnerPrim<B> =
    burn::tensor::ops::FloatTensor<<B as burn::tensor::backend::AutodiffBackend>::InnerBackend>;

use burn::tensor::{backend::AutodiffBackend, Tensor, TensorData};
use peft_api::{ApiError, Init};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

use crate::by_rank;
use crate::nn::value::{fp, ft, FloatPrim};

pub struct Param<B: AutodiffBackend> {
    pub name: String,
    pub group: String,
    /// `backbone` or the module instance that created it.
    pub owner: String,
    pub shape: Vec<usize>,
    pub value: FloatPrim<B>,
    pub trainable: bool,
}

impl<B: AutodiffBackend> Param<B> {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

pub struct ParamStore<B: AutodiffBackend> {
    params: Vec<Param<B>>,
    index: BTreeMap<String, usize>,
    pub device: B::Device,
    rng: StdRng,
}

impl<B: AutodiffBackend> ParamStore<B> {
    pub fn new(device: B::Device, seed: u64) -> Self {
        ParamStore {
            params: Vec::new(),
            index: BTreeMap::new(),
            device,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }

    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Param<B>> {
        self.params.iter()
    }

    pub fn get(&self, name: &str) -> Option<&Param<B>> {
        self.index.get(name).map(|&i| &self.params[i])
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The tensor of a parameter, tracked by autodiff when trainable.
    pub fn value(&self, name: &str) -> Result<FloatPrim<B>, ApiError> {
        self.get(name).map(|p| p.value.clone()).ok_or_else(|| {
            ApiError::new(
                peft_api::ErrorKind::NOT_FOUND,
                format!("no parameter named `{name}`"),
            )
        })
    }

    pub fn tensor<const D: usize>(&self, name: &str) -> Result<Tensor<B, D>, ApiError> {
        let v = self.value(name)?;
        let t = ft::<B, D>(v);
        if t.dims().len() != D {
            return Err(ApiError::shape(format!(
                "parameter `{name}` has rank {}, expected {D}",
                t.dims().len()
            )));
        }
        Ok(t)
    }

    /// Adds a parameter with a given value (frozen until [`ParamStore::set_trainable`]).
    pub fn insert(
        &mut self,
        name: &str,
        group: &str,
        owner: &str,
        value: FloatPrim<B>,
    ) -> Result<(), ApiError> {
        if self.index.contains_key(name) {
            return Err(ApiError::invalid(format!(
                "parameter `{name}` already exists"
            )));
        }
        use burn::tensor::TensorMetadata;
        let shape = value.shape().to_vec();
        self.index.insert(name.to_string(), self.params.len());
        self.params.push(Param {
            name: name.to_string(),
            group: group.to_string(),
            owner: owner.to_string(),
            shape,
            value,
            trainable: false,
        });
        Ok(())
    }

    /// Creates a parameter from an initialiser, drawing from the store's seeded generator so
    /// that the same seed gives the same weights on every backend.
    pub fn create(
        &mut self,
        name: &str,
        group: &str,
        owner: &str,
        shape: &[usize],
        init: &Init,
    ) -> Result<FloatPrim<B>, ApiError> {
        let values = init_values(&mut self.rng, shape, init)?;
        let prim = from_values::<B>(shape, values, &self.device)?;
        self.insert(name, group, owner, prim.clone())?;
        Ok(prim)
    }

    /// A task head's projection `<prefix>.weight` `[outputs, features]` (Kaiming uniform) and
    /// `<prefix>.bias` (zeros) in group `head`; one that already exists with the same shape is
    /// kept (the shared option head, a head built with the model).
    pub fn create_head_linear(
        &mut self,
        prefix: &str,
        outputs: usize,
        features: usize,
    ) -> anyhow::Result<()> {
        let (w, b) = (format!("{prefix}.weight"), format!("{prefix}.bias"));
        let shape = [outputs, features];
        if let Some(p) = self.get(&w) {
            anyhow::ensure!(
                p.shape == shape,
                "head `{w}` exists with shape {:?}, this task needs {shape:?}",
                p.shape
            );
            return Ok(());
        }
        self.create(&w, "head", "head", &shape, &Init::KaimingUniform)?;
        self.create(&b, "head", "head", &shape[..1], &Init::Zeros)?;
        Ok(())
    }

    /// Replaces a parameter's value (outside the autodiff graph), keeping its trainability.
    pub fn assign(&mut self, name: &str, value: FloatPrim<B>) -> Result<(), ApiError> {
        use burn::tensor::TensorMetadata;
        let i = *self
            .index
            .get(name)
            .ok_or_else(|| ApiError::invalid(format!("no parameter named `{name}`")))?;
        let p = &mut self.params[i];
        let shape = value.shape().to_vec();
        if shape != p.shape {
            return Err(ApiError::shape(format!(
                "parameter `{name}` has shape {:?}, got {:?}",
                p.shape, shape
            )));
        }
        p.value = mark::<B>(value, p.trainable)?;
        Ok(())
    }

    /// Makes exactly the parameters in `groups` (plus the extra names) trainable; the others are
    /// detached, so autodiff neither tracks nor computes their gradients.
    pub fn set_trainable(&mut self, groups: &[String], extra: &[String]) -> Result<(), ApiError> {
        for p in &mut self.params {
            p.trainable =
                groups.iter().any(|g| g == &p.group) || extra.iter().any(|n| n == &p.name);
            p.value = mark::<B>(p.value.clone(), p.trainable)?;
        }
        Ok(())
    }

    /// Parameter counts per group: (total, trainable).
    pub fn counts_by_group(&self) -> BTreeMap<String, (usize, usize)> {
        let mut m: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for p in &self.params {
            let e = m.entry(p.group.clone()).or_default();
            e.0 += p.numel();
            if p.trainable {
                e.1 += p.numel();
            }
        }
        m
    }

    /// Parameter counts per owner.
    pub fn counts_by_owner(&self) -> BTreeMap<String, usize> {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for p in &self.params {
            *m.entry(p.owner.clone()).or_default() += p.numel();
        }
        m
    }

    pub fn trainable(&self) -> impl Iterator<Item = &Param<B>> {
        self.params.iter().filter(|p| p.trainable)
    }

    pub fn trainable_mut(&mut self) -> impl Iterator<Item = &mut Param<B>> {
        self.params.iter_mut().filter(|p| p.trainable)
    }
}

fn mark<B: AutodiffBackend>(
    value: FloatPrim<B>,
    trainable: bool,
) -> Result<FloatPrim<B>, ApiError> {
    use burn::tensor::TensorMetadata;
    let rank = value.shape().num_dims();
    by_rank!(rank, |D| {
        let t = ft::<B, D>(value).detach();
        // What trains is f32: a weight held in bf16 (a bf16 backbone's) is widened first.
        Ok(fp(if trainable {
            crate::nn::bf16::to_f32(t).require_grad()
        } else {
            t
        }))
    })
}

pub fn from_values<B: AutodiffBackend>(
    shape: &[usize],
    values: Vec<f32>,
    device: &B::Device,
) -> Result<FloatPrim<B>, ApiError> {
    let n: usize = shape.iter().product();
    if values.len() != n {
        return Err(ApiError::shape(format!(
            "{} values for shape {:?} ({} elements)",
            values.len(),
            shape,
            n
        )));
    }
    let data = TensorData::new(values, shape.to_vec());
    by_rank!(shape.len(), |D| Ok(fp(Tensor::<B, D>::from_data(
        data, device
    ))))
}

/// Draws initial values; PyTorch's conventions for fan-in (`[out, in]` weights).
pub fn init_values(rng: &mut StdRng, shape: &[usize], init: &Init) -> Result<Vec<f32>, ApiError> {
    let n: usize = shape.iter().product();
    let fan_in = if shape.len() >= 2 {
        shape[1..].iter().product::<usize>()
    } else {
        shape.first().copied().unwrap_or(1)
    };
    let fan_out = shape.first().copied().unwrap_or(1);
    let uniform = |rng: &mut StdRng, a: f64| {
        (0..n)
            .map(|_| rng.random_range(-a..=a) as f32)
            .collect::<Vec<_>>()
    };
    Ok(match init {
        Init::Zeros => vec![0.0; n],
        Init::Ones => vec![1.0; n],
        Init::Constant { value } => vec![*value as f32; n],
        Init::Normal { mean, std } => {
            if *std == 0.0 {
                vec![*mean as f32; n]
            } else {
                let d = Normal::new(*mean, *std)
                    .map_err(|e| ApiError::invalid(format!("normal init: {e}")))?;
                (0..n).map(|_| d.sample(rng) as f32).collect()
            }
        }
        Init::Uniform { low, high } => {
            if low > high {
                return Err(ApiError::invalid(format!(
                    "uniform init: low {low} > high {high}"
                )));
            }
            (0..n)
                .map(|_| rng.random_range(*low..=*high) as f32)
                .collect()
        }
        Init::KaimingUniform => uniform(rng, 1.0 / (fan_in as f64).sqrt()),
        Init::XavierUniform => uniform(rng, (6.0 / (fan_in + fan_out) as f64).sqrt()),
        Init::Data { values } => {
            if values.len() != n {
                return Err(ApiError::shape(format!(
                    "init data has {} values, shape {:?} needs {n}",
                    values.len(),
                    shape
                )));
            }
            values.clone()
        }
    })
}
