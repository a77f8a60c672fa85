//! The spec's parsing and validation, each bad value named by its table and field.

use std::path::Path;

use super::*;
use crate::greedy::Rule;

fn parse(text: &str) -> Result<SweepSpec, SpecError> {
    SweepSpec::parse(text, Path::new("s.toml"))
}

#[test]
fn the_readme_example_parses() {
    let s = parse(
        r#"
        [model]
        path = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
        dtype = "f32"
        device = "cpu"
        [data]
        task = "months"
        n = 16
        seed = 0
        corruption = "rand_all"
        [ablation]
        kind = "mean"
        direction = "noising"
        metric = "logit_diff"
        normalize = "full"
        [sweep]
        kind = "prune"
        threshold = 80.0
        schedule = "paper"
        "#,
    )
    .unwrap();
    assert_eq!(s.sweep.kind, SweepKind::Prune);
    assert_eq!(s.rule(), Rule::Threshold(80.0));
    assert_eq!(parse("").unwrap(), SweepSpec::default());
}

#[test]
fn a_downstream_spec_parses_with_its_defaults() {
    let s = parse("[sweep]\nkind = \"downstream\"\ncircuit = [\"h1.2\"]\n[downstream]\ntasks = [\"add1\", \"interval10\"]").unwrap();
    assert_eq!(s.sweep.kind, SweepKind::Downstream);
    assert!(!s.sweep.kind.uses_data());
    assert_eq!(s.downstream.tasks.len(), 2);
    assert_eq!((s.downstream.n, s.downstream.shots), (32, 3));
    let d = parse("[sweep]\nkind = \"downstream\"").unwrap();
    assert_eq!(d.downstream.tasks.len(), 8);
}

#[test]
fn edge_positions_count_from_the_end_when_negative() {
    let s = parse("[sweep]\nkind = \"edges\"\npositions = [-1, 0, 22, -1]").unwrap();
    assert_eq!(s.edge_positions(23).unwrap(), Some(vec![0, 22]));
    let e = s.edge_positions(20).unwrap_err();
    assert!(e.contains("22 is outside the 20 positions"), "{e}");
    assert_eq!(parse("").unwrap().edge_positions(5).unwrap(), None);
}

#[test]
fn kl_prunes_by_tau_and_percent_metrics_by_threshold() {
    let kl = parse("[ablation]\nmetric = \"kl\"\n[sweep]\nkind = \"edge_prune\"").unwrap();
    assert_eq!(kl.rule(), Rule::Tau(0.01));
    let t = parse("[ablation]\nmetric = \"kl\"\n[sweep]\nkind = \"orders\"\ntau = 0.05").unwrap();
    assert_eq!(t.rules(), vec![Rule::Tau(0.05)]);
    let p = parse("[sweep]\nkind = \"prune\"\nthresholds = [90, 70]").unwrap();
    assert_eq!(
        p.rules(),
        vec![Rule::Threshold(90.0), Rule::Threshold(70.0)]
    );
    assert_eq!(parse("").unwrap().rule(), Rule::Threshold(80.0));
}

#[test]
fn bad_specs_name_the_field() {
    let cases = [
        ("[sweep]\nkind = \"prune\"\nthreshhold = 80", "threshhold"),
        ("[model]\nweights = \"x\"", "weights"),
        (
            "[sweep]\nkind = \"prune\"\nthreshold = 0",
            "[sweep] threshold: 0 is outside (0, 100]",
        ),
        (
            "[sweep]\nkind = \"prune\"\nthreshold = 120",
            "[sweep] threshold",
        ),
        (
            "[sweep]\nkind = \"prune\"\nthresholds = [80, 90]",
            "[sweep] thresholds: must not increase",
        ),
        ("[sweep]\nkind = \"paths\"", "kind"),
        (
            "[sweep]\nkind = \"nodes\"\ncircuit = [\"h0.1\"]",
            "[sweep] circuit: only applies",
        ),
        ("[sweep]\nkind = \"edges\"\ncircuit = [\"h0.x\"]", "h0.x"),
        (
            "[sweep]\nkind = \"edges\"\nthreshold = 80",
            "[sweep] threshold",
        ),
        (
            "[sweep]\nkind = \"edge_prune\"\ncircuit = [\"m1\"]\ncircuit_file = \"r.json\"",
            "not both",
        ),
        ("[model]\ndtype = \"f64\"", "[model] dtype"),
        ("[model]\ndevice = \"gpu\"", "[model] device"),
        (
            "[ablation]\nkind = \"zero\"\ndirection = \"denoising\"",
            "[ablation] kind: `zero` does not apply to direction = \"denoising\"",
        ),
        (
            "[ablation]\ndirection = \"denoising\"",
            "[ablation] kind: `mean` does not apply to direction = \"denoising\"",
        ),
        (
            "[sweep]\nedge_method = \"path\"",
            "[sweep] edge_method: only applies to kind = \"edges\" or \"edge_prune\"",
        ),
        (
            "[sweep]\nkv_edges = \"kv_head\"",
            "[sweep] kv_edges: only applies to kind = \"edges\", \"edge_prune\", \"attribution\" or \"faithfulness\"",
        ),
        (
            "[sweep]\nkind = \"attribution\"\ncircuit = [\"h0.1\"]",
            "[sweep] circuit: only applies",
        ),
        (
            "[ablation]\nmetric = \"kl\"\n[sweep]\nkind = \"attribution\"\nmethod = \"eap\"",
            "[ablation] metric: KL from the full model is smallest at the full model",
        ),
        (
            "[ablation]\nnormalize = \"empty\"\n[sweep]\nkind = \"faithfulness\"\nscores_files = [\"a.json\"]",
            "[ablation] normalize: faithfulness is normalised by its own",
        ),
        (
            "[sweep]\nkind = \"faithfulness\"",
            "missing field `scores_files`",
        ),
        (
            "[sweep]\nkind = \"faithfulness\"\nscores_files = []",
            "[sweep] scores_files: give 1 to 16 files",
        ),
        (
            "[sweep]\nkind = \"faithfulness\"\nscores_files = [\"a.json\"]\npercentages = [1, 0.5]",
            "[sweep] percentages: must increase",
        ),
        (
            "[sweep]\nkind = \"faithfulness\"\nscores_files = [\"a.json\"]\npercentages = [0, 100]",
            "[sweep] percentages: 0 is outside (0, 100]",
        ),
        (
            "[sweep]\nkind = \"faithfulness\"\nscores_files = [\"a.json\"]\nthreshold = 80",
            "[sweep] threshold: only applies",
        ),
        (
            "[sweep]\nsteps = 3",
            "[sweep] steps: only applies to kind = \"prune\", \"edge_prune\" or \"attribution\"",
        ),
        (
            "[sweep]\nkind = \"edge_prune\"\nmethod = \"eap\"",
            "[sweep] method: chooses the attribution that orders candidates; it applies with candidates = \"attribution\"",
        ),
        (
            "[sweep]\nkind = \"edge_prune\"\ncandidates = \"attribution\"\norders = 4",
            "[sweep] orders: an order study visits candidates in random orders",
        ),
        (
            "[sweep]\nkind = \"edge_prune\"\ncandidates = \"attribution\"\nedge_method = \"path\"",
            "[sweep] edge_method: edge_method = \"path\" prunes in one pass",
        ),
        (
            "[sweep]\nkind = \"prune\"\ncandidates = \"attribution\"\nschedule = \"backward\"",
            "[sweep] schedule: the schedule orders plain greedy's passes",
        ),
        (
            "[ablation]\nmetric = \"accuracy\"\n[sweep]\nkind = \"prune\"\ncandidates = \"attribution\"",
            "[ablation] metric: attribution differentiates the metric",
        ),
        (
            "[ablation]\nmetric = \"kl\"\n[sweep]\nkind = \"edge_prune\"\ncandidates = \"attribution\"\nmethod = \"eap\"",
            "[ablation] metric: KL from the full model is smallest at the full model",
        ),
        (
            "[sweep]\nkind = \"edges\"\ncandidates = \"attribution\"",
            "[sweep] candidates: only applies to kind = \"prune\" or \"edge_prune\"",
        ),
        (
            "[sweep]\nkind = \"attribution\"\nmethod = \"eap\"\nsteps = 5",
            "[sweep] steps: method = \"eap\" is one pass",
        ),
        (
            "[sweep]\nkind = \"attribution\"\nsteps = 0",
            "[sweep] steps",
        ),
        ("[sweep]\nkind = \"attribution\"\nmethod = \"ig\"", "ig"),
        (
            "[ablation]\nmetric = \"accuracy\"\n[sweep]\nkind = \"attribution\"",
            "[ablation] metric: attribution differentiates the metric",
        ),
        (
            "[ablation]\nkind = \"resample\"\ndirection = \"denoising\"\n[sweep]\nkind = \"attribution\"",
            "[ablation] direction: attribution is implemented for noising",
        ),
        (
            "[sweep]\nkind = \"edge_prune\"\nedge_method = \"path\"\norders = 4",
            "[sweep] orders: edge_method = \"path\" prunes in one pass",
        ),
        (
            "[ablation]\nnormalize = \"empty\"\n[sweep]\nkind = \"edges\"\nedge_method = \"path\"",
            "[ablation] normalize: \"empty\" does not apply to edge_method = \"path\"",
        ),
        ("[sweep]\nkind = \"edges\"\nedge_method = \"acdc\"", "acdc"),
        (
            "[ablation]\nfold_value_bias = true",
            "[ablation] fold_value_bias: only changes zero ablation (here kind = `mean`)",
        ),
        ("[sweep]\norders = 5", "[sweep] orders: only applies"),
        (
            "[sweep]\nkind = \"orders\"\norders = 100000000",
            "[sweep] orders: 100000000 is more than the cap of 100000",
        ),
        (
            "[data]\ntask = \"months\"\nn = 1000000000",
            "[data] n: 1000000000 is more than the cap of 100000",
        ),
        (
            "[data]\ntask = \"months\"\nn = 0",
            "[data] n: must be at least 1",
        ),
        (
            "[sweep]\nkind = \"downstream\"\nrandom_sets = 20000",
            "[sweep] random_sets: 20000 is more than the cap",
        ),
        (
            "[sweep]\nkind = \"downstream\"\n[downstream]\nshots = 1000",
            "[downstream] shots: 1000 is more than the cap of 64",
        ),
        (
            "[run]\nbatch_tokens = 100000000",
            "[run] batch_tokens: 100000000 is more than the cap",
        ),
        (
            "[run]\nbatch_tokens = 0",
            "[run] batch_tokens: must be at least 1",
        ),
        (
            "[run]\nprofile = \"\"",
            "[run] profile: must be a profile's name",
        ),
        (
            "[sweep]\nkind = \"orders\"\nschedule = \"forward\"",
            "[sweep] schedule: only applies to kind = \"prune\"",
        ),
        (
            "[sweep]\nkind = \"orders\"\nthresholds = [90, 80]",
            "[sweep] thresholds: only applies to kind = \"prune\"",
        ),
        (
            "[sweep]\nkind = \"nodes\"\nseed = 3",
            "[sweep] seed: only applies to kind = \"orders\", \"edge_prune\" or \"downstream\"",
        ),
        (
            "[sweep]\nkind = \"orders\"\norders = \"x\"",
            "[sweep] \"x\": expected a number of orders or \"auto\"",
        ),
        ("[ablation]\nmetric = \"loss\"", "metric"),
        (
            "[sweep]\nrandom_sets = 3",
            "[sweep] random_sets: only applies",
        ),
        (
            "[data]\ntask = \"months\"\n[sweep]\nkind = \"downstream\"",
            "[data] task: kind = \"downstream\" takes its prompts from [downstream]",
        ),
        (
            "[ablation]\nkind = \"resample\"\n[sweep]\nkind = \"downstream\"",
            "[ablation] kind",
        ),
        (
            "[sweep]\nkind = \"downstream\"\n[downstream]\ntasks = [\"mul\"]",
            "mul",
        ),
        (
            "[sweep]\nkind = \"downstream\"\n[downstream]\nn = 0",
            "[downstream] n",
        ),
        ("[downstream]\nn = 5", "[downstream] tasks: only applies"),
        (
            "[sweep]\nkind = \"downstream\"\nthreshold = 80",
            "[sweep] threshold",
        ),
        (
            "[ablation]\nmetric = \"kl\"\n[sweep]\nkind = \"prune\"\nthreshold = 80",
            "[sweep] threshold: a % threshold does not apply with [ablation] metric = \"kl\"",
        ),
        (
            "[ablation]\nmetric = \"kl\"\n[sweep]\nkind = \"prune\"\nthresholds = [90, 80]",
            "[sweep] thresholds: a % threshold",
        ),
        (
            "[sweep]\nkind = \"prune\"\ntau = 0.01",
            "[sweep] tau: applies to [ablation] metric = \"kl\" (here `logit_diff`",
        ),
        (
            "[ablation]\nmetric = \"kl\"\n[sweep]\nkind = \"nodes\"\ntau = 0.01",
            "[sweep] tau: only applies to kind = \"prune\", \"orders\" or \"edge_prune\"",
        ),
        (
            "[ablation]\nmetric = \"kl\"\n[sweep]\nkind = \"orders\"\ntau = -1",
            "[sweep] tau: -1 is not",
        ),
        (
            "[ablation]\nmetric = \"kl\"\nnormalize = \"clean_corrupt\"",
            "[ablation] normalize: does not apply to metric = \"kl\"",
        ),
        (
            "[sweep]\nkind = \"orders\"\nextends = \"r.json\"",
            "[sweep] extends: an extension continues the earlier study's seeded orders",
        ),
        (
            "[sweep]\nkind = \"orders\"\norders_file = \"o.json\"\nextends = \"r.json\"",
            "give `orders`",
        ),
        (
            "[sweep]\nkind = \"orders\"\norders = \"auto\"\norders_file = \"o.json\"",
            "[sweep] orders: `orders` draws seeded random orders and `orders_file` names explicit ones",
        ),
        (
            "[sweep]\nkind = \"edge_prune\"\nextends = \"r.json\"",
            "[sweep] extends: an extension continues the earlier study's seeded orders",
        ),
        (
            "[sweep]\nkind = \"prune\"\nextends = \"r.json\"",
            "[sweep] extends: only applies to kind = \"orders\" or \"edge_prune\"",
        ),
        (
            "[sweep]\nkind = \"orders\"\norders = 50\nci_width = 0.05",
            "[sweep] ci_width: `ci_width` is the rule of orders = \"auto\"",
        ),
        (
            "[sweep]\nkind = \"edge_prune\"\nmax_orders = 50",
            "[sweep] max_orders: `max_orders` is the rule of orders = \"auto\"",
        ),
        (
            "[sweep]\nkind = \"orders\"\norders = \"auto\"\nci_width = 0.5",
            "[sweep] ci_width: 0.5 is not a half-width between 0 and 0.5",
        ),
        (
            "[sweep]\nkind = \"orders\"\norders = \"auto\"\nci_width = -1",
            "[sweep] ci_width: -1 is not a half-width",
        ),
        (
            "[sweep]\nkind = \"orders\"\norders = \"auto\"\nmax_orders = 0",
            "[sweep] max_orders",
        ),
        (
            "[sweep]\nkind = \"orders\"\norders = \"many\"",
            "\"many\": expected a number of orders or \"auto\"",
        ),
        (
            "[sweep]\nkind = \"orders\"\norders = -3",
            "-3: expected a number of orders or \"auto\"",
        ),
        (
            "[sweep]\nkind = \"prune\"\nci_width = 0.05",
            "[sweep] ci_width: only applies to kind = \"orders\" or \"edge_prune\"",
        ),
    ];
    for (text, needle) in cases {
        let err = parse(text).unwrap_err().to_string();
        assert!(
            err.starts_with("s.toml: ") && err.contains(needle),
            "{text:?}: {err}"
        );
    }
}

#[test]
fn the_stored_forms_read_back_for_every_kind() {
    // The flat form a submission sends (TOML) and `result.json` holds (JSON, absent options
    // as nulls) carries `seed` and `schedule` whatever the kind: both must read back.
    let specs = [
        "",
        "[sweep]\nkind = \"prune\"\nthresholds = [90, 80]\nschedule = \"forward\"",
        "[sweep]\nkind = \"orders\"\norders = 7\nseed = 3",
        "[sweep]\nkind = \"orders\"\norders = \"auto\"\nci_width = 0.04\nmax_orders = 600",
        "[sweep]\nkind = \"edge_prune\"\norders = \"auto\"\nthreshold = 70",
        "[sweep]\nkind = \"edges\"\ncircuit = [\"h0.1\", \"m1\"]\npositions = [-1]\nkv_edges = \"kv_head\"",
        "[sweep]\nkind = \"edge_prune\"\nedge_method = \"path\"\nthreshold = 70",
        "[sweep]\nkind = \"downstream\"\nrandom_sets = 4\nseed = 2",
        "[sweep]\nkind = \"attribution\"\nmethod = \"eap_ig\"\nsteps = 9\nover = \"nodes\"\npositions = [-1]",
        "[sweep]\nkind = \"faithfulness\"\nscores_files = [\"a/result.json\", \"m.json\"]\npercentages = [1, 10, 100]",
    ];
    for text in specs {
        let s = parse(text).unwrap();
        let toml_text = toml::to_string(&s).unwrap();
        assert_eq!(parse(&toml_text).unwrap(), s, "{toml_text}");
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("null"), "{json}");
        assert_eq!(
            serde_json::from_str::<SweepSpec>(&json).unwrap(),
            s,
            "{json}"
        );
    }
}

#[test]
fn every_example_spec_parses_and_validates() {
    // The README points researchers at them: each must run as it is.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut dirs = vec![root];
    let mut seen = 0;
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&p).unwrap();
                if let Err(e) = SweepSpec::parse(&text, &p) {
                    panic!("{}: {e}", p.display());
                }
                seen += 1;
            }
        }
    }
    assert!(seen >= 10, "{seen} example specs");
}
