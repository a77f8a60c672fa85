//! What serde cannot say about a spec: ranges, and rules between fields of different tables.
//! Which `[sweep]` fields a kind takes is said by the tagged table (`sweep.rs`).

use std::path::Path;

use super::{
    AblationKind, Candidates, DownstreamSpec, EdgeMethod, Metric, Normalize, OrderCount, SpecError,
    SweepKind, SweepSpec, kind_name, metric_name,
};
use crate::data_spec::DataSpec;
use crate::limits;
use crate::spec::Direction;

impl SweepSpec {
    /// Checks values that serde cannot.
    pub fn validate(&self, path: &Path) -> Result<(), SpecError> {
        let bad = |table: &'static str, field: &'static str, reason: String| SpecError::Field {
            path: path.to_path_buf(),
            table,
            field,
            reason,
        };
        if !["f32", "f16", "bf16"].contains(&self.model.dtype.as_str()) {
            return Err(bad(
                "model",
                "dtype",
                format!("`{}` is not f32, f16 or bf16", self.model.dtype),
            ));
        }
        let d = self.model.device.as_str();
        let cuda_ok = d
            .strip_prefix("cuda:")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if d != "cpu" && !cuda_ok {
            return Err(bad(
                "model",
                "device",
                format!("`{d}` is not cpu or cuda:N"),
            ));
        }
        self.check_rule().map_err(|(t, f, r)| bad(t, f, r))?;
        self.check_counts().map_err(|(t, f, r)| bad(t, f, r))?;
        if self.sweep.extends.is_some()
            && (self.sweep.orders.is_none() || self.sweep.orders_file.is_some())
        {
            return Err(bad(
                "sweep",
                "extends",
                "an extension continues the earlier study's seeded orders: give `orders` (the larger count, the earlier study's runs included), not `orders_file`".into(),
            ));
        }
        if self.sweep.orders.is_some() && self.sweep.orders_file.is_some() {
            return Err(bad(
                "sweep",
                "orders",
                "`orders` draws seeded random orders and `orders_file` names explicit ones: give one or the other".into(),
            ));
        }
        let auto = self.sweep.orders == Some(OrderCount::Auto);
        for (field, set) in [
            ("ci_width", self.sweep.ci_width.is_some()),
            ("max_orders", self.sweep.max_orders.is_some()),
        ] {
            if set && !auto {
                return Err(bad(
                    "sweep",
                    field,
                    format!(
                        "`{field}` is the rule of orders = \"auto\"; a study of a fixed number of orders runs them all"
                    ),
                ));
            }
        }
        if let Some(w) = self.sweep.ci_width
            && !(w > 0.0 && w < 0.5)
        {
            return Err(bad(
                "sweep",
                "ci_width",
                format!(
                    "{w} is not a half-width between 0 and 0.5 (exclusive) of a 95 % interval of a frequency"
                ),
            ));
        }
        if self.sweep.edge_method == EdgeMethod::Path {
            if self.sweep.orders.is_some() {
                return Err(bad(
                    "sweep",
                    "orders",
                    "edge_method = \"path\" prunes in one pass over single-edge scores, which no visiting order changes: an order study has nothing to measure".into(),
                ));
            }
            if self.ablation.normalize == Normalize::Empty {
                return Err(bad(
                    "ablation",
                    "normalize",
                    "\"empty\" does not apply to edge_method = \"path\": path patching scores one edge at a time and has no empty circuit".into(),
                ));
            }
        }
        let downstream = self.sweep.kind == SweepKind::Downstream;
        if downstream {
            if self.data != DataSpec::default() {
                return Err(bad(
                    "data",
                    "task",
                    "kind = \"downstream\" takes its prompts from [downstream], not [data]".into(),
                ));
            }
            if self.ablation.kind == AblationKind::Resample
                || self.ablation.direction == Direction::Denoising
            {
                return Err(bad(
                    "ablation",
                    "kind",
                    "downstream ablation is zero or mean noising (generated prompts have no corrupt pairs)".into(),
                ));
            }
            if self.downstream.tasks.is_empty() {
                return Err(bad("downstream", "tasks", "is empty".into()));
            }
        } else if self.downstream != DownstreamSpec::default() {
            return Err(bad(
                "downstream",
                "tasks",
                "only applies to kind = \"downstream\"".into(),
            ));
        }
        if self.sweep.positions.as_ref().is_some_and(Vec::is_empty) {
            return Err(bad("sweep", "positions", "is empty".into()));
        }
        if self.sweep.circuit.is_some() && self.sweep.circuit_file.is_some() {
            return Err(bad(
                "sweep",
                "circuit",
                "give `circuit` or `circuit_file`, not both".into(),
            ));
        }
        if self.sweep.circuit.as_ref().is_some_and(Vec::is_empty) {
            return Err(bad("sweep", "circuit", "is empty".into()));
        }
        if self.sweep.kind == SweepKind::Attribution {
            self.check_attribution().map_err(|(t, f, r)| bad(t, f, r))?;
        }
        self.check_candidates().map_err(|(t, f, r)| bad(t, f, r))?;
        if self.sweep.kind == SweepKind::Faithfulness {
            self.check_faithfulness()
                .map_err(|(t, f, r)| bad(t, f, r))?;
        }
        if self.sweep.kind.is_edges() && self.ablation.direction == Direction::Denoising {
            return Err(bad(
                "ablation",
                "direction",
                "edge sweeps are implemented for noising".into(),
            ));
        }
        if self.ablation.direction == Direction::Denoising
            && self.ablation.kind != AblationKind::Resample
            && !downstream
        {
            return Err(bad(
                "ablation",
                "kind",
                format!(
                    "`{}` does not apply to direction = \"denoising\": denoising runs the corrupt prompts, gives every component of the circuit its paired clean activation and lets every other component compute on the corrupt prompt, so the ablated side's value is the paired corrupt run's (kind = \"resample\"); a {} there would freeze every component and leave only direct effects",
                    kind_name(self.ablation.kind),
                    if self.ablation.kind == AblationKind::Mean {
                        "per-position mean"
                    } else {
                        "zero"
                    }
                ),
            ));
        }
        if self.ablation.fold_value_bias && self.ablation.kind != AblationKind::Zero {
            return Err(bad(
                "ablation",
                "fold_value_bias",
                format!(
                    "only changes zero ablation (here kind = `{}`): a mean or a resampled activation carries the value bias either way",
                    kind_name(self.ablation.kind)
                ),
            ));
        }
        Ok(())
    }

    /// Attribution differentiates the metric of the noising run.
    fn check_attribution(&self) -> Result<(), (&'static str, &'static str, String)> {
        if self.ablation.metric == Metric::Accuracy {
            return Err((
                "ablation",
                "metric",
                "attribution differentiates the metric, and accuracy is a step function whose gradient is zero almost everywhere; use logit_diff or kl".into(),
            ));
        }
        if self.ablation.direction == Direction::Denoising {
            return Err((
                "ablation",
                "direction",
                "attribution is implemented for noising".into(),
            ));
        }
        if self.ablation.metric == Metric::Kl && self.sweep.attribution_steps().1 == 1 {
            return Err((
                "ablation",
                "metric",
                "KL from the full model is smallest at the full model, so its gradient there is zero and one pass at the clean run (EAP, or EAP-IG with one step) scores every edge 0 up to rounding; use method = \"eap_ig\" with steps > 1, or metric = \"logit_diff\"".into(),
            ));
        }
        if self.sweep.method == Some(super::AttributionMethod::Eap)
            && self.sweep.steps.is_some_and(|s| s != 1)
        {
            return Err((
                "sweep",
                "steps",
                "method = \"eap\" is one pass at the clean run; steps apply to method = \"eap_ig\""
                    .into(),
            ));
        }
        Ok(())
    }

    /// Pruning guided by attribution: the attribution's own rules, and no setting that visits
    /// candidates in another order.
    fn check_candidates(&self) -> Result<(), (&'static str, &'static str, String)> {
        let kind = self.sweep.kind;
        if !matches!(kind, SweepKind::Prune | SweepKind::EdgePrune) {
            return Ok(());
        }
        if self.sweep.candidates == Candidates::All {
            if self.sweep.method.is_some() || self.sweep.steps.is_some() {
                let field = if self.sweep.method.is_some() {
                    "method"
                } else {
                    "steps"
                };
                return Err((
                    "sweep",
                    field,
                    "chooses the attribution that orders candidates; it applies with candidates = \"attribution\"".into(),
                ));
            }
            return Ok(());
        }
        if self.sweep.orders.is_some() {
            return Err((
                "sweep",
                "orders",
                "an order study visits candidates in random orders, and candidates = \"attribution\" visits them in the attribution's order: give one or the other".into(),
            ));
        }
        if self.sweep.edge_method == EdgeMethod::Path {
            return Err((
                "sweep",
                "edge_method",
                "edge_method = \"path\" prunes in one pass over single-edge scores, with no greedy decisions to guide; candidates = \"attribution\" applies to direct edges".into(),
            ));
        }
        if self.sweep.schedule != super::Schedule::default() {
            return Err((
                "sweep",
                "schedule",
                "the schedule orders plain greedy's passes; candidates = \"attribution\" visits components in the attribution's order".into(),
            ));
        }
        self.check_attribution()
    }

    /// Faithfulness curves need score files and shares that make a curve.
    fn check_faithfulness(&self) -> Result<(), (&'static str, &'static str, String)> {
        let files = self.sweep.scores_files.as_deref().unwrap_or_default();
        if files.is_empty() || files.len() > limits::MAX_SCORE_FILES {
            return Err((
                "sweep",
                "scores_files",
                format!(
                    "give 1 to {} files of edge scores (a result.json of kind = \"edges\" or \"attribution\", or a MIB circuit file)",
                    limits::MAX_SCORE_FILES
                ),
            ));
        }
        if let Some(p) = &self.sweep.percentages {
            if p.is_empty() || p.len() > limits::MAX_THRESHOLDS {
                return Err((
                    "sweep",
                    "percentages",
                    format!("give 1 to {} shares", limits::MAX_THRESHOLDS),
                ));
            }
            if let Some(x) = p.iter().find(|x| !(**x > 0.0 && **x <= 100.0)) {
                return Err(("sweep", "percentages", format!("{x} is outside (0, 100]")));
            }
            if p.windows(2).any(|w| w[1] <= w[0]) {
                return Err((
                    "sweep",
                    "percentages",
                    "must increase (the curve's areas are trapezoids between consecutive shares)"
                        .into(),
                ));
            }
        }
        if self.ablation.normalize != Normalize::Full {
            return Err((
                "ablation",
                "normalize",
                "faithfulness is normalised by its own empty circuit and full graph, f = (m(C) - m(empty)) / (m(full) - m(empty)); leave normalize unset".into(),
            ));
        }
        if self.ablation.direction == Direction::Denoising {
            return Err((
                "ablation",
                "direction",
                "faithfulness ablates the edges outside each circuit, implemented for noising"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Every count between 1 (where 0 means nothing) and its cap in [`limits`].
    fn check_counts(&self) -> Result<(), (&'static str, &'static str, String)> {
        let counts = [
            ("data", "n", self.data.n, 1, limits::MAX_PROMPTS),
            (
                "sweep",
                "orders",
                self.sweep.orders.and_then(OrderCount::fixed),
                1,
                limits::MAX_ORDERS,
            ),
            (
                "sweep",
                "max_orders",
                self.sweep.max_orders,
                1,
                limits::MAX_ORDERS,
            ),
            (
                "sweep",
                "random_sets",
                self.sweep.random_sets,
                0,
                limits::MAX_RANDOM_SETS,
            ),
            ("sweep", "set_size", self.sweep.set_size, 1, usize::MAX),
            ("sweep", "steps", self.sweep.steps, 1, limits::MAX_IG_STEPS),
            (
                "sweep",
                "thresholds",
                self.sweep.thresholds.as_ref().map(Vec::len),
                0,
                limits::MAX_THRESHOLDS,
            ),
            (
                "downstream",
                "n",
                Some(self.downstream.n),
                1,
                limits::MAX_PROMPTS,
            ),
            (
                "downstream",
                "shots",
                Some(self.downstream.shots),
                0,
                limits::MAX_SHOTS,
            ),
            (
                "run",
                "batch_tokens",
                self.run.batch_tokens,
                1,
                limits::MAX_BATCH_TOKENS,
            ),
        ];
        for (table, field, n, min, max) in counts {
            match n {
                Some(n) if n < min => {
                    return Err((table, field, format!("must be at least {min}")));
                }
                Some(n) if n > max => {
                    return Err((table, field, format!("{n} is more than the cap of {max}")));
                }
                _ => {}
            }
        }
        if let Some(p) = &self.run.profile
            && (p.is_empty() || p.len() > 256 || !p.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err((
                "run",
                "profile",
                "must be a profile's name as workers report it (such as \"cpu-x86-64-v3\")".into(),
            ));
        }
        Ok(())
    }

    /// The removal rule's fields: % thresholds in (0, 100], nested ones not increasing, and
    /// `tau` in nats with KL only (a % threshold never with it).
    fn check_rule(&self) -> Result<(), (&'static str, &'static str, String)> {
        let s = &self.sweep;
        let in_range = |t: f64| t > 0.0 && t <= 100.0;
        if let Some(t) = s.threshold
            && !in_range(t)
        {
            return Err(("sweep", "threshold", format!("{t} is outside (0, 100]")));
        }
        if let Some(ts) = &s.thresholds {
            if ts.is_empty() {
                return Err(("sweep", "thresholds", "is empty".into()));
            }
            if let Some(t) = ts.iter().find(|t| !in_range(**t)) {
                return Err(("sweep", "thresholds", format!("{t} is outside (0, 100]")));
            }
            if ts.windows(2).any(|w| w[1] > w[0]) {
                return Err((
                    "sweep",
                    "thresholds",
                    "must not increase (97, 90, 80, 70): each circuit continues from the previous"
                        .into(),
                ));
            }
            if s.threshold.is_some() {
                return Err((
                    "sweep",
                    "thresholds",
                    "give `threshold` or `thresholds`, not both".into(),
                ));
            }
        }
        let kl = self.ablation.metric == Metric::Kl;
        if kl && (s.threshold.is_some() || s.thresholds.is_some()) {
            let field = if s.thresholds.is_some() {
                "thresholds"
            } else {
                "threshold"
            };
            return Err((
                "sweep",
                field,
                "a % threshold does not apply with [ablation] metric = \"kl\" (scores are KL divergences in nats, lower is better): give `tau`, the nats the KL may grow by when a component is removed (default 0.01)".into(),
            ));
        }
        if let Some(tau) = s.tau {
            if !kl {
                return Err((
                    "sweep",
                    "tau",
                    format!(
                        "applies to [ablation] metric = \"kl\" (here `{}`, scored in %): give `threshold`",
                        metric_name(self.ablation.metric)
                    ),
                ));
            }
            if !(tau.is_finite() && tau >= 0.0) {
                return Err((
                    "sweep",
                    "tau",
                    format!("{tau} is not a non-negative number of nats"),
                ));
            }
        }
        if kl && self.ablation.normalize != Normalize::Full {
            return Err((
                "ablation",
                "normalize",
                "does not apply to metric = \"kl\": scores are the KL divergence from the full model in nats".into(),
            ));
        }
        Ok(())
    }
}
