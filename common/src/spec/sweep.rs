//! `[sweep]`: which sweep runs and the fields of its kind. The table is read as a tagged enum,
//! one variant per kind, each refusing the fields of the others; the stored form is one flat
//! struct, so that `result.json` and submissions keep their shape.

use std::path::PathBuf;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::Component;

use super::order_count::OrderCount;

/// The sweeps.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SweepKind {
    /// Every head and MLP ablated alone.
    #[default]
    Nodes,
    /// Greedy iterative pruning.
    Prune,
    /// Pruning over many orders.
    Orders,
    /// Every edge ablated alone (path patching).
    Edges,
    /// Greedy pruning over edges.
    EdgePrune,
    /// Generation accuracy on downstream tasks with head sets ablated (a circuit and random
    /// sets as the control).
    Downstream,
    /// Gradient attribution (EAP, EAP-IG) of every edge or node: estimated scores from a few
    /// forward and backward passes.
    Attribution,
    /// Faithfulness curves: circuits of the top edges of given edge scores at fixed shares of
    /// the graph, each evaluated by exact patching (MIB's CPR and CMD).
    Faithfulness,
}

impl SweepKind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [SweepKind; 8] = [
        SweepKind::Nodes,
        SweepKind::Prune,
        SweepKind::Orders,
        SweepKind::Edges,
        SweepKind::EdgePrune,
        SweepKind::Downstream,
        SweepKind::Attribution,
        SweepKind::Faithfulness,
    ];

    /// The kind's name as the spec spells it.
    pub fn name(self) -> &'static str {
        match self {
            SweepKind::Nodes => "nodes",
            SweepKind::Prune => "prune",
            SweepKind::Orders => "orders",
            SweepKind::Edges => "edges",
            SweepKind::EdgePrune => "edge_prune",
            SweepKind::Downstream => "downstream",
            SweepKind::Attribution => "attribution",
            SweepKind::Faithfulness => "faithfulness",
        }
    }

    /// Whether the sweep is over edges.
    pub fn is_edges(self) -> bool {
        matches!(self, SweepKind::Edges | SweepKind::EdgePrune)
    }

    /// Whether the sweep scores prompt pairs of `[data]` (all but downstream ablation).
    pub fn uses_data(self) -> bool {
        self != SweepKind::Downstream
    }
}

/// Pass orders of pruning.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Backward, forward, ... until a pass removes nothing.
    #[default]
    Paper,
    /// Backward passes only.
    Backward,
    /// Forward passes only.
    Forward,
}

/// How attribution estimates an edge's (node's) effect.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AttributionMethod {
    /// Edge attribution patching: the ablation difference times the gradient at the clean
    /// run (one forward and backward pass).
    Eap,
    /// Integrated gradients: the gradient averaged over `steps` runs with every sender moved
    /// `k / steps` of the way to its ablated value (`k = 0..steps`).
    #[default]
    EapIg,
}

impl AttributionMethod {
    /// The method's name as the spec spells it.
    pub fn name(self) -> &'static str {
        match self {
            AttributionMethod::Eap => "eap",
            AttributionMethod::EapIg => "eap_ig",
        }
    }
}

/// What attribution scores.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AttributionOver {
    /// Every edge of the graph (and every node, which comes with it).
    #[default]
    Edges,
    /// Every node (heads, MLPs, the embedding): no per-receiver inputs, cheaper.
    Nodes,
}

/// Which candidates pruning decides one at a time.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Candidates {
    /// Every candidate, one exact evaluation each, in the pass orders (plain greedy).
    #[default]
    All,
    /// Attribute, then verify: candidates visited by attribution (`method`, `steps`), the
    /// estimated harmless first, and removed in blocks, each block by one exact evaluation
    /// under the same rule.
    Attribution,
}

/// Default integration steps of EAP-IG.
pub const DEFAULT_IG_STEPS: usize = 5;

/// `[sweep]`, as stored and serialized (`result.json`, submissions): every kind's fields, those
/// of other kinds left unset. Read through [`Table`], which refuses another kind's fields.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SweepKindSpec {
    /// nodes | prune | orders | edges | edge_prune | downstream.
    pub kind: SweepKind,
    /// Pruning threshold in % of the full model (default 80).
    pub threshold: Option<f64>,
    /// Pruning with `metric = "kl"`: remove a component (edge) when the circuit's KL from the
    /// full model grows by less than this many nats (default 0.01).
    pub tau: Option<f64>,
    /// Nested thresholds (`[97, 90, 80, 70]`), each continuing from the previous circuit.
    pub thresholds: Option<Vec<f64>>,
    /// Pass schedule of pruning.
    pub schedule: Schedule,
    /// Order study (`orders`, or `edge_prune` over edge orders): how many seeded random orders,
    /// or `auto`.
    pub orders: Option<OrderCount>,
    /// Order study with `orders = "auto"`: run batches of orders until every inclusion
    /// frequency's 95 % interval has at most this half-width (default 0.05).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ci_width: Option<f64>,
    /// Order study with `orders = "auto"`: the most orders it runs, converged or not (default
    /// [`crate::convergence::DEFAULT_MAX_ORDERS`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_orders: Option<usize>,
    /// Seed of the random orders (order studies) or head sets (downstream).
    pub seed: u64,
    /// Order study: explicit orders (a JSON list of lists of component names).
    pub orders_file: Option<PathBuf>,
    /// Order study (node or edge): the `result.json` of an earlier study of the same spec with
    /// fewer orders; its runs are kept and only the orders after them are run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extends: Option<PathBuf>,
    /// Edge sweeps: restrict the graph to this node circuit (component names); every node
    /// outside it stays ablated.
    pub circuit: Option<Vec<Component>>,
    /// Edge sweeps: the node circuit from a file: a JSON list of component names, or a
    /// `result.json` of a pruning run (its last circuit).
    pub circuit_file: Option<PathBuf>,
    /// Edge sweeps: ablate edges at these positions only (negative counts from the end: -1 is
    /// the last position); every position when omitted.
    pub positions: Option<Vec<i64>>,
    /// Edge sweeps: `direct` edges (default) or the paper's `path` patching.
    #[serde(skip_serializing_if = "is_default")]
    pub edge_method: EdgeMethod,
    /// Edge sweeps with grouped-query attention: key/value receivers per `query_head`
    /// (default) or per `kv_head`.
    #[serde(skip_serializing_if = "is_default")]
    pub kv_edges: KvEdges,
    /// Downstream: random head sets, the control (default 20).
    pub random_sets: Option<usize>,
    /// Downstream: heads per random set (default: the circuit's heads, else 10).
    pub set_size: Option<usize>,
    /// Pruning (`prune`, `edge_prune`): `all` candidates one at a time (the default) or
    /// ordered by `attribution` and removed in verified blocks.
    #[serde(skip_serializing_if = "is_default")]
    pub candidates: Candidates,
    /// Attribution (and pruning with `candidates = "attribution"`): `eap` or `eap_ig` (the
    /// default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<AttributionMethod>,
    /// Attribution with `eap_ig`: integration steps (default 5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// Attribution: score `edges` (the default) or `nodes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub over: Option<AttributionOver>,
    /// Faithfulness: files of edge scores, one curve pair each (a `result.json` of an edge
    /// sweep or an attribution, or a MIB circuit file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scores_files: Option<Vec<PathBuf>>,
    /// Faithfulness: shares of the graph's edges in % (default MIB's 0.1 ... 100).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percentages: Option<Vec<f64>>,
}

impl SweepKindSpec {
    /// Whether the sweep scores the edge graph (edge sweeps, edge pruning, attribution of
    /// edges).
    pub fn scores_edges(&self) -> bool {
        self.kind.is_edges()
            || self.kind == SweepKind::Faithfulness
            || (self.kind == SweepKind::Attribution
                && self.over.unwrap_or_default() == AttributionOver::Edges)
    }

    /// Order studies: the orders planned first (all of a fixed count; an `auto` study's first
    /// batch; 100 when unsaid).
    pub fn first_orders(&self) -> usize {
        match self.orders {
            Some(OrderCount::Fixed(n)) => n,
            Some(OrderCount::Auto) => {
                crate::convergence::AutoRule::of(self, self.orders_per_shard())
                    .map_or(0, |r| r.first_batch())
            }
            None => 100,
        }
    }

    /// Order studies: the most orders it may run (an `auto` study's cap).
    pub fn most_orders(&self) -> usize {
        match self.orders {
            Some(OrderCount::Auto) => self
                .max_orders
                .unwrap_or(crate::convergence::DEFAULT_MAX_ORDERS),
            _ => self.first_orders(),
        }
    }

    /// Order studies: orders per shard (an edge pruning run costs far more than a node one).
    pub fn orders_per_shard(&self) -> usize {
        match self.kind {
            SweepKind::EdgePrune => crate::shard::EDGE_ORDERS_PER_SHARD,
            _ => crate::shard::ORDERS_PER_SHARD,
        }
    }

    /// Faithfulness: the shares of the graph's edges, as fractions.
    pub fn fractions(&self) -> Vec<f64> {
        match &self.percentages {
            Some(p) => p.iter().map(|x| x / 100.0).collect(),
            None => crate::faithfulness::FRACTIONS.to_vec(),
        }
    }

    /// Faithfulness: circuits evaluated (the empty one, the full graph, and per file two
    /// curves of one circuit per share).
    pub fn faithfulness_circuits(&self) -> usize {
        let files = self.scores_files.as_ref().map_or(0, Vec::len);
        2 + files * 2 * self.fractions().len()
    }

    /// Attribution: the method and its passes per prompt (1 for EAP).
    pub fn attribution_steps(&self) -> (AttributionMethod, usize) {
        let method = self.method.unwrap_or_default();
        match method {
            AttributionMethod::Eap => (method, 1),
            AttributionMethod::EapIg => (method, self.steps.unwrap_or(DEFAULT_IG_STEPS)),
        }
    }
}

/// How an edge is ablated.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EdgeMethod {
    /// The receiver alone reads the residual stream with the sender's write replaced by its
    /// ablated write, in this very pass (ACDC, auto-circuit).
    #[default]
    Direct,
    /// Path patching as in the paper: the sender takes its ablated value, every other head is
    /// frozen at its unablated value and MLPs are recomputed; the receiver alone then reads
    /// what that run gives it. Scored one edge at a time; pruning is one thresholded pass.
    Path,
}

/// Which key and value inputs are edge receivers under grouped-query attention.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KvEdges {
    /// Each query head's own key and value input (auto-circuit, EAP-IG, MIB).
    #[default]
    QueryHead,
    /// The key/value heads' inputs, shared by the query heads of a group.
    KvHead,
}

fn is_default<T: Default + PartialEq>(t: &T) -> bool {
    *t == T::default()
}

/// `[sweep]` as written: `kind` picks the variant, and each variant takes only its own fields.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Table {
    Nodes(NodesTable),
    Prune(PruneTable),
    Orders(OrdersTable),
    Edges(EdgesTable),
    EdgePrune(EdgePruneTable),
    Downstream(DownstreamTable),
    Attribution(AttributionTable),
    Faithfulness(FaithfulnessTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodesTable {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PruneTable {
    threshold: Option<f64>,
    tau: Option<f64>,
    thresholds: Option<Vec<f64>>,
    #[serde(default)]
    schedule: Schedule,
    #[serde(default)]
    candidates: Candidates,
    method: Option<AttributionMethod>,
    steps: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrdersTable {
    threshold: Option<f64>,
    tau: Option<f64>,
    orders: Option<OrderCount>,
    ci_width: Option<f64>,
    max_orders: Option<usize>,
    #[serde(default)]
    seed: u64,
    orders_file: Option<PathBuf>,
    extends: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EdgesTable {
    circuit: Option<Vec<Component>>,
    circuit_file: Option<PathBuf>,
    positions: Option<Vec<i64>>,
    #[serde(default)]
    edge_method: EdgeMethod,
    #[serde(default)]
    kv_edges: KvEdges,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EdgePruneTable {
    threshold: Option<f64>,
    tau: Option<f64>,
    orders: Option<OrderCount>,
    ci_width: Option<f64>,
    max_orders: Option<usize>,
    #[serde(default)]
    seed: u64,
    extends: Option<PathBuf>,
    circuit: Option<Vec<Component>>,
    circuit_file: Option<PathBuf>,
    positions: Option<Vec<i64>>,
    #[serde(default)]
    edge_method: EdgeMethod,
    #[serde(default)]
    kv_edges: KvEdges,
    #[serde(default)]
    candidates: Candidates,
    method: Option<AttributionMethod>,
    steps: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DownstreamTable {
    circuit: Option<Vec<Component>>,
    circuit_file: Option<PathBuf>,
    random_sets: Option<usize>,
    set_size: Option<usize>,
    #[serde(default)]
    seed: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttributionTable {
    method: Option<AttributionMethod>,
    steps: Option<usize>,
    over: Option<AttributionOver>,
    positions: Option<Vec<i64>>,
    #[serde(default)]
    kv_edges: KvEdges,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaithfulnessTable {
    scores_files: Vec<PathBuf>,
    percentages: Option<Vec<f64>>,
    positions: Option<Vec<i64>>,
    #[serde(default)]
    kv_edges: KvEdges,
}

impl From<Table> for SweepKindSpec {
    fn from(t: Table) -> Self {
        let d = SweepKindSpec::default();
        match t {
            Table::Nodes(NodesTable {}) => d,
            Table::Prune(p) => SweepKindSpec {
                kind: SweepKind::Prune,
                threshold: p.threshold,
                tau: p.tau,
                thresholds: p.thresholds,
                schedule: p.schedule,
                candidates: p.candidates,
                method: p.method,
                steps: p.steps,
                ..d
            },
            Table::Orders(o) => SweepKindSpec {
                kind: SweepKind::Orders,
                threshold: o.threshold,
                tau: o.tau,
                orders: o.orders,
                ci_width: o.ci_width,
                max_orders: o.max_orders,
                seed: o.seed,
                orders_file: o.orders_file,
                extends: o.extends,
                ..d
            },
            Table::Edges(e) => SweepKindSpec {
                kind: SweepKind::Edges,
                circuit: e.circuit,
                circuit_file: e.circuit_file,
                positions: e.positions,
                edge_method: e.edge_method,
                kv_edges: e.kv_edges,
                ..d
            },
            Table::EdgePrune(e) => SweepKindSpec {
                kind: SweepKind::EdgePrune,
                threshold: e.threshold,
                tau: e.tau,
                orders: e.orders,
                ci_width: e.ci_width,
                max_orders: e.max_orders,
                seed: e.seed,
                extends: e.extends,
                circuit: e.circuit,
                circuit_file: e.circuit_file,
                positions: e.positions,
                edge_method: e.edge_method,
                kv_edges: e.kv_edges,
                candidates: e.candidates,
                method: e.method,
                steps: e.steps,
                ..d
            },
            Table::Attribution(a) => SweepKindSpec {
                kind: SweepKind::Attribution,
                method: a.method,
                steps: a.steps,
                over: a.over,
                positions: a.positions,
                kv_edges: a.kv_edges,
                ..d
            },
            Table::Faithfulness(f) => SweepKindSpec {
                kind: SweepKind::Faithfulness,
                scores_files: Some(f.scores_files),
                percentages: f.percentages,
                positions: f.positions,
                kv_edges: f.kv_edges,
                ..d
            },
            Table::Downstream(s) => SweepKindSpec {
                kind: SweepKind::Downstream,
                circuit: s.circuit,
                circuit_file: s.circuit_file,
                random_sets: s.random_sets,
                set_size: s.set_size,
                seed: s.seed,
                ..d
            },
        }
    }
}

impl<'de> Deserialize<'de> for SweepKindSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        read(Map::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// Reads `[sweep]` from its keys. Absent options (null in `result.json`) and keys at their
/// default value say nothing and are dropped first: the stored form carries `seed` and
/// `schedule` whatever the kind.
fn read(mut map: Map<String, Value>) -> Result<SweepKindSpec, String> {
    let kind = map
        .remove("kind")
        .unwrap_or_else(|| Value::from(SweepKind::Nodes.name()));
    SweepKind::deserialize(&kind).map_err(|e| format!("[sweep] kind: {e}"))?;
    let defaults = match serde_json::to_value(SweepKindSpec::default()) {
        Ok(Value::Object(m)) => m,
        _ => unreachable!("the default spec serializes to an object"),
    };
    map.retain(|k, v| !v.is_null() && defaults.get(k) != Some(v));
    let mut table = map.clone();
    table.insert("kind".into(), kind.clone());
    Table::deserialize(Value::Object(table))
        .map(SweepKindSpec::from)
        .map_err(|e| {
            // Another kind's field: say which kinds it applies to.
            for (field, value) in &map {
                if takes(&kind, field, value) {
                    continue;
                }
                let kinds: Vec<String> = SweepKind::ALL
                    .iter()
                    .filter(|k| takes(&Value::from(k.name()), field, value))
                    .map(|k| format!("\"{}\"", k.name()))
                    .collect();
                if let Some((last, rest)) = kinds.split_last() {
                    let list = match rest {
                        [] => last.clone(),
                        _ => format!("{} or {last}", rest.join(", ")),
                    };
                    return format!("[sweep] {field}: only applies to kind = {list}");
                }
            }
            format!("[sweep] {e}")
        })
}

/// Whether a `[sweep]` of `kind` takes `field` (set to `value`).
fn takes(kind: &Value, field: &str, value: &Value) -> bool {
    let mut probe = Map::new();
    probe.insert("kind".into(), kind.clone());
    probe.insert(field.into(), value.clone());
    match Table::deserialize(Value::Object(probe)) {
        Ok(_) => true,
        Err(e) => !e.to_string().starts_with("unknown field"),
    }
}
