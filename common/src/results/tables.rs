//! Score matrices as CSV and safetensors.

use std::collections::HashMap;

use super::NodeScores;

/// `layer,head,score` per head.
pub fn heads_csv(s: &NodeScores) -> String {
    let mut out = String::from("layer,head,component,score\n");
    for (l, row) in s.heads.iter().enumerate() {
        for (h, v) in row.iter().enumerate() {
            out.push_str(&format!("{l},{h},h{l}.{h},{v}\n"));
        }
    }
    out
}

/// `layer,score` per MLP.
pub fn mlps_csv(s: &NodeScores) -> String {
    let mut out = String::from("layer,component,score\n");
    for (l, v) in s.mlps.iter().enumerate() {
        out.push_str(&format!("{l},m{l},{v}\n"));
    }
    out
}

/// `heads` `[L, H]` and `mlps` `[L]` as little-endian f32 safetensors.
pub fn nodes_safetensors(s: &NodeScores) -> Vec<u8> {
    let bytes = |v: &mut dyn Iterator<Item = f64>| -> Vec<u8> {
        v.flat_map(|x| (x as f32).to_le_bytes()).collect()
    };
    let heads = bytes(&mut s.heads.iter().flatten().copied());
    let mlps = bytes(&mut s.mlps.iter().copied());
    let (l, h) = (s.heads.len(), s.heads.first().map_or(0, Vec::len));
    let views = HashMap::from([
        (
            "heads".to_string(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![l, h], &heads)
                .expect("shape fits"),
        ),
        (
            "mlps".to_string(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![l], &mlps)
                .expect("shape fits"),
        ),
    ]);
    safetensors::tensor::serialize(views, None).expect("serialising in memory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_safetensors_hold_the_scores() {
        let s = NodeScores {
            heads: vec![vec![100.0, 50.5], vec![99.0, 101.0]],
            mlps: vec![20.0, 80.0],
        };
        assert_eq!(heads_csv(&s).lines().nth(2), Some("0,1,h0.1,50.5"));
        assert_eq!(mlps_csv(&s).lines().nth(2), Some("1,m1,80"));
        let bytes = nodes_safetensors(&s);
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let h = st.tensor("heads").unwrap();
        assert_eq!(h.shape(), &[2, 2]);
        assert_eq!(f32::from_le_bytes(h.data()[4..8].try_into().unwrap()), 50.5);
    }
}
