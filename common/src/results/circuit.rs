//! Drawings of a node circuit (an SVG grid, layers as rows, and a Graphviz DOT file) and of the
//! order study's inclusion frequencies (an SVG bar chart).

use std::collections::BTreeMap;

use super::{esc, svg_header};
use crate::component::Component;

/// The circuit as a grid: every component a cell, the kept ones filled. `shade` (0..=1) per
/// component, when given, fills cells by inclusion frequency instead.
pub fn circuit_svg(
    n_layers: usize,
    n_heads: usize,
    shade: &dyn Fn(&Component) -> f64,
    title: &str,
    subtitle: &str,
) -> String {
    let (cell, left, top) = (30.0, 60.0, 56.0);
    let width = (left + (n_heads + 2) as f64 * cell + 40.0)
        .max(left + 7.0 * title.len().max(subtitle.len()) as f64);
    let height = top + n_layers as f64 * cell + 20.0;
    let mut out = svg_header(width, height, left, title, subtitle);
    for h in 0..n_heads {
        out.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">h{h}</text>\n",
            left + (h as f64 + 0.5) * cell,
            top - 6.0
        ));
    }
    out.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">MLP</text>\n",
        left + (n_heads as f64 + 1.5) * cell,
        top - 6.0
    ));
    for layer in 0..n_layers {
        let y = top + layer as f64 * cell;
        out.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">layer {layer}</text>\n",
            left - 6.0,
            y + cell / 2.0 + 3.0
        ));
        let comps = (0..n_heads)
            .map(|head| (head as f64, Component::Head { layer, head }))
            .chain(std::iter::once((
                n_heads as f64 + 1.0,
                Component::Mlp { layer },
            )));
        for (col, c) in comps {
            let v = shade(&c).clamp(0.0, 1.0);
            let g = (255.0 - v * (255.0 - 40.0)).round() as u8;
            let b = (255.0 - v * (255.0 - 90.0)).round() as u8;
            let x = left + col * cell;
            let label = if v > 0.0 {
                format!("{c}")
            } else {
                String::new()
            };
            let ink = if v > 0.5 { "white" } else { "black" };
            out.push_str(&format!(
                "<g><title>{c}: {v:.2}</title><rect x=\"{x}\" y=\"{y}\" width=\"{cell}\" height=\"{cell}\" fill=\"rgb({g},{g},{b})\" stroke=\"#ccc\"/>\
                 <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"8\" fill=\"{ink}\">{label}</text></g>\n",
                x + cell / 2.0,
                y + cell / 2.0 + 3.0
            ));
        }
    }
    out.push_str("</svg>\n");
    out
}

/// The circuit for Graphviz: one row of nodes per layer (heads as ellipses, MLPs as boxes),
/// layers top to bottom.
pub fn circuit_dot(circuit: &[Component], title: &str) -> String {
    let mut by_layer: BTreeMap<usize, Vec<Component>> = BTreeMap::new();
    for c in circuit {
        by_layer.entry(c.layer()).or_default().push(*c);
    }
    let mut out = format!(
        "digraph circuit {{\n  label=\"{}\";\n  labelloc=t;\n  rankdir=TB;\n  node [fontname=\"sans-serif\"];\n",
        title.replace('"', "'")
    );
    let mut prev: Option<String> = None;
    for (layer, comps) in &by_layer {
        out.push_str(&format!("  subgraph layer{layer} {{\n    rank=same;\n"));
        for c in comps {
            let shape = if matches!(c, Component::Mlp { .. }) {
                "box"
            } else {
                "ellipse"
            };
            out.push_str(&format!("    \"{c}\" [shape={shape}];\n"));
        }
        out.push_str("  }\n");
        // Invisible edges keep the layers in order.
        if let Some(p) = &prev {
            out.push_str(&format!("  \"{p}\" -> \"{}\" [style=invis];\n", comps[0]));
        }
        prev = Some(comps[0].to_string());
    }
    out.push_str("}\n");
    out
}

/// Inclusion frequency of each component over the order study's circuits, as bars, each with
/// its 95 % interval as a whisker where `ci` has one; a line at 0.5 marks the consensus.
pub fn frequency_svg(
    freq: &BTreeMap<String, f64>,
    ci: &BTreeMap<String, [f64; 2]>,
    title: &str,
) -> String {
    let mut items: Vec<(&String, f64)> = freq.iter().map(|(k, v)| (k, *v)).collect();
    items.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let (row, left, top, bar_w) = (16.0f64, 70.0f64, 44.0f64, 300.0f64);
    let sub = "share of orders whose circuit keeps the component, with its 95 % interval; right of the dashed line: the consensus";
    let height = top + items.len() as f64 * row + 30.0;
    let width = (left + bar_w + 60.0).max(left + 6.0 * title.len().max(sub.len()) as f64);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"10\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{left}\" y=\"18\" font-size=\"13\">{}</text>\n\
         <text x=\"{left}\" y=\"34\" fill=\"#555\">{sub}</text>\n",
        esc(title)
    );
    for (i, (name, v)) in items.iter().enumerate() {
        let y = top + i as f64 * row;
        let yc = y + row / 2.0;
        let interval = ci.get(*name);
        let end = interval.map_or(*v, |[_, hi]| hi.max(*v));
        out.push_str(&format!(
            "<g><title>{name}: {v:.3}</title><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{name}</text>\
             <rect x=\"{left}\" y=\"{}\" width=\"{:.1}\" height=\"{}\" fill=\"#2a6fb0\"/>\
             <text x=\"{:.1}\" y=\"{}\">{v:.2}</text></g>\n",
            left - 6.0,
            yc + 3.0,
            y + 2.0,
            v * bar_w,
            row - 4.0,
            left + end * bar_w + 5.0,
            yc + 3.0
        ));
        // The interval over the bar, with end caps.
        if let Some([lo, hi]) = interval {
            let (x0, x1) = (left + lo * bar_w, left + hi * bar_w);
            out.push_str(&format!(
                "<path d=\"M {x0:.1} {:.1} V {:.1} M {x0:.1} {yc:.1} H {x1:.1} M {x1:.1} {:.1} V {:.1}\" stroke=\"#e08214\" stroke-width=\"1.5\" fill=\"none\"><title>{name}: 95 % interval {lo:.3} to {hi:.3}</title></path>\n",
                yc - 3.0,
                yc + 3.0,
                yc - 3.0,
                yc + 3.0
            ));
        }
    }
    out.push_str(&format!(
        "<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#444\" stroke-dasharray=\"3 3\"/>\n",
        top + items.len() as f64 * row,
        x = left + 0.5 * bar_w
    ));
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drawings_name_every_kept_component() {
        let kept: Vec<Component> = ["h0.1", "m0", "h1.0"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let svg = circuit_svg(
            2,
            2,
            &|c| if kept.contains(c) { 1.0 } else { 0.0 },
            "t",
            "s",
        );
        assert_eq!(svg.matches("<title>").count(), 6);
        assert!(
            svg.contains("<title>h0.1: 1.00</title>") && svg.contains("<title>h0.0: 0.00</title>")
        );
        let dot = circuit_dot(&kept, "t");
        assert!(dot.contains("\"m0\" [shape=box]") && dot.contains("\"h1.0\" [shape=ellipse]"));
        assert!(dot.contains("\"h0.1\" -> \"h1.0\" [style=invis]"));
        let f = frequency_svg(
            &BTreeMap::from([("h0.1".to_string(), 1.0), ("m0".to_string(), 0.25)]),
            &BTreeMap::from([("m0".to_string(), [0.1, 0.5])]),
            "f",
        );
        assert!(f.contains("<title>m0: 95 % interval 0.100 to 0.500</title>"));
        assert_eq!(
            f.matches("95 % interval").count(),
            2,
            "the subtitle and m0's whisker"
        );
        assert!(
            f.find("h0.1").unwrap() < f.find("m0").unwrap(),
            "sorted by frequency"
        );
    }
}
