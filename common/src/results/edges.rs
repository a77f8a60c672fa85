//! Edge results: the scores as CSV, and the edge circuit drawn as Graphviz DOT and as SVG
//! (embed at the bottom, one row per layer, logits at the top; query, key and value inputs in
//! their own colours; line width by how much ablating the edge alone costs).

use super::{esc, svg_header};
use crate::component::Component;
use crate::edge::{Edge, Qkv, Receiver, Sender};

/// `edge,sender,receiver,score` rows in graph order.
pub fn edges_csv(edges: &[Edge], scores: &[f64]) -> String {
    let mut out = String::from("edge,sender,receiver,score\n");
    for (e, s) in edges.iter().zip(scores) {
        out.push_str(&format!("{e},{},{},{s}\n", e.sender, e.receiver));
    }
    out
}

/// The colour of an edge by what it feeds.
fn colour(r: &Receiver) -> &'static str {
    match r {
        Receiver::Attn { which: Qkv::Q, .. } => "#1f77b4",
        Receiver::Attn { which: Qkv::K, .. } => "#2ca02c",
        Receiver::Attn { which: Qkv::V, .. } => "#d62728",
        Receiver::Mlp { .. } => "#7f7f7f",
        Receiver::Logits => "#000000",
    }
}

/// Line widths from importances (`|100 - score|` of each edge ablated alone): 0.6 to 5.
fn widths(importance: &[f64]) -> Vec<f64> {
    let max = importance.iter().cloned().fold(0.0, f64::max);
    importance
        .iter()
        .map(|&i| {
            if max > 0.0 {
                0.6 + 4.4 * (i / max).clamp(0.0, 1.0)
            } else {
                1.0
            }
        })
        .collect()
}

/// The node a receiver belongs to (`h9.1` for `h9.1.q`; a key/value head is drawn at its first
/// query head, `group` query heads sharing it).
fn receiver_node(r: &Receiver, group: usize) -> String {
    match *r {
        Receiver::Attn {
            layer,
            index,
            which: Qkv::Q,
        } => format!("h{layer}.{index}"),
        Receiver::Attn { layer, index, .. } => format!("h{layer}.{}", index * group),
        Receiver::Mlp { layer } => format!("m{layer}"),
        Receiver::Logits => "logits".into(),
    }
}

/// The circuit's edges as a Graphviz digraph.
pub fn edge_dot(edges: &[Edge], importance: &[f64], group: usize, title: &str) -> String {
    let mut out = format!(
        "digraph circuit {{\n  label=\"{}\";\n  labelloc=t;\n  rankdir=BT;\n  node [shape=box, fontname=\"sans-serif\"];\n",
        esc(title)
    );
    for (e, w) in edges.iter().zip(widths(importance)) {
        let input = match e.receiver {
            Receiver::Attn { which, .. } => match which {
                Qkv::Q => "q",
                Qkv::K => "k",
                Qkv::V => "v",
            },
            _ => "",
        };
        out.push_str(&format!(
            "  \"{}\" -> \"{}\" [color=\"{}\", penwidth={w:.2}, label=\"{input}\", tooltip=\"{}\"];\n",
            e.sender,
            receiver_node(&e.receiver, group),
            colour(&e.receiver),
            esc(&e.to_string())
        ));
    }
    out.push_str("}\n");
    out
}

/// The circuit's edges drawn on the model's layout: rows are layers (embed at the bottom, the
/// logits at the top), heads by index and the MLP at the right of each row.
pub fn edge_svg(
    n_layers: usize,
    n_heads: usize,
    group: usize,
    edges: &[Edge],
    importance: &[f64],
    title: &str,
    subtitle: &str,
) -> String {
    let (col, row, left, top) = (46.0, 58.0, 70.0, 70.0);
    let width = (left + (n_heads + 2) as f64 * col + 30.0)
        .max(left + 7.0 * title.len().max(subtitle.len()) as f64);
    let height = top + (n_layers + 2) as f64 * row + 30.0;
    // Row 0 is the logits (top), row n_layers + 1 the embedding (bottom).
    let y_of = |r: usize| top + r as f64 * row + row / 2.0;
    let layer_y = |l: usize| y_of(n_layers - l);
    let x_head = |h: usize| left + (h as f64 + 0.5) * col;
    let x_mlp = left + (n_heads as f64 + 1.2) * col;
    let x_mid = left + (n_heads as f64 / 2.0 + 0.5) * col;
    let sender_pos = |s: &Sender| match *s {
        Sender::Embed => (x_mid, y_of(n_layers + 1)),
        Sender::Node(Component::Head { layer, head }) => (x_head(head), layer_y(layer)),
        Sender::Node(Component::Mlp { layer }) => (x_mlp, layer_y(layer)),
    };
    let receiver_pos = |r: &Receiver| match *r {
        Receiver::Attn {
            layer,
            index,
            which,
        } => {
            let head = if which == Qkv::Q {
                index
            } else {
                index * group
            };
            // Inputs enter the bottom of the head's box, q / k / v side by side.
            let dx = match which {
                Qkv::Q => -8.0,
                Qkv::K => 0.0,
                Qkv::V => 8.0,
            };
            (x_head(head) + dx, layer_y(layer) + 9.0)
        }
        Receiver::Mlp { layer } => (x_mlp, layer_y(layer) + 9.0),
        Receiver::Logits => (x_mid, y_of(0) + 9.0),
    };
    let mut out = svg_header(width, height, left, title, subtitle);
    let mut lx = left;
    for (name, c) in [
        ("query", "#1f77b4"),
        ("key", "#2ca02c"),
        ("value", "#d62728"),
        ("MLP input", "#7f7f7f"),
        ("logits", "#000000"),
    ] {
        out.push_str(&format!(
            "<line x1=\"{lx}\" y1=\"50\" x2=\"{}\" y2=\"50\" stroke=\"{c}\" stroke-width=\"3\"/><text x=\"{}\" y=\"53\">{name}</text>\n",
            lx + 16.0,
            lx + 20.0
        ));
        lx += 30.0 + 7.0 * name.len() as f64;
    }
    for l in 0..n_layers {
        out.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" fill=\"#555\">layer {l}</text>\n",
            left - 8.0,
            layer_y(l) + 3.0
        ));
    }
    // Edges under the nodes.
    for (e, w) in edges.iter().zip(widths(importance)) {
        let (x1, y1) = sender_pos(&e.sender);
        let (x2, y2) = receiver_pos(&e.receiver);
        let my = (y1 + y2) / 2.0;
        out.push_str(&format!(
            "<path d=\"M{x1:.1},{:.1} C{x1:.1},{my:.1} {x2:.1},{my:.1} {x2:.1},{y2:.1}\" fill=\"none\" stroke=\"{}\" stroke-opacity=\"0.75\" stroke-width=\"{w:.2}\"><title>{}</title></path>\n",
            y1 - 9.0,
            colour(&e.receiver),
            esc(&e.to_string())
        ));
    }
    // Nodes that take part.
    let mut nodes: Vec<(String, f64, f64)> = vec![];
    let mut add = |name: String, (x, y): (f64, f64)| {
        if !nodes.iter().any(|n| n.0 == name) {
            nodes.push((name, x, y));
        }
    };
    for e in edges {
        add(e.sender.to_string(), sender_pos(&e.sender));
        let r = receiver_node(&e.receiver, group);
        let pos = match e.receiver {
            Receiver::Attn { .. } => {
                let c: Component = r.parse().expect("a head name");
                sender_pos(&Sender::Node(c))
            }
            Receiver::Mlp { layer } => (x_mlp, layer_y(layer)),
            Receiver::Logits => (x_mid, y_of(0)),
        };
        add(r, pos);
    }
    for (name, x, y) in nodes {
        let w = 14.0 + 6.0 * name.len() as f64;
        out.push_str(&format!(
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"18\" rx=\"4\" fill=\"#fff7e0\" stroke=\"#333\"/><text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
            x - w / 2.0,
            y - 9.0,
            y + 3.5,
            esc(&name)
        ));
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drawings_show_every_edge_and_its_input() {
        let edges: Vec<Edge> = ["embed->h0.1.q", "h0.1->h1.0.k", "h1.0->logits", "m0->m1"]
            .iter()
            .map(|e| e.parse().unwrap())
            .collect();
        let imp = [1.0, 5.0, 20.0, 0.0];
        let svg = edge_svg(2, 2, 1, &edges, &imp, "t", "s");
        for e in &edges {
            assert!(
                svg.contains(&format!("<title>{}</title>", esc(&e.to_string()))),
                "{e}"
            );
        }
        assert!(
            svg.contains("stroke-width=\"5.00\""),
            "the largest edge is widest"
        );
        assert!(svg.contains(">logits</text>") && svg.contains(">embed</text>"));
        let dot = edge_dot(&edges, &imp, 1, "t");
        assert!(
            dot.contains("\"h0.1\" -> \"h1.0\" [color=\"#2ca02c\""),
            "{dot}"
        );
        assert_eq!(dot.matches(" -> ").count(), 4);
        let csv = edges_csv(&edges, &[99.0, 95.0, 80.0, 100.0]);
        assert_eq!(csv.lines().nth(2), Some("h0.1->h1.0.k,h0.1,h1.0.k,95"));
    }
}
