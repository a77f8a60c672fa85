//! Token sets of the OV analysis (numerals, number words, months, days, letters): ordered
//! members, the window prompts they are read in (as the paper does, four members in a row), and
//! where each member sits in them.

use serde::Serialize;

use crate::tasks::Tokenize;
use crate::tasks::vocab;

/// An ordered set of members whose successor relation the OV analysis probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenSet {
    /// `1` .. `12`.
    Numerals,
    /// `one` .. `twelve`.
    NumberWords,
    /// `January` .. `December`.
    Months,
    /// `Monday` .. `Sunday`.
    Days,
    /// `A` .. `Z`.
    Letters,
}

/// Every token set with its name.
pub const TOKEN_SETS: [(&str, TokenSet); 5] = [
    ("numerals", TokenSet::Numerals),
    ("number_words", TokenSet::NumberWords),
    ("months", TokenSet::Months),
    ("days", TokenSet::Days),
    ("letters", TokenSet::Letters),
];

impl std::str::FromStr for TokenSet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        TOKEN_SETS
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                let names: Vec<&str> = TOKEN_SETS.iter().map(|(n, _)| *n).collect();
                format!("unknown token set `{s}` (sets: {})", names.join(", "))
            })
    }
}

impl std::fmt::Display for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = TOKEN_SETS
            .iter()
            .find(|(_, t)| t == self)
            .map_or("?", |(n, _)| n);
        f.write_str(name)
    }
}

impl TokenSet {
    /// The members in order.
    pub fn members(self) -> Vec<String> {
        match self {
            TokenSet::Numerals => vocab::numerals(12),
            TokenSet::NumberWords => vocab::NUMBER_WORDS.iter().map(|s| s.to_string()).collect(),
            TokenSet::Months => vocab::MONTHS.iter().map(|s| s.to_string()).collect(),
            TokenSet::Days => vocab::DAYS.iter().map(|s| s.to_string()).collect(),
            TokenSet::Letters => vocab::letters(),
        }
    }
}

/// One member read at one position of one probe prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Occurrence {
    /// Index of the prompt.
    pub prompt: usize,
    /// Token position of the member (its only token).
    pub position: usize,
    /// Index of the member in the set.
    pub member: usize,
}

/// Probe prompts of a token set for one tokenizer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OvProbe {
    /// The set's members.
    pub members: Vec<String>,
    /// Token ids of each window prompt, with the BOS the tokenizer adds to a prompt.
    pub prompts: Vec<Vec<u32>>,
    /// The members read: those that are one token in their window.
    pub occurrences: Vec<Occurrence>,
    /// Per member, the single-token spellings that count as the member in the top-k
    /// (`"May"` and `" May"`; empty when the member has none).
    pub accept: Vec<Vec<u32>>,
    /// Members that are never one token (not scored).
    pub skipped: Vec<String>,
}

impl OvProbe {
    /// Windows of `window` consecutive members joined by spaces (`"March April May June"`).
    pub fn new(set: TokenSet, window: usize, tok: &dyn Tokenize) -> Result<Self, String> {
        let members = set.members();
        let window = window.clamp(1, members.len());
        let mut accept = vec![];
        for m in &members {
            let mut ids = vec![];
            for spelling in [m.clone(), format!(" {m}")] {
                if let [id] = tok.encode_plain(&spelling)?.as_slice()
                    && !ids.contains(id)
                {
                    ids.push(*id);
                }
            }
            accept.push(ids);
        }
        let mut prompts = vec![];
        let mut occurrences = vec![];
        for start in 0..=members.len() - window {
            let mut text = String::new();
            let mut prev = 0;
            let mut found = vec![];
            for (j, m) in members[start..start + window].iter().enumerate() {
                if j > 0 {
                    text.push(' ');
                }
                text.push_str(m);
                let ids = tok.encode_plain(&text)?;
                // The member is one token that leaves the earlier tokens as they were.
                if ids.len() == prev + 1 || (j > 0 && ids.len() == prev + 2 && text_space(tok)?) {
                    found.push((ids.len() - 1, start + j));
                }
                prev = ids.len();
            }
            // The prompt as the model sees it (with the BOS its tokenizer adds: Llama-2's
            // does, SmolLM2's and GPT-2's do not); member positions shift past that prefix.
            let plain = tok.encode_plain(&text)?;
            let ids = tok.encode(&text)?;
            let shift = prefix_len(&ids, &plain).ok_or_else(|| {
                format!("{text:?}: the prompt's ids {ids:?} do not contain its plain ids {plain:?}")
            })?;
            let p = prompts.len();
            for (position, member) in found {
                let position = position + shift;
                if accept[member].contains(&ids[position]) {
                    occurrences.push(Occurrence {
                        prompt: p,
                        position,
                        member,
                    });
                }
            }
            prompts.push(ids);
        }
        let mut seen = vec![false; members.len()];
        for o in &occurrences {
            seen[o.member] = true;
        }
        let skipped = members
            .iter()
            .zip(&seen)
            .filter(|(_, s)| !**s)
            .map(|(m, _)| m.clone())
            .collect();
        Ok(OvProbe {
            members,
            prompts,
            occurrences,
            accept,
            skipped,
        })
    }

    /// Builds a probe from token ids (tests, and models without a tokenizer): every position of
    /// every prompt is an occurrence of the member whose id it holds.
    pub fn from_ids(prompts: Vec<Vec<u32>>, members: &[u32]) -> Self {
        let mut occurrences = vec![];
        for (p, ids) in prompts.iter().enumerate() {
            for (position, id) in ids.iter().enumerate() {
                if let Some(member) = members.iter().position(|m| m == id) {
                    occurrences.push(Occurrence {
                        prompt: p,
                        position,
                        member,
                    });
                }
            }
        }
        OvProbe {
            members: members.iter().map(|m| format!("#{m}")).collect(),
            prompts,
            occurrences,
            accept: members.iter().map(|&m| vec![m]).collect(),
            skipped: vec![],
        }
    }

    /// The ids that count as the successor of member `m` (none for the last member).
    pub fn successor_ids(&self, m: usize) -> &[u32] {
        self.accept.get(m + 1).map_or(&[], Vec::as_slice)
    }
}

/// How many special tokens (a BOS) come before the plain ids of a prompt.
fn prefix_len(ids: &[u32], plain: &[u32]) -> Option<usize> {
    if ids.starts_with(plain) {
        return Some(0);
    }
    ids.windows(plain.len()).position(|w| w == plain)
}

/// Whether the tokenizer splits a space off as its own token before a word (SmolLM2 does
/// before digits: `"1 2"` is `"1" " " "2"`).
fn text_space(tok: &dyn Tokenize) -> Result<bool, String> {
    Ok(tok.encode_plain("1 2")?.len() == 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Words are tokens, each with its leading space; "10", "11", "12" split in two.
    struct Words;
    impl Tokenize for Words {
        fn encode_plain(&self, text: &str) -> Result<Vec<u32>, String> {
            let mut out = vec![];
            for (i, w) in text.split(' ').enumerate() {
                if w.is_empty() {
                    continue;
                }
                let base = if i == 0 { 0 } else { 1000 };
                if w.len() == 2 && w.starts_with('1') {
                    out.push(base + 1);
                    out.push(w.as_bytes()[1] as u32);
                } else {
                    out.push(base + w.bytes().map(u32::from).sum::<u32>());
                }
            }
            Ok(out)
        }
        fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
            self.encode_plain(text)
        }
        fn token_text(&self, id: u32) -> String {
            id.to_string()
        }
    }

    #[test]
    fn windows_find_single_token_members_and_skip_the_rest() {
        let p = OvProbe::new(TokenSet::Numerals, 4, &Words).unwrap();
        assert_eq!(p.prompts.len(), 9);
        assert_eq!(p.skipped, vec!["10", "11", "12"]);
        // "1 2 3 4": four single-token members at positions 0..4.
        let first: Vec<_> = p.occurrences.iter().filter(|o| o.prompt == 0).collect();
        assert_eq!(
            first
                .iter()
                .map(|o| (o.position, o.member))
                .collect::<Vec<_>>(),
            vec![(0, 0), (1, 1), (2, 2), (3, 3)]
        );
        // "1" alone and " 1" after a space are both accepted spellings.
        assert_eq!(p.accept[0], vec![u32::from(b'1'), 1000 + u32::from(b'1')]);
        assert_eq!(p.successor_ids(11), &[] as &[u32]);
    }

    /// `Words` with a BOS (id 7) before every prompt, as Llama-2's tokenizer adds one.
    struct WordsWithBos;
    impl Tokenize for WordsWithBos {
        fn encode_plain(&self, text: &str) -> Result<Vec<u32>, String> {
            Words.encode_plain(text)
        }
        fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
            Ok(std::iter::once(7)
                .chain(Words.encode_plain(text)?)
                .collect())
        }
        fn token_text(&self, id: u32) -> String {
            id.to_string()
        }
    }

    #[test]
    fn prompts_start_with_the_bos_the_tokenizer_adds() {
        let plain = OvProbe::new(TokenSet::Numerals, 4, &Words).unwrap();
        let bos = OvProbe::new(TokenSet::Numerals, 4, &WordsWithBos).unwrap();
        assert_eq!(bos.prompts.len(), plain.prompts.len());
        for (b, p) in bos.prompts.iter().zip(&plain.prompts) {
            assert_eq!(b[0], 7);
            assert_eq!(&b[1..], p.as_slice());
        }
        // The same members are read, one position later, and each position holds its member.
        assert_eq!(bos.occurrences.len(), plain.occurrences.len());
        for (b, p) in bos.occurrences.iter().zip(&plain.occurrences) {
            assert_eq!((b.prompt, b.member), (p.prompt, p.member));
            assert_eq!(b.position, p.position + 1);
            assert!(bos.accept[b.member].contains(&bos.prompts[b.prompt][b.position]));
        }
        assert_eq!(bos.skipped, plain.skipped);
        assert_eq!(bos.accept, plain.accept);
    }

    #[test]
    fn set_names_round_trip() {
        for (n, s) in TOKEN_SETS {
            assert_eq!(n.parse::<TokenSet>().unwrap(), s);
            assert_eq!(s.to_string(), n);
        }
        assert!(
            "planets"
                .parse::<TokenSet>()
                .unwrap_err()
                .contains("months")
        );
    }
}
