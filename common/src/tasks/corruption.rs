//! Corruptions, named as in the original work, applied to the member positions of a prompt.

use std::fmt;
use std::str::FromStr;

use crate::rng::Rng;

/// How a corrupted twin is made from a clean prompt's members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// Every member random (the default and the paper's choice).
    RandAll,
    /// The last two members swapped (`1 2 4 3`).
    SwitchLastTwo,
    /// The second-to-last member repeated in the last place (`1 2 3 3`).
    RepeatLastTwo,
    /// Every member equal to the first (`1 1 1 1`).
    RepeatFirstAll,
    /// One random member in every place (`7 7 7 7`).
    RepeatRand,
    /// The members in a random other order.
    Permutation,
}

const NAMES: [(&str, Corruption); 6] = [
    ("rand_all", Corruption::RandAll),
    ("switch_last_two", Corruption::SwitchLastTwo),
    ("repeat_last_two", Corruption::RepeatLastTwo),
    ("repeat_first_all", Corruption::RepeatFirstAll),
    ("repeat_rand", Corruption::RepeatRand),
    ("permutation", Corruption::Permutation),
];

impl Corruption {
    /// Every corruption.
    pub fn all() -> [Corruption; 6] {
        NAMES.map(|(_, c)| c)
    }

    /// The corrupted members of `clean` (indices into a member list of `vocab` entries), or
    /// `None` if this draw leaks the answer. A corruption leaks when its last member's
    /// successor (`last + stride`) is the clean answer, or when it equals the clean prompt.
    pub fn apply(
        self,
        clean: &[usize],
        answer: usize,
        stride: usize,
        vocab: usize,
        rng: &mut Rng,
    ) -> Option<Vec<usize>> {
        let n = clean.len();
        let out: Vec<usize> = match self {
            Corruption::RandAll => (0..n).map(|_| rng.below(vocab)).collect(),
            Corruption::SwitchLastTwo => {
                let mut v = clean.to_vec();
                v.swap(n - 1, n - 2);
                v
            }
            Corruption::RepeatLastTwo => {
                let mut v = clean.to_vec();
                v[n - 1] = v[n - 2];
                v
            }
            Corruption::RepeatFirstAll => vec![clean[0]; n],
            Corruption::RepeatRand => vec![rng.below(vocab); n],
            Corruption::Permutation => {
                let mut v = clean.to_vec();
                rng.shuffle(&mut v);
                v
            }
        };
        let leaks = out[n - 1] + stride == answer || out == clean;
        (!leaks).then_some(out)
    }

    /// Whether a retry with new random draws can help (deterministic corruptions give the same
    /// result every time for the same clean prompt).
    pub fn is_random(self) -> bool {
        matches!(
            self,
            Corruption::RandAll | Corruption::RepeatRand | Corruption::Permutation
        )
    }
}

impl FromStr for Corruption {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NAMES
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, c)| *c)
            .ok_or_else(|| {
                let all: Vec<&str> = NAMES.iter().map(|(n, _)| *n).collect();
                format!("unknown corruption `{s}` (corruptions: {})", all.join(", "))
            })
    }
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = NAMES
            .iter()
            .find(|(_, c)| c == self)
            .map_or("?", |(n, _)| n);
        f.write_str(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_corruptions_do_what_their_names_say() {
        let mut r = Rng::new(0);
        let clean = [0, 1, 2, 3];
        assert_eq!(
            Corruption::SwitchLastTwo.apply(&clean, 4, 1, 12, &mut r),
            Some(vec![0, 1, 3, 2])
        );
        assert_eq!(
            Corruption::RepeatLastTwo.apply(&clean, 4, 1, 12, &mut r),
            Some(vec![0, 1, 2, 2])
        );
        assert_eq!(
            Corruption::RepeatFirstAll.apply(&clean, 4, 1, 12, &mut r),
            Some(vec![0, 0, 0, 0])
        );
    }

    #[test]
    fn random_corruptions_never_leak_the_answer() {
        let mut r = Rng::new(1);
        let clean = [3, 4, 5, 6];
        for c in [
            Corruption::RandAll,
            Corruption::RepeatRand,
            Corruption::Permutation,
        ] {
            for _ in 0..500 {
                if let Some(v) = c.apply(&clean, 7, 1, 12, &mut r) {
                    assert_ne!(v[3] + 1, 7, "{c}: {v:?}");
                    assert_ne!(v, clean);
                    if c == Corruption::Permutation {
                        let mut s = v.clone();
                        s.sort();
                        assert_eq!(s, clean);
                    }
                }
            }
        }
        // A stride-2 sequence leaks when the last member is two below the answer.
        assert!(
            Corruption::RepeatLastTwo
                .apply(&[0, 2, 4, 6], 8, 2, 12, &mut r)
                .is_some()
        );
        assert!(
            Corruption::SwitchLastTwo
                .apply(&[0, 2, 6, 4], 8, 2, 12, &mut r)
                .is_none()
        );
    }

    #[test]
    fn names_round_trip() {
        for c in Corruption::all() {
            assert_eq!(c.to_string().parse::<Corruption>().unwrap(), c);
        }
        assert!(
            "shuffle"
                .parse::<Corruption>()
                .unwrap_err()
                .contains("rand_all")
        );
    }
}
