//! The overlap of several tasks' circuits as an UpSet figure: one column per combination of
//! tasks, a bar with the number of components in exactly that combination, dots marking the
//! tasks, and the components' names under it.

use super::{esc, svg_header};
use crate::Component;

/// The UpSet SVG of `groups` (task bitmask and its components, as
/// `analysis::cross_task::Overlap::exclusive`).
pub fn upset_svg(
    tasks: &[String],
    groups: &[(u32, Vec<Component>)],
    title: &str,
    sub: &str,
) -> String {
    let label_w = tasks.iter().map(|t| t.len()).max().unwrap_or(0) as f64 * 7.0 + 16.0;
    let (col_w, top, bar_h, row_h) = (70.0, 50.0, 140.0, 20.0);
    let left = label_w.max(60.0);
    let most = groups.iter().map(|g| g.1.len()).max().unwrap_or(1).max(1) as f64;
    let names_h = 12.0
        * groups
            .iter()
            .map(|g| g.1.len().div_ceil(2))
            .max()
            .unwrap_or(0) as f64;
    let width = (left + groups.len() as f64 * col_w + 20.0)
        .max(20.0 + 7.0 * title.len().max(sub.len()) as f64);
    let dots_top = top + bar_h + 20.0;
    let height = dots_top + tasks.len() as f64 * row_h + names_h + 30.0;
    let mut out = svg_header(width, height, 10.0, title, sub);
    for (i, t) in tasks.iter().enumerate() {
        out.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n",
            left - 8.0,
            dots_top + i as f64 * row_h + 4.0,
            esc(t)
        ));
    }
    for (g, (mask, comps)) in groups.iter().enumerate() {
        let cx = left + (g as f64 + 0.5) * col_w;
        let h = bar_h * comps.len() as f64 / most;
        out.push_str(&format!(
            "<rect x=\"{}\" y=\"{}\" width=\"28\" height=\"{h}\" fill=\"#2166ac\"/><text x=\"{cx}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            cx - 14.0,
            top + bar_h - h,
            top + bar_h - h - 4.0,
            comps.len()
        ));
        let members: Vec<usize> = (0..tasks.len()).filter(|i| mask & (1 << i) != 0).collect();
        if let (Some(a), Some(b)) = (members.first(), members.last()) {
            out.push_str(&format!(
                "<line x1=\"{cx}\" y1=\"{}\" x2=\"{cx}\" y2=\"{}\" stroke=\"#333\" stroke-width=\"2\"/>\n",
                dots_top + *a as f64 * row_h,
                dots_top + *b as f64 * row_h
            ));
        }
        for i in 0..tasks.len() {
            let on = mask & (1 << i) != 0;
            out.push_str(&format!(
                "<circle cx=\"{cx}\" cy=\"{}\" r=\"6\" fill=\"{}\"/>\n",
                dots_top + i as f64 * row_h,
                if on { "#333" } else { "#ddd" }
            ));
        }
        let ny = dots_top + tasks.len() as f64 * row_h + 8.0;
        for (k, pair) in comps.chunks(2).enumerate() {
            let text: Vec<String> = pair.iter().map(|c| c.to_string()).collect();
            out.push_str(&format!(
                "<text x=\"{cx}\" y=\"{}\" text-anchor=\"middle\" font-size=\"9\" fill=\"#444\">{}</text>\n",
                ny + 12.0 * k as f64,
                esc(&text.join(" "))
            ));
        }
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_column_per_group_and_a_dot_per_task() {
        let tasks = vec!["a".to_string(), "b".to_string()];
        let groups = vec![
            (0b11, vec!["h0.1".parse().unwrap(), "m0".parse().unwrap()]),
            (0b01, vec!["h5.0".parse().unwrap()]),
        ];
        let svg = upset_svg(&tasks, &groups, "t", "s");
        assert_eq!(svg.matches("<circle").count(), 4);
        assert!(svg.contains("h0.1 m0") && svg.contains("h5.0"));
    }
}
