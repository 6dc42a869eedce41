//! What a normalization computes, independent of device and dtype.
//!
//! Every norm of this crate reduces to one [`Spec`]: `rows` rows of `len` contiguous
//! elements, each normalized over itself (BatchNorm: over all the rows of its
//! channel), with an affine parameter that changes every `inner` elements. The backends (`cpu`,
//! `cuda`, `generic`) work on a `Spec` alone; the public ops build one from checked
//! inputs. This module depends on nothing else in the crate.

/// Which norm a [`Spec`] describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Layer,
    /// LayerNorm over the channels of channels-first input.
    LayerFirst,
    Rms,
    Group,
    /// GroupNorm over channels-last input.
    GroupLast,
    Batch,
}

impl Kind {
    /// The plain op's name, which also names its kernels.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Layer => "layer_norm",
            Kind::LayerFirst => "layer_norm_channels_first",
            Kind::Rms => "rms_norm",
            Kind::Group => "group_norm",
            Kind::GroupLast => "group_norm_channels_last",
            Kind::Batch => "batch_norm",
        }
    }

    /// Whether the CUDA kernels implement this norm; on a GPU the others run the
    /// generic backend (`crate::backend::cuda_kernels_take`).
    pub(crate) fn has_cuda_kernels(self) -> bool {
        match self {
            Kind::Layer | Kind::Rms | Kind::Group | Kind::GroupLast | Kind::Batch => true,
            Kind::LayerFirst => false,
        }
    }
}

/// What follows the affine step, element by element, in the same pass: nothing, or
/// SiLU (GroupNorm + SiLU, the block of every diffusion UNet and VAE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Activation {
    /// y = z = x̂·γ + β.
    Identity,
    /// y = silu(z) = z·σ(z); the backward recomputes z from x, never storing it.
    Silu,
}

/// Which affine parameters a call has. Either may be absent: a missing weight acts as
/// ones and a missing bias as zeros, and neither gets a gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Affine {
    pub weight: bool,
    pub bias: bool,
}

/// The shape of a normalization.
///
/// LayerNorm/RMSNorm over [M, N]: `rows = M`, `len = N`, `inner = 1`,
/// `params_per_row = N`, `param_blocks = 1`. GroupNorm over [B, C, *S] with G groups:
/// `rows = B·G`, `len = (C/G)·S`, `inner = S`, `params_per_row = C/G`,
/// `param_blocks = G`.
/// Channels-last GroupNorm over [B, *S, C]: the same numbers as channels-first (the
/// rows are the (sample, group) pairs, though not contiguous).
/// Channels-first LayerNorm over [B, C, *S]: `rows = B·S` columns of `len = C`
/// elements S apart (`inner = S`, the stride), `params_per_row = C`, `param_blocks = 1`.
/// BatchNorm over [B, C, *S]: `rows = B·C`, `len = S`, `inner = S`,
/// `params_per_row = 1`, `param_blocks = C`, with statistics per channel, not per row.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spec {
    pub kind: Kind,
    pub rows: usize,
    pub len: usize,
    /// Consecutive elements of a row that share one affine parameter.
    pub inner: usize,
    pub params_per_row: usize,
    /// Rows cycle through this many blocks of `params_per_row` parameters.
    pub param_blocks: usize,
    pub eps: f64,
    /// The norm is of `h = x + residual` (rounded to the element type), which the
    /// forward returns beside y; the backward adds the gradient reaching h directly.
    pub residual: bool,
    /// Applied to x̂·γ + β before y is rounded.
    pub act: Activation,
    /// The public function's name, used in custom-op names and errors.
    pub op: &'static str,
}

impl Spec {
    /// A norm over the last dimension of `dims` (at least one dimension).
    pub(crate) fn last_dim(kind: Kind, dims: &[usize], eps: f64) -> Self {
        let (len, rest) = dims.split_last().map_or((0, &[][..]), |(&n, rest)| (n, rest));
        Self {
            kind,
            rows: rest.iter().product(),
            len,
            inner: 1,
            params_per_row: len,
            param_blocks: 1,
            eps,
            residual: false,
            act: Activation::Identity,
            op: kind.name(),
        }
    }

    /// GroupNorm over channels-first `dims` = [B, C, *spatial], with `groups` dividing C.
    pub(crate) fn group(dims: &[usize], groups: usize, eps: f64) -> Self {
        let (b, c) = (dims[0], dims[1]);
        let inner: usize = dims[2..].iter().product();
        let params_per_row = c / groups;
        Self {
            kind: Kind::Group,
            rows: b * groups,
            len: params_per_row * inner,
            inner,
            params_per_row,
            param_blocks: groups,
            eps,
            residual: false,
            act: Activation::Identity,
            op: Kind::Group.name(),
        }
    }

    /// GroupNorm over channels-last `dims` = [B, *spatial, C], with `groups` dividing
    /// C: as [`Self::group`], each (sample, group) being the columns of its
    /// group in the sample's S × C matrix.
    pub(crate) fn group_last(dims: &[usize], groups: usize, eps: f64) -> Self {
        let (b, c) = (dims[0], dims[dims.len() - 1]);
        let s: usize = dims[1..dims.len() - 1].iter().product();
        Self {
            kind: Kind::GroupLast,
            op: Kind::GroupLast.name(),
            ..Self::group(&[b, c, s], groups, eps)
        }
    }

    /// LayerNorm over the channels of channels-first `dims` = [B, C, *spatial]: each
    /// of the B·S positions normalized over its C channels.
    pub(crate) fn layer_first(dims: &[usize], eps: f64) -> Self {
        let (b, c) = (dims[0], dims[1]);
        let s: usize = dims[2..].iter().product();
        Self {
            kind: Kind::LayerFirst,
            rows: b * s,
            len: c,
            inner: s,
            params_per_row: c,
            param_blocks: 1,
            eps,
            residual: false,
            act: Activation::Identity,
            op: Kind::LayerFirst.name(),
        }
    }

    /// The same norm of `x + residual`: the fused residual add.
    pub(crate) fn with_residual(self) -> Self {
        let op = match self.kind {
            Kind::Layer => "add_layer_norm",
            Kind::Rms => "add_rms_norm",
            Kind::LayerFirst | Kind::Group | Kind::GroupLast | Kind::Batch => self.op,
        };
        Self {
            residual: true,
            op,
            ..self
        }
    }

    /// The same norm followed by SiLU, under the public name `op`.
    pub(crate) fn with_silu(self, op: &'static str) -> Self {
        Self {
            act: Activation::Silu,
            op,
            ..self
        }
    }

    /// The same norm under another public name (InstanceNorm is GroupNorm).
    pub(crate) fn named(self, op: &'static str) -> Self {
        Self { op, ..self }
    }

    /// The public function's name, used in custom-op names and errors.
    pub(crate) fn name(&self) -> &'static str {
        self.op
    }

    /// Elements of the forward's output: y, then h with a residual.
    pub(crate) fn outputs(&self) -> usize {
        self.rows * self.len * (1 + usize::from(self.residual))
    }

    /// BatchNorm over channels-first `dims` = [B, C, *spatial]: one row per (sample,
    /// channel), of its S spatial elements and that channel's parameter; row r is
    /// channel r mod C, whose statistics gather all its rows.
    pub(crate) fn batch(dims: &[usize], eps: f64) -> Self {
        let (b, c) = (dims[0], dims[1]);
        let s: usize = dims[2..].iter().product();
        Self {
            kind: Kind::Batch,
            rows: b * c,
            len: s,
            inner: s,
            params_per_row: 1,
            param_blocks: c,
            eps,
            residual: false,
            act: Activation::Identity,
            op: Kind::Batch.name(),
        }
    }

    /// LayerNorm subtracts the mean (GroupNorm too); RMSNorm does not.
    pub(crate) fn center(&self) -> bool {
        self.kind != Kind::Rms
    }

    /// Length of the weight and bias (N, or C for GroupNorm).
    pub(crate) fn params(&self) -> usize {
        self.param_blocks * self.params_per_row
    }

    /// Index of the first parameter used by `row`.
    pub(crate) fn param_offset(&self, row: usize) -> usize {
        (row % self.param_blocks) * self.params_per_row
    }

    /// Index of the parameter of element `i` of `row`.
    pub(crate) fn param(&self, row: usize, i: usize) -> usize {
        self.param_offset(row) + i / self.inner
    }

    /// Elements of the fused backward's parameter gradients: dγ with a weight, then dβ
    /// with a bias.
    pub(crate) fn param_grads(&self, affine: Affine) -> usize {
        self.params() * (usize::from(affine.weight) + usize::from(affine.bias))
    }
}
