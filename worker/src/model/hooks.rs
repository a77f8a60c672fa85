//! Interventions: per-variant replacement of head outputs and MLP outputs, and per-variant
//! ablation of edges (see `edges.rs`), batched so that many variants run in one forward pass.

use candle_core::{DType, Device, Tensor};
use circuit_sweep_common::Component;
use circuit_sweep_common::edge::{Edge, Receiver, Sender};

use super::activations::Activations;
use super::edges::{EdgeState, ReceiverInput};
use super::{Blocks, Capture, Captured, KvCache, ModelError, ModelInfo};

/// Variants of a forward pass: in variant `v` the components `variants[v]` are replaced by
/// their values in `values` and the edges `edges[v]` are ablated; all others run as usual.
#[derive(Debug, Clone)]
pub struct Interventions<'a> {
    /// Replacement activations.
    pub values: &'a Activations,
    /// Components replaced in each variant (an empty set is the unablated model).
    pub variants: Vec<Vec<Component>>,
    /// Edges ablated in each variant: empty, or one set per variant.
    pub edges: Vec<Vec<Edge>>,
    /// Receivers whose input is replaced by the given residual stream (`[1 | prompts,
    /// positions, d_model]`) in every variant: path patching by hand, and the reference path
    /// of tests.
    pub inputs: Vec<(Receiver, Tensor)>,
    /// The unpatched run's activations (as from [`Activations::from_captured`]): what senders
    /// below a cached start layer wrote. Needed when edges start below the start layer.
    pub cached: Option<&'a Activations>,
    /// Edges are ablated at these positions only (every position when `None`).
    pub positions: Option<Vec<usize>>,
    /// Per variant (empty, or one list per variant): receivers whose input is the residual
    /// stream minus the given delta (`[prompts, positions, d_model]`): path patching, where a
    /// receiver's input comes from another run.
    pub deltas: Vec<Vec<(Receiver, Tensor)>>,
    /// Key and value receivers of edges are per query head (else per key/value head).
    pub kv_per_query: bool,
}

impl<'a> Interventions<'a> {
    /// Node replacements only.
    pub fn nodes(values: &'a Activations, variants: Vec<Vec<Component>>) -> Self {
        Interventions {
            values,
            variants,
            edges: vec![],
            inputs: vec![],
            cached: None,
            positions: None,
            deltas: vec![],
            kv_per_query: true,
        }
    }
}

/// Hook points a block calls; the driver implements them.
pub(crate) trait LayerHooks {
    /// Head outputs `[B, T, n_heads, d_head]` of `layer`; returns what the block continues with.
    fn z(&mut self, layer: usize, z: Tensor) -> Result<Tensor, ModelError>;
    /// MLP output `[B, T, d_model]` of `layer`; returns what is added to the residual stream.
    fn mlp(&mut self, layer: usize, m: Tensor) -> Result<Tensor, ModelError>;
    /// The attention receivers of `layer` whose input differs from the block input `x`.
    fn attn_inputs(&mut self, layer: usize, x: &Tensor) -> Result<Vec<ReceiverInput>, ModelError>;
    /// The input of the MLP of `layer`, given the residual stream `x` it would read.
    fn mlp_input(&mut self, layer: usize, x: &Tensor) -> Result<Tensor, ModelError>;
    /// Whether every variant replaces the MLP output of `layer` (it need not be computed).
    fn mlp_replaced(&self, layer: usize) -> bool;
    /// Whether every variant replaces every head output of `layer`, and nothing else reads the
    /// attention (a KV cache, a captured pattern): its keys, queries and values need not be
    /// computed.
    fn heads_replaced(&self, layer: usize) -> bool;
    /// Keys and values of the input's positions `[B, H_kv, T, d]`; returns those of every
    /// position (joined with a KV cache).
    fn kv(&mut self, layer: usize, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor), ModelError>;
    /// The attention pattern `[B, H, T_q, T]` of `layer`.
    fn pattern(&mut self, layer: usize, probs: &Tensor) -> Result<(), ModelError>;
}

/// Per-layer masks built from the variants: `keep` is 1 where the model's own activation is
/// kept, `put` 1 where the replacement goes. Layers no variant touches have none (no work).
struct LayerMask {
    keep: Tensor,
    put: Tensor,
    /// Every variant puts the replacement.
    all: bool,
}

/// The driver's hooks: applies interventions, then captures.
pub(crate) struct RunHooks<'a> {
    n_variants: usize,
    /// Rows per variant.
    prompts: usize,
    values: Option<&'a Activations>,
    z_masks: Vec<Option<LayerMask>>,
    mlp_masks: Vec<Option<LayerMask>>,
    edges: Option<EdgeState<'a>>,
    cache: Option<&'a KvCache>,
    capture: Capture,
    pub(crate) captured: Captured,
}

impl<'a> RunHooks<'a> {
    /// Builds masks for `interventions` on a model of shape `info`, starting at `start_layer`
    /// with `prompts` sequences of `seq_len` positions.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        info: &ModelInfo,
        blocks: &'a dyn Blocks,
        interventions: Option<&Interventions<'a>>,
        start_layer: usize,
        (prompts, seq_len): (usize, usize),
        capture: Capture,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let n_layers = info.n_layers;
        let mut z_masks: Vec<Option<LayerMask>> = (0..n_layers).map(|_| None).collect();
        let mut mlp_masks: Vec<Option<LayerMask>> = (0..n_layers).map(|_| None).collect();
        let (n_variants, values) = match interventions {
            None => (1, None),
            Some(iv) => {
                let v = iv.variants.len();
                if v == 0 {
                    return Err(ModelError::InvalidRequest(
                        "interventions with no variants".into(),
                    ));
                }
                check_values(info, iv.values)?;
                let mut head_put = vec![vec![0f32; v * info.n_heads]; n_layers];
                let mut mlp_put = vec![vec![0f32; v]; n_layers];
                let mut head_used = vec![false; n_layers];
                let mut mlp_used = vec![false; n_layers];
                for (vi, comps) in iv.variants.iter().enumerate() {
                    for c in comps {
                        c.check(n_layers, info.n_heads)
                            .map_err(|e| ModelError::InvalidRequest(e.to_string()))?;
                        if c.layer() < start_layer {
                            return Err(ModelError::InvalidRequest(format!(
                                "variant {vi} replaces {c}, below the start layer {start_layer}: \
                                 start from an earlier cached residual stream"
                            )));
                        }
                        match *c {
                            Component::Head { layer, head } => {
                                head_put[layer][vi * info.n_heads + head] = 1.0;
                                head_used[layer] = true;
                            }
                            Component::Mlp { layer } => {
                                mlp_put[layer][vi] = 1.0;
                                mlp_used[layer] = true;
                            }
                        }
                    }
                }
                let build = |put: Vec<f32>, shape: &[usize]| -> candle_core::Result<LayerMask> {
                    let keep: Vec<f32> = put.iter().map(|p| 1.0 - p).collect();
                    Ok(LayerMask {
                        all: put.iter().all(|&p| p == 1.0),
                        keep: Tensor::from_vec(keep, shape, device)?.to_dtype(dtype)?,
                        put: Tensor::from_vec(put, shape, device)?.to_dtype(dtype)?,
                    })
                };
                for l in 0..n_layers {
                    if head_used[l] {
                        let put = std::mem::take(&mut head_put[l]);
                        z_masks[l] = Some(build(put, &[v, 1, 1, info.n_heads, 1])?);
                    }
                    if mlp_used[l] {
                        let put = std::mem::take(&mut mlp_put[l]);
                        mlp_masks[l] = Some(build(put, &[v, 1, 1, 1])?);
                    }
                }
                (v, Some(iv.values))
            }
        };
        let edges = match interventions {
            Some(iv) if !iv.edges.is_empty() || !iv.inputs.is_empty() || !iv.deltas.is_empty() => {
                if !iv.edges.is_empty() && iv.edges.len() != n_variants {
                    return Err(ModelError::InvalidRequest(format!(
                        "{} edge sets for {n_variants} variants",
                        iv.edges.len()
                    )));
                }
                let none = vec![vec![]; n_variants];
                let sets = if iv.edges.is_empty() {
                    &none
                } else {
                    &iv.edges
                };
                Some(EdgeState::new(
                    info,
                    blocks,
                    iv,
                    sets,
                    start_layer,
                    (prompts, seq_len),
                    device,
                )?)
            }
            _ => None,
        };
        Ok(RunHooks {
            n_variants,
            prompts,
            values,
            z_masks,
            mlp_masks,
            edges,
            cache: None,
            capture,
            captured: Captured {
                resid: vec![None; n_layers],
                z: vec![None; n_layers],
                mlp: vec![None; n_layers],
                mlp_in: vec![None; n_layers],
                final_resid_post: None,
                pattern: vec![None; n_layers],
                variant_resid: vec![],
            },
        })
    }

    /// Records the embedding written in this pass (a pass from the tokens).
    pub(crate) fn embedded(&mut self, x: &Tensor) -> Result<(), ModelError> {
        match &mut self.edges {
            Some(e) => e.written(Sender::Embed, x),
            None => Ok(()),
        }
    }

    /// What the final norm reads, given the final block's output.
    pub(crate) fn logits_input(
        &mut self,
        n_layers: usize,
        x: Tensor,
    ) -> Result<Tensor, ModelError> {
        if self.capture.mlp_in {
            self.captured.final_resid_post = Some(x.clone());
        }
        match &self.edges {
            Some(e) => e.stream_input(n_layers, &x),
            None => Ok(x),
        }
    }

    /// Extends `cache` with this pass's keys and values.
    pub(crate) fn set_cache(&mut self, cache: &'a KvCache) {
        self.cache = Some(cache);
    }

    /// Number of variants (rows of the batch are `variants * prompts`).
    pub(crate) fn n_variants(&self) -> usize {
        self.n_variants
    }

    /// `x * keep + value * put`, with rows split as `[variants, prompts, ...]`. Written this way
    /// (not `x + (value - x) * put`) so a replaced activation equals its value bit for bit.
    /// In a staggered pass the rows are those of the first variants (those running so far).
    fn apply(&self, x: Tensor, mask: &LayerMask, value: &Tensor) -> Result<Tensor, ModelError> {
        let dims = x.dims().to_vec();
        let p = self.prompts;
        let v = dims[0] / p;
        let (keep, put) = if v < self.n_variants {
            (mask.keep.narrow(0, 0, v)?, mask.put.narrow(0, 0, v)?)
        } else {
            (mask.keep.clone(), mask.put.clone())
        };
        let mut split = vec![v, p];
        split.extend_from_slice(&dims[1..]);
        let x5 = x.reshape(split.as_slice())?;
        // A block computing only the trailing positions gets the trailing values.
        let (t_val, t_x) = (value.dim(1)?, dims[1]);
        let value = if t_x < t_val {
            value.narrow(1, t_val - t_x, t_x)?
        } else {
            value.clone()
        };
        let val = value.unsqueeze(0)?;
        let out = x5
            .broadcast_mul(&keep)?
            .broadcast_add(&val.broadcast_mul(&put)?)?;
        Ok(out.reshape(dims.as_slice())?)
    }
}

/// Checks that replacement values have the model's shape, naming the first mismatch.
fn check_values(info: &ModelInfo, values: &Activations) -> Result<(), ModelError> {
    if values.z.len() != info.n_layers || values.mlp.len() != info.n_layers {
        return Err(ModelError::InvalidRequest(format!(
            "ablation values cover {} z layers and {} mlp layers, the model has {}",
            values.z.len(),
            values.mlp.len(),
            info.n_layers
        )));
    }
    for (l, z) in values.z.iter().enumerate() {
        let d = z.dims();
        if d.len() != 4 || d[2] != info.n_heads || d[3] != info.d_head {
            return Err(ModelError::InvalidRequest(format!(
                "ablation value z[{l}] has shape {d:?}, expected [1|prompts, positions, {}, {}]",
                info.n_heads, info.d_head
            )));
        }
    }
    for (l, m) in values.mlp.iter().enumerate() {
        let d = m.dims();
        if d.len() != 3 || d[2] != info.d_model {
            return Err(ModelError::InvalidRequest(format!(
                "ablation value mlp[{l}] has shape {d:?}, expected [1|prompts, positions, {}]",
                info.d_model
            )));
        }
    }
    Ok(())
}

impl LayerHooks for RunHooks<'_> {
    fn z(&mut self, layer: usize, z: Tensor) -> Result<Tensor, ModelError> {
        let z = match (&self.z_masks[layer], self.values) {
            (Some(mask), Some(values)) => self.apply(z, mask, &values.z[layer])?,
            _ => z,
        };
        if self.capture.z {
            self.captured.z[layer] = Some(z.clone());
        }
        if let Some(e) = &mut self.edges {
            e.written_heads(layer, &z)?;
        }
        Ok(z)
    }

    fn mlp(&mut self, layer: usize, m: Tensor) -> Result<Tensor, ModelError> {
        let m = match (&self.mlp_masks[layer], self.values) {
            (Some(mask), Some(values)) => self.apply(m, mask, &values.mlp[layer])?,
            _ => m,
        };
        if self.capture.mlp {
            self.captured.mlp[layer] = Some(m.clone());
        }
        if let Some(e) = &mut self.edges {
            e.written(Sender::Node(Component::Mlp { layer }), &m)?;
        }
        Ok(m)
    }

    fn attn_inputs(&mut self, layer: usize, x: &Tensor) -> Result<Vec<ReceiverInput>, ModelError> {
        match &self.edges {
            Some(e) => e.attn_inputs(layer, x),
            None => Ok(vec![]),
        }
    }

    fn mlp_input(&mut self, layer: usize, x: &Tensor) -> Result<Tensor, ModelError> {
        if self.capture.mlp_in {
            self.captured.mlp_in[layer] = Some(x.clone());
        }
        match &self.edges {
            Some(e) => e.stream_input(layer, x),
            None => Ok(x.clone()),
        }
    }

    fn mlp_replaced(&self, layer: usize) -> bool {
        self.values.is_some() && self.mlp_masks[layer].as_ref().is_some_and(|m| m.all)
    }

    fn heads_replaced(&self, layer: usize) -> bool {
        self.values.is_some()
            && self.cache.is_none()
            && !self.capture.pattern
            && self.z_masks[layer].as_ref().is_some_and(|m| m.all)
    }

    fn kv(&mut self, layer: usize, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor), ModelError> {
        match self.cache {
            Some(c) => c.append(layer, k, v),
            None => Ok((k, v)),
        }
    }

    fn pattern(&mut self, layer: usize, probs: &Tensor) -> Result<(), ModelError> {
        if self.capture.pattern {
            self.captured.pattern[layer] = Some(probs.clone());
        }
        Ok(())
    }
}
