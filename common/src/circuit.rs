//! A node circuit given by file, for edge sweeps restricted to it: a JSON list of component
//! names, or the `result.json` of an earlier run (a pruning run's last circuit, or an order
//! study's core).

use crate::component::Component;

/// Parses a circuit from JSON text; `source` names the file in errors. Components are checked
/// against the model's shape.
pub fn parse_circuit(
    text: &str,
    source: &str,
    n_layers: usize,
    n_heads: usize,
) -> Result<Vec<Component>, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("{source}: not JSON: {e}"))?;
    let names: Vec<serde_json::Value> = if let Some(list) = v.as_array() {
        list.clone()
    } else if let Some(run) = v.get("prune") {
        // One run, or nested thresholds: the last (smallest) circuit.
        let run = run.as_array().and_then(|a| a.last()).unwrap_or(run);
        let part = |k: &str| run.get(k).and_then(|x| x.as_array()).cloned();
        match (part("heads"), part("mlps")) {
            (Some(h), Some(m)) => h.into_iter().chain(m).collect(),
            _ => return Err(format!("{source}: `prune` has no `heads` and `mlps`")),
        }
    } else if let Some(core) = v.pointer("/orders/core").and_then(|c| c.as_array()) {
        core.clone()
    } else {
        return Err(format!(
            "{source}: expected a JSON list of component names, or a result.json with a \
             `prune` run or an `orders` study"
        ));
    };
    let mut out = vec![];
    for (i, n) in names.iter().enumerate() {
        let name = n
            .as_str()
            .ok_or_else(|| format!("{source}: entry {i} is not a component name: {n}"))?;
        let c: Component = name.parse().map_err(|e| format!("{source}: {e}"))?;
        c.check(n_layers, n_heads)
            .map_err(|e| format!("{source}: {e}"))?;
        out.push(c);
    }
    if out.is_empty() {
        return Err(format!("{source}: the circuit is empty"));
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_results_folders_give_circuits() {
        let c = parse_circuit(r#"["m1", "h0.1", "h0.1"]"#, "c.json", 2, 2).unwrap();
        assert_eq!(c.len(), 2);
        let nested = r#"{"prune": [{"heads": ["h0.0", "h1.1"], "mlps": ["m0"]},
                                    {"heads": ["h1.1"], "mlps": ["m0"]}]}"#;
        let c = parse_circuit(nested, "result.json", 2, 2).unwrap();
        assert_eq!(c, vec!["h1.1".parse().unwrap(), "m0".parse().unwrap()]);
        let core = r#"{"orders": {"core": ["h0.1"]}}"#;
        assert_eq!(parse_circuit(core, "r", 2, 2).unwrap().len(), 1);
        for (bad, needle) in [
            ("[1]", "entry 0"),
            (r#"["h5.0"]"#, "h5.0"),
            ("{}", "expected a JSON list"),
            ("[]", "empty"),
            ("nope", "not JSON"),
        ] {
            let e = parse_circuit(bad, "c.json", 2, 2).unwrap_err();
            assert!(
                e.starts_with("c.json: ") && e.contains(needle),
                "{bad}: {e}"
            );
        }
    }
}
