//! The MLPs of the two classic experiments: fully connected layers, each hidden one
//! followed by the variant's norm and the activation (the norm before the
//! nonlinearity, as Ioffe and Szegedy placed BatchNorm). Variables live under `fc{i}`,
//! `norm{i}` and `head`, so that `train::init` gives every variant the same weights.

use crate::train::Classifier;
use candle_core::{ModuleT, Result, Tensor};
use candle_nn::{linear, Linear, Module, VarBuilder};
use candle_norm::nn::{batch_norm, group_norm, layer_norm, rms_norm, BatchNorm, GroupNorm, LayerNorm, RmsNorm};

const EPS: f64 = 1e-5;
/// Groups of the GroupNorm variant.
const GROUPS: usize = 4;

/// What normalizes an MLP's hidden layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MlpNorm {
    None,
    Batch,
    Layer,
    Rms,
    /// GroupNorm with 4 groups of features.
    Group,
}

impl MlpNorm {
    pub fn name(self) -> &'static str {
        match self {
            MlpNorm::None => "none",
            MlpNorm::Batch => "batch",
            MlpNorm::Layer => "layer",
            MlpNorm::Rms => "rms",
            MlpNorm::Group => "group",
        }
    }
}

/// The hidden layers' nonlinearity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    Sigmoid,
    Relu,
}

enum Norm {
    Identity,
    Batch(BatchNorm),
    Layer(LayerNorm),
    Rms(RmsNorm),
    Group(GroupNorm),
}

impl Norm {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Norm::Identity => Ok(x.clone()),
            Norm::Batch(n) => n.forward_t(x, train),
            Norm::Layer(n) => n.forward(x),
            Norm::Rms(n) => n.forward(x),
            Norm::Group(n) => n.forward(x),
        }
    }
}

/// An MLP `sizes[0] → … → sizes[last]`.
pub struct Mlp {
    hidden: Vec<(Linear, Norm)>,
    head: Linear,
    act: Act,
}

impl Mlp {
    pub fn new(sizes: &[usize], act: Act, norm: MlpNorm, vb: VarBuilder) -> Result<Self> {
        let n = sizes.len();
        let mut hidden = Vec::new();
        for (i, w) in sizes[..n - 1].windows(2).enumerate() {
            let (fc, nv) = (
                linear(w[0], w[1], vb.pp(format!("fc{}", i + 1)))?,
                vb.pp(format!("norm{}", i + 1)),
            );
            let norm = match norm {
                MlpNorm::None => Norm::Identity,
                MlpNorm::Batch => Norm::Batch(batch_norm(w[1], EPS, nv)?),
                MlpNorm::Layer => Norm::Layer(layer_norm(w[1], EPS, nv)?),
                MlpNorm::Rms => Norm::Rms(rms_norm(w[1], EPS, nv)?),
                MlpNorm::Group => Norm::Group(group_norm(GROUPS, w[1], EPS, nv)?),
            };
            hidden.push((fc, norm));
        }
        let head = linear(sizes[n - 2], sizes[n - 1], vb.pp("head"))?;
        Ok(Self { hidden, head, act })
    }

    /// The logits and each hidden layer's activations (after the nonlinearity).
    pub fn forward_all(&self, x: &Tensor, train: bool) -> Result<(Tensor, Vec<Tensor>)> {
        let mut h = x.flatten_from(1)?;
        let mut acts = Vec::new();
        for (fc, norm) in &self.hidden {
            let z = norm.forward_t(&fc.forward(&h)?, train)?;
            h = match self.act {
                Act::Sigmoid => candle_nn::ops::sigmoid(&z)?,
                Act::Relu => z.relu()?,
            };
            acts.push(h.clone());
        }
        Ok((self.head.forward(&h)?, acts))
    }
}

impl Classifier for Mlp {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self.forward_all(x, train)?.0)
    }
}
