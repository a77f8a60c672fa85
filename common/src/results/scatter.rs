//! A scatter plot of circuits by size and score: an order study's circuits as translucent dots
//! (where many coincide the dot darkens), named circuits as coloured marks, the pruning rule as
//! a dashed line.

use super::{esc, svg_header};

/// A named circuit drawn as a mark: name, size, score.
pub type Mark = (String, f64, f64);

const MARK_COLOURS: [&str; 3] = ["#b2182b", "#1b7837", "#762a83"];

/// Points `(x, y)` as dots, `marks` as coloured diamonds with a legend, and a dashed line at
/// `rule_y` when given. Both axes run from the lowest to the highest value shown, padded.
pub fn scatter_svg(
    points: &[(f64, f64)],
    marks: &[Mark],
    rule_y: Option<f64>,
    (x_label, y_label): (&str, &str),
    title: &str,
    sub: &str,
) -> String {
    let (left, top, plot_w, plot_h): (f64, f64, f64, f64) = (64.0, 56.0, 420.0, 260.0);
    let xs = points.iter().map(|p| p.0).chain(marks.iter().map(|m| m.1));
    let ys = points
        .iter()
        .map(|p| p.1)
        .chain(marks.iter().map(|m| m.2))
        .chain(rule_y);
    let span = |v: Vec<f64>| -> (f64, f64) {
        let v: Vec<f64> = v.into_iter().filter(|x| x.is_finite()).collect();
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if !lo.is_finite() {
            return (0.0, 1.0);
        }
        let pad = ((hi - lo) * 0.08).max(0.5);
        (lo - pad, hi + pad)
    };
    let (x0, x1) = span(xs.collect());
    let (y0, y1) = span(ys.collect());
    let px = |x: f64| left + plot_w * (x - x0) / (x1 - x0);
    let py = |y: f64| top + plot_h * (1.0 - (y - y0) / (y1 - y0));
    let width = (left + plot_w + 150.0).max(20.0 + 7.0 * title.len().max(sub.len()) as f64);
    let height = top + plot_h + 50.0;
    let mut out = svg_header(width, height, 10.0, title, sub);
    let base = top + plot_h;
    out.push_str(&format!(
        "<rect x=\"{left}\" y=\"{top}\" width=\"{plot_w}\" height=\"{plot_h}\" fill=\"none\" stroke=\"#999\"/>\n"
    ));
    for (v, anchor_x) in [(x0, px(x0)), (x1, px(x1))] {
        let shown = if v < x0 + 0.01 { v.ceil() } else { v.floor() };
        out.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{shown}</text>\n",
            anchor_x,
            base + 14.0
        ));
    }
    for v in [y0, y1] {
        out.push_str(&format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.1}</text>\n",
            left - 4.0,
            py(v) + 3.0
        ));
    }
    out.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n\
         <text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">{}</text>\n",
        left + plot_w / 2.0,
        base + 32.0,
        esc(x_label),
        top + plot_h / 2.0,
        top + plot_h / 2.0,
        esc(y_label)
    ));
    if let Some(r) = rule_y {
        out.push_str(&format!(
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#888\" stroke-dasharray=\"4 3\"/>\n",
            left + plot_w,
            y = py(r)
        ));
    }
    for (x, y) in points {
        out.push_str(&format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"#2166ac\" fill-opacity=\"0.3\"><title>{x}, {y:.3}</title></circle>\n",
            px(*x),
            py(*y)
        ));
    }
    for (i, (name, x, y)) in marks.iter().enumerate() {
        let (cx, cy, c) = (px(*x), py(*y), MARK_COLOURS[i % MARK_COLOURS.len()]);
        out.push_str(&format!(
            "<path d=\"M {cx:.1} {:.1} L {:.1} {cy:.1} L {cx:.1} {:.1} L {:.1} {cy:.1} Z\" fill=\"{c}\"><title>{}: {x}, {y:.3}</title></path>\n\
             <rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{c}\"/><text x=\"{}\" y=\"{}\">{}</text>\n",
            cy - 6.0,
            cx + 6.0,
            cy + 6.0,
            cx - 6.0,
            esc(name),
            left + plot_w + 12.0,
            top + 4.0 + 16.0 * i as f64,
            left + plot_w + 26.0,
            top + 13.0 + 16.0 * i as f64,
            esc(name)
        ));
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dot_per_point_a_mark_per_name_and_the_rule() {
        let svg = scatter_svg(
            &[(38.0, 80.5), (41.0, 81.25), (38.0, 80.5)],
            &[("paper schedule".into(), 41.0, 80.3)],
            Some(80.0),
            ("components", "score (%)"),
            "t",
            "s",
        );
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains("<title>41, 81.250</title>"));
        assert!(svg.contains("<title>paper schedule: 41, 80.300</title>"));
        assert_eq!(svg.matches("stroke-dasharray").count(), 1);
        // Nothing to draw is still a picture.
        let empty = scatter_svg(&[], &[], None, ("x", "y"), "t", "s");
        assert!(empty.ends_with("</svg>\n"));
    }
}
