//! The small CNN every variant of the CNN comparison trains: two 3×3 convolutions (16
//! and 32 channels), each followed by the variant's norm, ReLU and 2×2 max pooling,
//! then a linear classifier. Only the norm (and, for the weight-side norms, the
//! convolution) changes.

use crate::train::Classifier;
use candle_core::{ModuleT, Result, Tensor};
use candle_nn::{conv2d, linear, Conv2d, Conv2dConfig, Linear, Module, VarBuilder};
use candle_norm::nn::{
    batch_norm, group_norm, instance_norm, pytorch, weight_norm_conv2d, ws_conv2d, BatchNorm, GroupNorm, InstanceNorm,
    InstanceNormConfig, RmsNorm, WeightNorm, WsConv2d,
};

const CHANNELS: [usize; 2] = [16, 32];
/// Groups of the GroupNorm variants (4 and 8 channels a group).
const GROUPS: usize = 4;
const EPS: f64 = 1e-5;

/// What normalizes the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Variant {
    /// No norm.
    None,
    /// BatchNorm after each convolution.
    Batch,
    /// GroupNorm, 4 groups.
    Group,
    /// LayerNorm over (C, H, W) of each image: GroupNorm with one group.
    Layer,
    /// RMSNorm over (C, H, W) of each image, as `nn.RMSNorm([C, H, W])` (a weight per
    /// element).
    Rms,
    /// InstanceNorm, affine.
    Instance,
    /// Weight-standardized convolutions followed by GroupNorm.
    WsGroup,
    /// Weight-normalized convolutions, no activation norm.
    WeightNorm,
}

impl Variant {
    pub const ALL: [Variant; 8] = [
        Variant::None,
        Variant::Batch,
        Variant::Group,
        Variant::Layer,
        Variant::Rms,
        Variant::Instance,
        Variant::WsGroup,
        Variant::WeightNorm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::None => "none",
            Variant::Batch => "batch",
            Variant::Group => "group",
            Variant::Layer => "layer",
            Variant::Rms => "rms",
            Variant::Instance => "instance",
            Variant::WsGroup => "ws+group",
            Variant::WeightNorm => "weight-norm",
        }
    }
}

enum Conv {
    Plain(Conv2d),
    Standardized(WsConv2d),
    WeightNormed(WeightNorm<Conv2d>),
}

enum Norm {
    Identity,
    Batch(BatchNorm),
    Group(GroupNorm),
    Instance(InstanceNorm),
    Rms(RmsNorm),
}

impl Conv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Conv::Plain(c) => c.forward(x),
            Conv::Standardized(c) => c.forward(x),
            Conv::WeightNormed(c) => c.forward(x),
        }
    }
}

impl Norm {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Norm::Identity => Ok(x.clone()),
            Norm::Batch(n) => n.forward_t(x, train),
            Norm::Group(n) => n.forward(x),
            Norm::Instance(n) => n.forward(x),
            Norm::Rms(n) => n.forward(x),
        }
    }
}

/// The network. Its variables live in the `VarMap` of `vb`, under `conv{1,2}.*`,
/// `norm{1,2}.*` and `head.*`.
pub struct Net {
    layers: Vec<(Conv, Norm)>,
    head: Linear,
}

impl Net {
    pub fn new(variant: Variant, vb: VarBuilder) -> Result<Self> {
        let config = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let mut layers = Vec::new();
        let (mut c_in, mut side) = (1, super::data::SIDE);
        for (i, &c) in CHANNELS.iter().enumerate() {
            let (cv, nv) = (vb.pp(format!("conv{}", i + 1)), vb.pp(format!("norm{}", i + 1)));
            let conv = match variant {
                Variant::WsGroup => Conv::Standardized(ws_conv2d(c_in, c, 3, config, cv)?),
                Variant::WeightNorm => Conv::WeightNormed(weight_norm_conv2d(c_in, c, 3, config, cv)?),
                _ => Conv::Plain(conv2d(c_in, c, 3, config, cv)?),
            };
            let norm = match variant {
                Variant::None | Variant::WeightNorm => Norm::Identity,
                Variant::Batch => Norm::Batch(batch_norm(c, EPS, nv)?),
                Variant::Group | Variant::WsGroup => Norm::Group(group_norm(GROUPS, c, EPS, nv)?),
                Variant::Layer => Norm::Group(group_norm(1, c, EPS, nv)?),
                Variant::Rms => Norm::Rms(pytorch::rms_norm(
                    &[c, side, side],
                    pytorch::RmsNormConfig {
                        eps: Some(EPS),
                        ..Default::default()
                    },
                    nv,
                )?),
                Variant::Instance => {
                    Norm::Instance(instance_norm(c, InstanceNormConfig { eps: EPS, affine: true }, nv)?)
                }
            };
            layers.push((conv, norm));
            (c_in, side) = (c, side / 2);
        }
        let head = linear(c_in * side * side, 10, vb.pp("head"))?;
        Ok(Self { layers, head })
    }
}

impl Classifier for Net {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = x.clone();
        for (conv, norm) in &self.layers {
            x = norm.forward_t(&conv.forward(&x)?, train)?.relu()?.max_pool2d(2)?;
        }
        self.head.forward(&x.flatten_from(1)?)
    }
}
