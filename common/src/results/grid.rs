//! A labelled grid heatmap on a sequential scale (white at `lo`, dark blue at `hi`): successor
//! and copy scores of every head, a cross-task score matrix, an attention pattern.

use super::{esc, svg_header};

/// RGB on the sequential scale, `t` in 0..=1.
fn shade(t: f64) -> String {
    let t = t.clamp(0.0, 1.0);
    let mix = |a: f64, b: f64| (a * (1.0 - t) + b * t).round() as u8;
    format!(
        "rgb({},{},{})",
        mix(255.0, 8.0),
        mix(255.0, 48.0),
        mix(255.0, 107.0)
    )
}

/// A grid to draw.
#[derive(Debug, Clone)]
pub struct Grid<'a> {
    /// Row labels (top to bottom).
    pub rows: &'a [String],
    /// Column labels (left to right).
    pub cols: &'a [String],
    /// `[rows][cols]` values; NaN cells are left blank.
    pub values: &'a [Vec<f64>],
    /// Value drawn white.
    pub lo: f64,
    /// Value drawn darkest.
    pub hi: f64,
    /// Title.
    pub title: &'a str,
    /// Subtitle (what the colour means).
    pub sub: &'a str,
    /// Decimals printed in each cell (`None`: no numbers, for large grids).
    pub decimals: Option<usize>,
    /// Cell size in pixels.
    pub cell: f64,
    /// Column labels written vertically (long labels, such as tokens).
    pub vertical_cols: bool,
}

/// The SVG of a grid.
pub fn grid_svg(g: &Grid<'_>) -> String {
    let cell = g.cell;
    let label_w = g.rows.iter().map(|r| r.chars().count()).max().unwrap_or(0) as f64 * 6.5 + 12.0;
    let col_h = if g.vertical_cols {
        g.cols.iter().map(|c| c.chars().count()).max().unwrap_or(0) as f64 * 6.5 + 12.0
    } else {
        18.0
    };
    let left = label_w.max(40.0);
    let top = 44.0 + col_h;
    let width = (left + g.cols.len() as f64 * cell + 30.0)
        .max(20.0 + 7.0 * g.title.len().max(g.sub.len()) as f64);
    let height = top + g.rows.len() as f64 * cell + 50.0;
    let mut out = svg_header(width, height, 10.0, g.title, g.sub);
    for (j, c) in g.cols.iter().enumerate() {
        let x = left + (j as f64 + 0.5) * cell;
        if g.vertical_cols {
            out.push_str(&format!(
                "<text x=\"{x}\" y=\"{}\" transform=\"rotate(-90 {x} {})\" dominant-baseline=\"middle\">{}</text>\n",
                top - 6.0,
                top - 6.0,
                esc(c)
            ));
        } else {
            out.push_str(&format!(
                "<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
                top - 6.0,
                esc(c)
            ));
        }
    }
    let span = (g.hi - g.lo).abs().max(f64::MIN_POSITIVE);
    for (i, r) in g.rows.iter().enumerate() {
        let y = top + i as f64 * cell;
        out.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n",
            left - 6.0,
            y + cell / 2.0 + 3.0,
            esc(r)
        ));
        for (j, &v) in g.values[i].iter().enumerate() {
            if v.is_nan() {
                continue;
            }
            let x = left + j as f64 * cell;
            let t = (v - g.lo) / span;
            let ink = if t > 0.55 { "white" } else { "black" };
            let text = g.decimals.map_or(String::new(), |d| {
                format!(
                    "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"9\" fill=\"{ink}\">{v:.d$}</text>",
                    x + cell / 2.0,
                    y + cell / 2.0 + 3.0
                )
            });
            out.push_str(&format!(
                "<g><title>{} / {}: {v:.3}</title><rect x=\"{x}\" y=\"{y}\" width=\"{cell}\" height=\"{cell}\" fill=\"{}\" stroke=\"#eee\"/>{text}</g>\n",
                esc(r),
                esc(&g.cols[j]),
                shade(t)
            ));
        }
    }
    // Legend.
    let ly = top + g.rows.len() as f64 * cell + 16.0;
    for k in 0..=4 {
        let v = g.lo + (g.hi - g.lo) * k as f64 / 4.0;
        let x = left + k as f64 * 44.0;
        out.push_str(&format!(
            "<rect x=\"{x}\" y=\"{ly}\" width=\"44\" height=\"10\" fill=\"{}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            shade(k as f64 / 4.0),
            x + 22.0,
            ly + 22.0,
            trim(v)
        ));
    }
    out.push_str("</svg>\n");
    out
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_cell_per_value_blank_for_nan() {
        let rows = vec!["layer 0".to_string(), "layer 1".to_string()];
        let cols = vec!["h0".to_string(), "h1".to_string()];
        let values = vec![vec![0.0, 100.0], vec![f64::NAN, 50.0]];
        let svg = grid_svg(&Grid {
            rows: &rows,
            cols: &cols,
            values: &values,
            lo: 0.0,
            hi: 100.0,
            title: "t",
            sub: "s",
            decimals: Some(0),
            cell: 30.0,
            vertical_cols: false,
        });
        assert_eq!(svg.matches("<title>").count(), 3);
        assert!(svg.contains("<title>layer 0 / h1: 100.000</title>"));
        assert!(svg.contains(&shade(1.0)) && svg.contains(&shade(0.0)));
    }
}
