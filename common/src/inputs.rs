//! A job's inputs resolved once from its spec, its files and the model's shape: the order
//! study's orders, the node circuit an edge sweep or downstream study names, the edge graph
//! and the nodes outside the circuit, and the downstream study's head sets. The coordinator's
//! planner, the worker's job preparation and aggregation all take them from here.

use std::path::Path;

use crate::Component;
use crate::downstream;
use crate::edge::{Edge, GraphShape};
use crate::shard::{self, ShardTask};
use crate::spec::{SweepKind, SweepSpec};
use crate::{circuit, limits, orders};

/// The resolved inputs of a job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobInputs {
    /// The model's edge graph as the spec asks for it (key/value receivers, edge method).
    pub graph: GraphShape,
    /// The order study's orders, in study order (`orders` sweeps only).
    pub orders: Option<Vec<Vec<Component>>>,
    /// The node circuit the spec names (`circuit` or `circuit_file`), checked against the model.
    pub circuit: Option<Vec<Component>>,
    /// Edge sweeps: the edge graph, restricted to the node circuit when one is given.
    pub edges: Vec<Edge>,
    /// Edge sweeps: the nodes outside the node circuit (ablated in every candidate).
    pub outside: Vec<Component>,
    /// Downstream studies: the head sets, named, in shard order.
    pub sets: Vec<(String, Vec<Component>)>,
    /// Faithfulness: the curves' circuits (resolved from the score files; not kept with the
    /// job, so absent from [`JobInputs::from_resolved`]).
    pub curves: Option<crate::curves::Curves>,
    /// An order study extending an earlier one: that study's orders, the first of `orders`
    /// (or of the edge orders), which are not run again (see [`crate::extension`]).
    pub earlier_orders: usize,
    /// An edge order study extending an earlier one: its orders planned first, the earlier
    /// ones included (otherwise the spec's first orders).
    pub edge_orders: Option<usize>,
}

/// Refuses an order study whose orders hold more components in all than
/// [`limits::MAX_ORDER_COMPONENTS`].
fn check_order_components(orders: usize, per_order: usize, field: &str) -> Result<(), String> {
    let total = orders.saturating_mul(per_order);
    if total > limits::MAX_ORDER_COMPONENTS {
        return Err(format!(
            "[sweep] {field}: {orders} orders of {per_order} components are {total} components, more than the cap of {}; ask for at most {} orders of this model",
            limits::MAX_ORDER_COMPONENTS,
            limits::MAX_ORDER_COMPONENTS / per_order.max(1)
        ));
    }
    Ok(())
}

impl JobInputs {
    /// Resolves the inputs of `spec` for a model of `model` (its base graph shape, as
    /// `JobMeta::graph_shape` or the model's info gives it), reading files the spec names
    /// through `read` (its argument as the spec wrote it). The error names the file or field.
    pub fn resolve(
        spec: &SweepSpec,
        model: GraphShape,
        read: &mut dyn FnMut(&Path) -> Result<String, String>,
    ) -> Result<Self, String> {
        let (n_layers, n_heads) = (model.n_layers, model.n_heads);
        if spec.sweep.kind == SweepKind::Orders && spec.sweep.orders_file.is_none() {
            // An `auto` study may run up to its cap (1,000 unless `max_orders` says otherwise).
            let field = match spec.sweep.orders {
                Some(crate::spec::OrderCount::Auto) => "max_orders",
                _ => "orders",
            };
            check_order_components(spec.sweep.most_orders(), n_layers * (n_heads + 1), field)?;
        }
        let orders = match (spec.sweep.kind, &spec.sweep.orders_file) {
            (SweepKind::Orders, Some(f)) => Some(orders::parse_orders(
                &read(f)?,
                &f.display().to_string(),
                n_layers,
                n_heads,
            )?),
            (SweepKind::Orders, None) => Some(orders::random_orders(
                n_layers,
                n_heads,
                spec.sweep.first_orders(),
                spec.sweep.seed,
            )),
            _ => None,
        };
        if let Some(o) = &orders {
            check_order_components(o.len(), o.iter().map(Vec::len).max().unwrap_or(0), "orders")?;
        }
        let circuit = match (&spec.sweep.circuit, &spec.sweep.circuit_file) {
            (Some(c), _) => {
                for x in c {
                    x.check(n_layers, n_heads)
                        .map_err(|e| format!("[sweep] circuit: {e}"))?;
                }
                Some(c.clone())
            }
            (None, Some(f)) => Some(circuit::parse_circuit(
                &read(f)?,
                &f.display().to_string(),
                n_layers,
                n_heads,
            )?),
            (None, None) => None,
        };
        if spec.sweep.scores_edges() {
            let n = spec.graph(model).edge_count(circuit.as_deref());
            if n > limits::MAX_EDGES {
                return Err(format!(
                    "[sweep] kind = \"{}\": the graph has {n} edges, more than the cap of {}; restrict it to a node circuit (`circuit`)",
                    spec.sweep.kind.name(),
                    limits::MAX_EDGES
                ));
            }
        }
        let mut inputs = Self::from_resolved(spec, model, circuit, orders);
        if spec.sweep.kind == SweepKind::Faithfulness {
            let files = spec
                .sweep
                .scores_files
                .iter()
                .flatten()
                .map(|f| Ok((f.display().to_string(), read(f)?)))
                .collect::<Result<Vec<_>, String>>()?;
            inputs.curves = Some(
                crate::curves::build(&files, &inputs.graph, &spec.sweep.fractions())
                    .map_err(|e| e.to_string())?,
            );
        }
        Ok(inputs)
    }

    /// The inputs from an already resolved circuit and orders (as the coordinator stores them
    /// with the job).
    pub fn from_resolved(
        spec: &SweepSpec,
        model: GraphShape,
        circuit: Option<Vec<Component>>,
        orders: Option<Vec<Vec<Component>>>,
    ) -> Self {
        let graph = spec.graph(model);
        let (n_layers, n_heads) = (graph.n_layers, graph.n_heads);
        let (edges, outside) = match (spec.sweep.scores_edges(), &circuit) {
            (false, _) => (vec![], vec![]),
            (true, Some(c)) => (
                graph.edges_within(c),
                Component::all(n_layers, n_heads)
                    .into_iter()
                    .filter(|x| !c.contains(x))
                    .collect(),
            ),
            (true, None) => (graph.edges(), vec![]),
        };
        let sets = match spec.sweep.kind {
            SweepKind::Downstream => {
                downstream::study_sets(&spec.sweep, circuit.as_deref(), n_layers, n_heads)
            }
            _ => vec![],
        };
        JobInputs {
            graph,
            orders,
            circuit,
            edges,
            outside,
            sets,
            curves: None,
            earlier_orders: 0,
            edge_orders: None,
        }
    }

    /// The sweep's shards after `prepare` of `prompts` prompt pairs (see [`shard::plan`]).
    pub fn plan(&self, spec: &SweepSpec, prompts: usize) -> Vec<ShardTask> {
        let edge_orders = match spec.sweep.kind {
            SweepKind::EdgePrune if spec.sweep.orders.is_some() => Some((
                self.earlier_orders,
                self.edge_orders.unwrap_or(spec.sweep.first_orders()),
            )),
            _ => None,
        };
        // Guided edge pruning skips the sweep of single-edge scores: it would cost an
        // evaluation per edge, the very cost the guidance saves.
        let guided = spec.sweep.kind == SweepKind::EdgePrune
            && spec.sweep.candidates == crate::spec::Candidates::Attribution;
        shard::plan(
            spec.sweep.kind,
            self.graph.n_layers,
            self.orders.as_deref().map(|o| (self.earlier_orders, o)),
            if guided { 0 } else { self.edges.len() },
            edge_orders,
            (self.sets.len(), prompts, spec.sweep.faithfulness_circuits()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> GraphShape {
        GraphShape {
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 2,
            parallel: false,
            kv_per_query: true,
            embed: true,
        }
    }

    fn spec(text: &str) -> SweepSpec {
        SweepSpec::parse(text, Path::new("t.toml")).unwrap()
    }

    fn no_files(p: &Path) -> Result<String, String> {
        Err(format!("{}: no such file", p.display()))
    }

    #[test]
    fn an_edge_sweep_restricted_to_a_circuit() {
        let s = spec("[sweep]\nkind = \"edges\"\ncircuit = [\"h0.1\", \"m1\"]\n");
        let i = JobInputs::resolve(&s, model(), &mut no_files).unwrap();
        assert_eq!(i.circuit.as_ref().unwrap().len(), 2);
        assert_eq!(i.edges, i.graph.edges_within(i.circuit.as_ref().unwrap()));
        assert_eq!(i.outside.len(), 2 * 4 + 2 - 2);
        assert!(
            i.plan(&s, 1)
                .iter()
                .all(|t| matches!(t, ShardTask::Edges { .. }))
        );
        // The same from the stored circuit.
        let again = JobInputs::from_resolved(&s, model(), i.circuit.clone(), None);
        assert_eq!(again, i);
    }

    #[test]
    fn files_and_components_are_checked_against_the_model() {
        let s = spec("[sweep]\nkind = \"edges\"\ncircuit = [\"h5.0\"]\n");
        let e = JobInputs::resolve(&s, model(), &mut no_files).unwrap_err();
        assert!(e.starts_with("[sweep] circuit:"), "{e}");
        let s = spec("[sweep]\nkind = \"orders\"\norders_file = \"o.json\"\n");
        let e = JobInputs::resolve(&s, model(), &mut no_files).unwrap_err();
        assert!(e.contains("o.json"), "{e}");
        let i = JobInputs::resolve(&s, model(), &mut |_| {
            Ok("[[\"h0.0\", \"h0.1\", \"h0.2\", \"h0.3\", \"m0\", \"h1.0\", \"h1.1\", \"h1.2\", \"h1.3\", \"m1\"]]\n".into())
        })
        .unwrap();
        assert_eq!(i.orders.unwrap().len(), 1);
    }

    #[test]
    fn an_order_study_beyond_the_cap_is_refused_before_its_orders_are_drawn() {
        // 100,000 orders of a 32-layer, 32-head model: 105.6 million components.
        let big = GraphShape {
            n_layers: 32,
            n_heads: 32,
            ..model()
        };
        let s = spec("[sweep]\nkind = \"orders\"\norders = 100000\n");
        let e = JobInputs::resolve(&s, big, &mut no_files).unwrap_err();
        assert!(e.contains("more than the cap of 4000000"), "{e}");
        assert!(e.contains("at most 3787 orders"), "{e}");
        let s = spec("[sweep]\nkind = \"orders\"\norders = 3787\n");
        let i = JobInputs::resolve(&s, big, &mut no_files).unwrap();
        assert_eq!(i.orders.unwrap().len(), 3787);
    }

    #[test]
    fn an_edge_graph_beyond_the_cap_is_refused_before_it_is_built() {
        // An 80-layer, 64-head model has about 40 million edges.
        let big = GraphShape {
            n_layers: 80,
            n_heads: 64,
            n_kv_heads: 8,
            ..model()
        };
        let s = spec("[sweep]\nkind = \"edges\"\n");
        let e = JobInputs::resolve(&s, big, &mut no_files).unwrap_err();
        assert!(e.contains("more than the cap of 10000000"), "{e}");
        let s = spec("[sweep]\nkind = \"edges\"\ncircuit = [\"h0.1\", \"m79\"]\n");
        let i = JobInputs::resolve(&s, big, &mut no_files).unwrap();
        assert_eq!(i.edges.len(), big.edge_count(i.circuit.as_deref()));
        assert_eq!(model().edge_count(None), model().edges().len());
    }

    #[test]
    fn random_orders_and_downstream_sets_follow_the_seed() {
        let s = spec("[sweep]\nkind = \"orders\"\norders = 5\nseed = 9\n");
        let a = JobInputs::resolve(&s, model(), &mut no_files).unwrap();
        assert_eq!(a.orders.as_ref().unwrap().len(), 5);
        assert_eq!(a, JobInputs::resolve(&s, model(), &mut no_files).unwrap());
        let s = spec("[sweep]\nkind = \"downstream\"\nrandom_sets = 3\nset_size = 2\n");
        let d = JobInputs::resolve(&s, model(), &mut no_files).unwrap();
        assert_eq!(d.sets.len(), 4);
        assert_eq!(d.plan(&s, 1).len(), 1);
    }
}
