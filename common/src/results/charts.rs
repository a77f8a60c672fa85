//! Small charts of the analyses: grouped bars (logit-lens counts per layer) and a strip chart
//! (downstream accuracy: random head sets as dots, named sets as marks).

use super::{esc, svg_header};

const COLOURS: [&str; 6] = [
    "#2166ac", "#b2182b", "#1b7837", "#762a83", "#e08214", "#555555",
];

/// Grouped vertical bars: one group per category, one bar per series.
pub fn bars_svg(
    categories: &[String],
    series: &[(String, Vec<f64>)],
    title: &str,
    sub: &str,
) -> String {
    let (left, top, plot_h) = (50.0, 70.0, 220.0);
    let group_w = (series.len() as f64 * 10.0 + 8.0).max(22.0);
    let width = (left + categories.len() as f64 * group_w + 40.0)
        .max(20.0 + 7.0 * title.len().max(sub.len()) as f64);
    let height = top + plot_h + 60.0;
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0f64, f64::max)
        .max(1.0);
    let mut out = svg_header(width, height, 10.0, title, sub);
    let base = top + plot_h;
    out.push_str(&format!(
        "<line x1=\"{left}\" y1=\"{base}\" x2=\"{}\" y2=\"{base}\" stroke=\"#999\"/>\n<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n",
        left + categories.len() as f64 * group_w,
        left - 4.0,
        top + 4.0,
        trim(max)
    ));
    for (i, c) in categories.iter().enumerate() {
        let gx = left + i as f64 * group_w;
        for (s, (name, v)) in series.iter().enumerate() {
            let val = v.get(i).copied().unwrap_or(0.0);
            let h = plot_h * val / max;
            out.push_str(&format!(
                "<g><title>{} {}: {}</title><rect x=\"{}\" y=\"{}\" width=\"9\" height=\"{h}\" fill=\"{}\"/></g>\n",
                esc(name),
                esc(c),
                trim(val),
                gx + 4.0 + s as f64 * 10.0,
                base - h,
                COLOURS[s % COLOURS.len()]
            ));
        }
        out.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            gx + group_w / 2.0,
            base + 14.0,
            esc(c)
        ));
    }
    for (s, (name, _)) in series.iter().enumerate() {
        let x = left + s as f64 * 150.0;
        out.push_str(&format!(
            "<rect x=\"{x}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>\n",
            base + 30.0,
            COLOURS[s % COLOURS.len()],
            x + 14.0,
            base + 39.0,
            esc(name)
        ));
    }
    out.push_str("</svg>\n");
    out
}

/// Accuracy (0..100) per task: `dots[set][task]` as grey dots (the control), `marks` as
/// coloured bars across the column with their names in the legend.
pub fn strip_svg(
    tasks: &[String],
    dots: &[Vec<f64>],
    marks: &[(String, Vec<f64>)],
    title: &str,
    sub: &str,
) -> String {
    let (left, top, plot_h, col_w) = (50.0, 60.0, 240.0, 80.0);
    let width = (left + tasks.len() as f64 * col_w + 30.0)
        .max(20.0 + 7.0 * title.len().max(sub.len()) as f64);
    let height = top + plot_h + 50.0 + 14.0 * marks.len() as f64;
    let y = |v: f64| top + plot_h * (1.0 - v.clamp(0.0, 100.0) / 100.0);
    let mut out = svg_header(width, height, 10.0, title, sub);
    for v in [0.0, 25.0, 50.0, 75.0, 100.0] {
        out.push_str(&format!(
            "<line x1=\"{left}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#eee\"/><text x=\"{2}\" y=\"{3}\" text-anchor=\"end\">{v}%</text>\n",
            y(v),
            left + tasks.len() as f64 * col_w,
            left - 4.0,
            y(v) + 3.0
        ));
    }
    for (t, name) in tasks.iter().enumerate() {
        let cx = left + (t as f64 + 0.5) * col_w;
        for (s, set) in dots.iter().enumerate() {
            // A deterministic jitter so equal accuracies stay visible.
            let jx = ((s * 37) % 21) as f64 - 10.0;
            out.push_str(&format!(
                "<circle cx=\"{}\" cy=\"{}\" r=\"3\" fill=\"#999\" fill-opacity=\"0.6\"><title>random set {s}: {:.1}%</title></circle>\n",
                cx + jx,
                y(set[t]),
                set[t]
            ));
        }
        for (m, (label, v)) in marks.iter().enumerate() {
            out.push_str(&format!(
                "<line x1=\"{}\" y1=\"{2}\" x2=\"{}\" y2=\"{2}\" stroke=\"{3}\" stroke-width=\"3\"><title>{4}: {5:.1}%</title></line>\n",
                cx - 22.0,
                cx + 22.0,
                y(v[t]),
                COLOURS[m % COLOURS.len()],
                esc(label),
                v[t]
            ));
        }
        out.push_str(&format!(
            "<text x=\"{cx}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            top + plot_h + 16.0,
            esc(name)
        ));
    }
    let ly = top + plot_h + 34.0;
    out.push_str(&format!(
        "<circle cx=\"{}\" cy=\"{}\" r=\"3\" fill=\"#999\"/><text x=\"{}\" y=\"{}\">random sets ({})</text>\n",
        left + 4.0,
        ly - 3.0,
        left + 12.0,
        ly,
        dots.len()
    ));
    for (m, (label, _)) in marks.iter().enumerate() {
        let yy = ly + 14.0 * (m + 1) as f64;
        out.push_str(&format!(
            "<line x1=\"{left}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"{2}\" stroke-width=\"3\"/><text x=\"{3}\" y=\"{4}\">{5}</text>\n",
            yy - 3.0,
            left + 10.0,
            COLOURS[m % COLOURS.len()],
            left + 14.0,
            yy,
            esc(label)
        ));
    }
    out.push_str("</svg>\n");
    out
}

fn trim(v: f64) -> String {
    let s = format!("{v:.1}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// One line of [`curves_svg`]: its name, whether it is dashed, its points `(x, y)`.
pub type CurveLine = (String, bool, Vec<(f64, f64)>);

/// A line chart of curves `(name, points (x, y))` with x on a log scale (shares of a graph from
/// 0.1 % to 100 %) and y from the lowest to the highest value (0 and 1 always shown); a legend
/// names each curve, dashed where `dashed` says so.
pub fn curves_svg(curves: &[CurveLine], x_label: &str, title: &str, sub: &str) -> String {
    let (left, top, plot_w, plot_h): (f64, f64, f64, f64) = (60.0, 60.0, 420.0, 240.0);
    let width = (left + plot_w + 260.0).max(20.0 + 7.0 * title.len().max(sub.len()) as f64);
    let height = (top + plot_h + 60.0).max(top + 16.0 * curves.len() as f64 + 20.0);
    let xs = curves.iter().flat_map(|c| c.2.iter().map(|p| p.0));
    let (x_lo, x_hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    let (x_lo, x_hi) = if x_lo.is_finite() && x_lo > 0.0 && x_hi > x_lo {
        (x_lo.log10(), x_hi.log10())
    } else {
        (-3.0, 0.0)
    };
    let ys = curves.iter().flat_map(|c| c.2.iter().map(|p| p.1));
    let (y_lo, y_hi) = ys
        .filter(|y| y.is_finite())
        .fold((0.0f64, 1.0f64), |(a, b), y| (a.min(y), b.max(y)));
    let px = |x: f64| left + plot_w * (x.max(1e-12).log10() - x_lo) / (x_hi - x_lo);
    let py = |y: f64| top + plot_h * (1.0 - (y - y_lo) / (y_hi - y_lo));
    let mut out = svg_header(width, height, 10.0, title, sub);
    for y in [y_lo, 0.0, 1.0, y_hi] {
        out.push_str(&format!(
            "<line x1=\"{left}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#eee\"/><text x=\"{2}\" y=\"{3}\" text-anchor=\"end\">{4}</text>\n",
            py(y),
            left + plot_w,
            left - 4.0,
            py(y) + 3.0,
            trim(y)
        ));
    }
    let mut decade = x_lo.floor() as i32;
    while f64::from(decade) <= x_hi + 1e-9 {
        let x = 10f64.powi(decade);
        if f64::from(decade) >= x_lo - 1e-9 {
            out.push_str(&format!(
                "<line x1=\"{0}\" y1=\"{top}\" x2=\"{0}\" y2=\"{1}\" stroke=\"#eee\"/><text x=\"{0}\" y=\"{2}\" text-anchor=\"middle\">{3}%</text>\n",
                px(x),
                top + plot_h,
                top + plot_h + 14.0,
                trim(100.0 * x)
            ));
        }
        decade += 1;
    }
    out.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x_label}</text>\n",
        left + plot_w / 2.0,
        top + plot_h + 32.0
    ));
    const COLOURS: [&str; 8] = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    ];
    for (i, (name, dashed, points)) in curves.iter().enumerate() {
        let colour = COLOURS[i / 2 % COLOURS.len()];
        let dash = if *dashed {
            " stroke-dasharray=\"5,3\""
        } else {
            ""
        };
        let path: Vec<String> = points
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        out.push_str(&format!(
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{dash}><title>{}</title></polyline>\n",
            path.join(" "),
            esc(name)
        ));
        let ly = top + 16.0 * i as f64;
        out.push_str(&format!(
            "<line x1=\"{0}\" y1=\"{ly}\" x2=\"{1}\" y2=\"{ly}\" stroke=\"{colour}\" stroke-width=\"2\"{dash}/><text x=\"{2}\" y=\"{3}\">{4}</text>\n",
            left + plot_w + 16.0,
            left + plot_w + 40.0,
            left + plot_w + 46.0,
            ly + 4.0,
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
    fn bars_and_strips_draw_every_value() {
        let cats = vec!["0".to_string(), "1".to_string()];
        let svg = bars_svg(
            &cats,
            &[
                ("first".into(), vec![1.0, 3.0]),
                ("stays".into(), vec![0.0, 4.0]),
            ],
            "t",
            "s",
        );
        assert_eq!(svg.matches("<rect x=").count(), 4 + 2);
        assert!(svg.contains("<title>stays 1: 4</title>"));
        let tasks = vec!["add1".to_string()];
        let svg = strip_svg(
            &tasks,
            &[vec![90.0], vec![80.0]],
            &[("circuit".into(), vec![5.0])],
            "t",
            "s",
        );
        assert_eq!(svg.matches("<title>random set").count(), 2);
        assert!(svg.contains("circuit: 5.0%"));
    }

    #[test]
    fn curves_draw_every_point_on_a_log_axis() {
        let pts = |ys: [f64; 3]| vec![(0.001, ys[0]), (0.1, ys[1]), (1.0, ys[2])];
        let svg = curves_svg(
            &[
                ("eap <signed>".into(), false, pts([0.0, 0.5, 1.0])),
                ("eap |score|".into(), true, pts([0.2, 1.4, 1.0])),
            ],
            "edges kept",
            "t",
            "s",
        );
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("stroke-dasharray").count(), 2);
        assert!(svg.contains("eap &lt;signed&gt;"));
        // Decades of the log axis: 0.1 %, 1 %, 10 %, 100 %.
        for label in [">0.1%<", ">1%<", ">10%<", ">100%<"] {
            assert!(svg.contains(label), "{label}");
        }
        // The first point of each line sits at the left edge, the last at the right.
        let first = svg.split("points=\"").nth(1).unwrap();
        assert!(first.starts_with("60.0,"), "{first}");
        assert!(first.contains(" 480.0,"), "{first}");
    }
}
