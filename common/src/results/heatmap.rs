//! The head heatmap: layers as rows, heads as columns (and the MLP as a last column), a
//! diverging scale around 100 % (blue: ablating hurts; red: ablating helps).

use super::NodeScores;

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

/// An SVG heatmap of node-sweep scores.
pub fn head_heatmap_svg(s: &NodeScores, title: &str) -> String {
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
         <text x=\"{left}\" y=\"34\" fill=\"#555\">score with the component ablated alone (% of the full model; blue: it matters)</text>\n",
        esc(title)
    );
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
                 <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"9\">{v:.0}</text></g>\n",
                colour(v),
                x + cell / 2.0,
                y + cell / 2.0 + 3.0
            ));
        }
    }
    // Legend.
    let ly = top + layers as f64 * cell + 20.0;
    for (i, v) in [0.0, 50.0, 100.0, 150.0, 200.0].iter().enumerate() {
        let x = left + i as f64 * 50.0;
        out.push_str(&format!(
            "<rect x=\"{x}\" y=\"{ly}\" width=\"50\" height=\"12\" fill=\"{}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{v}</text>\n",
            colour(*v),
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
        let svg = head_heatmap_svg(&s, "t <1>");
        assert_eq!(svg.matches("<title>").count(), 6);
        assert!(
            svg.contains("<title>h0.1: 20.00</title>") && svg.contains("<title>m1: 95.00</title>")
        );
        assert!(svg.contains("t &lt;1&gt;"));
    }
}
