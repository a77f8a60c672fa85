//! The head heatmap: layers as rows, heads as columns (and the MLP as a last column), a
//! diverging scale around 100 % (blue: ablating hurts; red: ablating helps), or for KL scores a
//! sequential scale from 0 nats (white) to the largest divergence (blue).

use super::NodeScores;
use crate::metric::Unit;

/// RGB of a KL score on a sequential scale: white at 0, full blue at `max` and above.
fn colour_nats(score: f64, max: f64) -> String {
    let k = if max > 0.0 {
        (score / max).clamp(0.0, 1.0)
    } else {
        0.0
    };
    format!(
        "rgb({},{},{})",
        (255.0 * (1.0 - k) + 33.0 * k).round() as u8,
        (255.0 * (1.0 - k) + 102.0 * k).round() as u8,
        (255.0 * (1.0 - k) + 172.0 * k).round() as u8
    )
}

/// RGB of a score on a diverging scale: white at 100, full blue at 0 or below, full red at 200.
fn colour(score: f64) -> String {
    let t = ((score - 100.0) / 100.0).clamp(-1.0, 1.0);
    let (r, g, b) = if t < 0.0 {
        let k = -t;
        (
            255.0 * (1.0 - k) + 33.0 * k,
            255.0 * (1.0 - k) + 102.0 * k,
            255.0 * (1.0 - k) + 172.0 * k,
        )
    } else {
        (
            255.0 * (1.0 - t) + 178.0 * t,
            255.0 * (1.0 - t) + 24.0 * t,
            255.0 * (1.0 - t) + 43.0 * t,
        )
    };
    format!(
        "rgb({},{},{})",
        r.round() as u8,
        g.round() as u8,
        b.round() as u8
    )
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// An SVG heatmap of node-sweep scores in `unit`.
pub fn head_heatmap_svg(s: &NodeScores, title: &str, unit: Unit) -> String {
    let layers = s.heads.len();
    let heads = s.heads.first().map_or(0, Vec::len);
    let (cell, left, top) = (34.0, 60.0, 56.0);
    // Wide enough for the grid and for the title and subtitle (about 7 px a character).
    let width =
        (left + (heads + 2) as f64 * cell + 40.0).max(left + 7.0 * title.len().max(80) as f64);
    let height = top + layers as f64 * cell + 60.0;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"10\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"18\" font-size=\"13\">{}</text>\n\
         <text x=\"{left}\" y=\"34\" fill=\"#555\">{}</text>\n",
        esc(title),
        match unit {
            Unit::Percent =>
                "score with the component ablated alone (% of the full model; blue: it matters)",
            Unit::Nats =>
                "KL divergence from the full model with the component ablated alone (nats; blue: it matters)",
        }
    );
    let max = s
        .heads
        .iter()
        .flatten()
        .chain(&s.mlps)
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let fill = |v: f64| match unit {
        Unit::Percent => colour(v),
        Unit::Nats => colour_nats(v, max),
    };
    for h in 0..heads {
        let x = left + (h as f64 + 0.5) * cell;
        out.push_str(&format!(
            "<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">h{h}</text>\n",
            top - 6.0
        ));
    }
    let mx = left + (heads as f64 + 1.5) * cell;
    out.push_str(&format!(
        "<text x=\"{mx}\" y=\"{}\" text-anchor=\"middle\">MLP</text>\n",
        top - 6.0
    ));
    for l in 0..layers {
        let y = top + l as f64 * cell;
        out.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">layer {l}</text>\n",
            left - 6.0,
            y + cell / 2.0 + 3.0
        ));
        let cells = s.heads[l]
            .iter()
            .enumerate()
            .map(|(h, v)| (h as f64, *v, format!("h{l}.{h}")));
        let mlp = std::iter::once((heads as f64 + 1.0, s.mlps[l], format!("m{l}")));
        for (col, v, name) in cells.chain(mlp) {
            let x = left + col * cell;
            out.push_str(&format!(
                "<g><title>{name}: {v:.2}</title><rect x=\"{x}\" y=\"{y}\" width=\"{cell}\" height=\"{cell}\" fill=\"{}\" stroke=\"#ddd\"/>\
                 <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"9\">{}</text></g>\n",
                fill(v),
                x + cell / 2.0,
                y + cell / 2.0 + 3.0,
                match unit {
                    Unit::Percent => format!("{v:.0}"),
                    Unit::Nats => format!("{v:.2}"),
                }
            ));
        }
    }
    // Legend.
    let ly = top + layers as f64 * cell + 20.0;
    let stops: Vec<f64> = match unit {
        Unit::Percent => vec![0.0, 50.0, 100.0, 150.0, 200.0],
        Unit::Nats => (0..5).map(|i| max * i as f64 / 4.0).collect(),
    };
    for (i, v) in stops.iter().enumerate() {
        let x = left + i as f64 * 50.0;
        let label = match unit {
            Unit::Percent => format!("{v}"),
            Unit::Nats => format!("{v:.3}"),
        };
        out.push_str(&format!(
            "<rect x=\"{x}\" y=\"{ly}\" width=\"50\" height=\"12\" fill=\"{}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{label}</text>\n",
            fill(*v),
            x + 25.0,
            ly + 24.0
        ));
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_diverge_around_100() {
        assert_eq!(colour(100.0), "rgb(255,255,255)");
        assert_eq!(colour(0.0), "rgb(33,102,172)");
        assert_eq!(colour(-50.0), colour(0.0));
        assert_eq!(colour(250.0), "rgb(178,24,43)");
    }

    #[test]
    fn one_cell_per_component_with_its_name() {
        let s = NodeScores {
            heads: vec![vec![100.0, 20.0], vec![90.0, 110.0]],
            mlps: vec![5.0, 95.0],
        };
        let svg = head_heatmap_svg(&s, "t <1>", Unit::Percent);
        assert_eq!(svg.matches("<title>").count(), 6);
        assert!(
            svg.contains("<title>h0.1: 20.00</title>") && svg.contains("<title>m1: 95.00</title>")
        );
        assert!(svg.contains("t &lt;1&gt;"));
    }

    #[test]
    fn kl_scores_shade_from_white_at_zero_to_blue_at_the_largest() {
        let s = NodeScores {
            heads: vec![vec![0.0, 0.4], vec![0.1, 0.0]],
            mlps: vec![0.8, 0.0],
        };
        let svg = head_heatmap_svg(&s, "kl", Unit::Nats);
        // The largest divergence is the darkest cell; no divergence is white.
        let fill_of = |name: &str| {
            let at = svg.find(&format!("<title>{name}</title>")).unwrap();
            let rest = &svg[at..];
            let f = rest.find("fill=\"").unwrap() + 6;
            rest[f..f + rest[f..].find('"').unwrap()].to_string()
        };
        assert_eq!(fill_of("m0: 0.80"), "rgb(33,102,172)");
        assert_eq!(fill_of("h0.0: 0.00"), "rgb(255,255,255)");
        assert!(svg.contains("(nats; blue: it matters)"));
        // A diverging % scale would have drawn every cell of these small values deep blue.
        assert_eq!(svg.matches("fill=\"rgb(33,102,172)\"").count(), 2);
    }
}
