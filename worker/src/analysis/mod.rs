//! Mechanism analyses on a resident model: successor and copy scores of every head's
//! OV circuit, attention patterns, the logit lens, greedy generation with a KV cache under
//! ablation (what the downstream sweep runs), and circuits scored on other tasks' data.

pub mod attention;
pub mod cross_task;
pub mod generate;
pub mod lens;
pub mod ov;

/// The `k` largest entries of `row` as indices, largest first (ties: lower index first).
pub fn top_k(row: &[f32], k: usize) -> Vec<u32> {
    let mut best: Vec<(f32, u32)> = Vec::with_capacity(k + 1);
    for (i, &v) in row.iter().enumerate() {
        if best.len() < k || best.last().is_some_and(|&(w, _)| v > w) {
            let at = best.partition_point(|&(w, _)| w >= v);
            best.insert(at, (v, i as u32));
            best.truncate(k);
        }
    }
    best.into_iter().map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn top_k_is_ordered_and_stable_on_ties() {
        assert_eq!(super::top_k(&[1.0, 5.0, 3.0, 5.0, -1.0], 3), vec![1, 3, 2]);
        assert_eq!(super::top_k(&[2.0], 5), vec![0]);
    }
}
