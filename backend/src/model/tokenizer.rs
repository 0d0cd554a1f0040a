//! YouTokenToMe (YTTM) byte-pair encoding, as RUDOLPH's text side uses it.
//!
//! [`Bpe`] reads and writes the YTTM `bpe.model` text format and encodes exactly
//! like `youtokentome==1.0.6` with dropout 0; [`TextTokenizer`] adds the
//! semantics of rudalle's `YTTMTokenizerWrapper` (`[BOS] ids [EOS]`, zero
//! padding, decoding without special ids). [`Bpe::train`] learns a vocabulary of
//! our own (not YTTM's merge order, but a file YTTM loads and encodes identically).
//!
//! The model file: `n_chars n_rules`, then `n_chars` lines `codepoint id`, then
//! `n_rules` lines `x y z` (merge x + y into z; earlier lines win), then
//! `unk_id pad_id bos_id eos_id` (-1 for an unused one).

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::path::Path;

/// YTTM's word marker: every word starts with it, and it counts as whitespace.
pub const SPACE_TOKEN: char = '\u{2581}';

/// Why a model file could not be read, or ids could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot read BPE model {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("malformed BPE model {path}, line {line}: {message}")]
    Malformed { path: String, line: usize, message: String },
    #[error("token id {id} is outside the vocabulary (size {vocab_size})")]
    UnknownId { id: u32, vocab_size: usize },
    #[error("cannot train a vocabulary: {0}")]
    Training(String),
}

/// Ids of the four special tokens (`None` where the model has none, written as -1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokens {
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
}

impl SpecialTokens {
    /// The ids rudalle and RUDOLPH use: pad 0, unk 1, bos 2, eos 3.
    pub const RUDALLE: SpecialTokens = SpecialTokens { unk: Some(1), pad: Some(0), bos: Some(2), eos: Some(3) };

    fn iter(&self) -> impl Iterator<Item = u32> {
        [self.unk, self.pad, self.bos, self.eos].into_iter().flatten()
    }

    fn name_of(&self, id: u32) -> Option<&'static str> {
        // YTTM checks in this order: unk, pad, bos, eos.
        [(self.unk, "<UNK>"), (self.pad, "<PAD>"), (self.bos, "<BOS>"), (self.eos, "<EOS>")]
            .into_iter()
            .find_map(|(special, name)| (special == Some(id)).then_some(name))
    }
}

/// One merge rule: the adjacent pair (x, y) becomes z.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeRule {
    pub x: u32,
    pub y: u32,
    pub z: u32,
}

/// A YTTM BPE model.
#[derive(Debug, Clone)]
pub struct Bpe {
    /// Code point -> id, for every character the model knows (the word marker included).
    char_ids: HashMap<u32, u32>,
    rules: Vec<MergeRule>,
    /// (x, y) -> index of its rule; a later duplicate overrides, as in YTTM.
    rule_index: HashMap<(u32, u32), u32>,
    special: SpecialTokens,
    /// id -> the characters it stands for (its "recipe").
    pieces: HashMap<u32, Vec<u32>>,
    space_id: u32,
}

/// Which part of a model an inconsistency is in (to name the file's line).
enum ModelPart {
    Chars,
    Char(usize),
    Rule(usize),
}

/// Marks a run of unknown characters while a word is merged (larger than any real id).
const UNKNOWN_RUN: u32 = 1_000_000_000;

fn is_space(c: u32) -> bool {
    // C's isspace() in the C/UTF-8 locales: \t \n \v \f \r and ' '; plus the word marker.
    matches!(c, 9..=13 | 32) || c == SPACE_TOKEN as u32
}

impl Bpe {
    /// Builds a model from its parts, checking that they are consistent.
    pub fn new(chars: Vec<(u32, u32)>, rules: Vec<MergeRule>, special: SpecialTokens) -> Result<Self, String> {
        Self::build(chars, rules, special).map_err(|(_, message)| message)
    }

    /// Like [`Bpe::new`]; an error also says which part is at fault.
    fn build(
        chars: Vec<(u32, u32)>,
        rules: Vec<MergeRule>,
        special: SpecialTokens,
    ) -> Result<Self, (ModelPart, String)> {
        let mut char_ids = HashMap::with_capacity_and_hasher(chars.len(), Default::default());
        let mut pieces: HashMap<u32, Vec<u32>> =
            HashMap::with_capacity_and_hasher(chars.len() + rules.len(), Default::default());
        let specials: HashSet<u32> = special.iter().collect();
        for (i, (codepoint, id)) in chars.into_iter().enumerate() {
            if char_ids.insert(codepoint, id).is_some() {
                return Err((ModelPart::Char(i), format!("character {codepoint} is listed twice")));
            }
            if specials.contains(&id) || pieces.insert(id, vec![codepoint]).is_some() {
                return Err((ModelPart::Char(i), format!("id {id} of character {codepoint} is already taken")));
            }
        }
        let space_id = *char_ids.get(&(SPACE_TOKEN as u32)).ok_or_else(|| {
            (ModelPart::Chars, format!("the word marker U+2581 ({}) is not among the characters", SPACE_TOKEN as u32))
        })?;
        let mut rule_index = HashMap::with_capacity_and_hasher(rules.len(), Default::default());
        for (i, rule) in rules.iter().enumerate() {
            let (Some(x), Some(y)) = (pieces.get(&rule.x), pieces.get(&rule.y)) else {
                let message = format!("rule {} {} {} merges an id not defined before it", rule.x, rule.y, rule.z);
                return Err((ModelPart::Rule(i), message));
            };
            let merged = [x.as_slice(), y.as_slice()].concat();
            if specials.contains(&rule.z) || pieces.insert(rule.z, merged).is_some() {
                let message = format!("rule {} {} {} produces an id that is already taken", rule.x, rule.y, rule.z);
                return Err((ModelPart::Rule(i), message));
            }
            rule_index.insert((rule.x, rule.y), i as u32);
        }
        Ok(Bpe { char_ids, rules, rule_index, special, pieces, space_id })
    }

    /// Reads a YTTM `bpe.model` file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|source| TokenizerError::Io { path: path.display().to_string(), source })?;
        Self::parse(&text).map_err(|(line, message)| TokenizerError::Malformed {
            path: path.display().to_string(),
            line,
            message,
        })
    }

    /// Parses the text of a model file; errors carry the 1-based line number.
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l)).filter(|(_, l)| !l.trim().is_empty());
        let last_line = text.lines().count().max(1);
        let mut next_numbers = |count: usize, what: &str| -> Result<(usize, Vec<i64>), (usize, String)> {
            let (line_no, line) = lines.next().ok_or((last_line, format!("file ends where {what} was expected")))?;
            let numbers = line
                .split_whitespace()
                .map(|t| t.parse::<i64>().map_err(|_| (line_no, format!("{t:?} is not a number (in {what})"))))
                .collect::<Result<Vec<_>, _>>()?;
            if numbers.len() != count {
                return Err((line_no, format!("expected {count} numbers ({what}), found {}", numbers.len())));
            }
            Ok((line_no, numbers))
        };
        let as_u32 = |value: i64, line: usize, what: &str| {
            u32::try_from(value).map_err(|_| (line, format!("{what} {value} is out of range")))
        };

        let (header_line, header) = next_numbers(2, "the header `n_chars n_rules`")?;
        let n_chars = as_u32(header[0], header_line, "character count")? as usize;
        let n_rules = as_u32(header[1], header_line, "rule count")? as usize;
        let mut chars = Vec::with_capacity(n_chars);
        let mut char_lines = Vec::with_capacity(n_chars);
        for _ in 0..n_chars {
            let (line, v) = next_numbers(2, "a character line `codepoint id`")?;
            chars.push((as_u32(v[0], line, "code point")?, as_u32(v[1], line, "id")?));
            char_lines.push(line);
        }
        let mut rules = Vec::with_capacity(n_rules);
        let mut rule_lines = Vec::with_capacity(n_rules);
        for _ in 0..n_rules {
            let (line, v) = next_numbers(3, "a merge rule `x y z`")?;
            rules.push(MergeRule {
                x: as_u32(v[0], line, "id")?,
                y: as_u32(v[1], line, "id")?,
                z: as_u32(v[2], line, "id")?,
            });
            rule_lines.push(line);
        }
        let (line, s) = next_numbers(4, "the special ids `unk pad bos eos`")?;
        let special_id = |v: i64| if v < 0 { Ok(None) } else { as_u32(v, line, "special id").map(Some) };
        let special = SpecialTokens {
            unk: special_id(s[0])?,
            pad: special_id(s[1])?,
            bos: special_id(s[2])?,
            eos: special_id(s[3])?,
        };
        if let Some((extra, _)) = lines.next() {
            return Err((extra, "unexpected content after the special ids line".into()));
        }
        Bpe::build(chars, rules, special).map_err(|(part, message)| {
            let line = match part {
                ModelPart::Chars => header_line,
                ModelPart::Char(i) => char_lines[i],
                ModelPart::Rule(i) => rule_lines[i],
            };
            (line, message)
        })
    }

    /// Writes the model in YTTM's format (characters sorted by id, rules in priority order).
    pub fn to_model_string(&self) -> String {
        let mut chars: Vec<(u32, u32)> = self.char_ids.iter().map(|(&c, &id)| (c, id)).collect();
        chars.sort_by_key(|&(c, id)| (id, c));
        let mut out = format!("{} {}\n", chars.len(), self.rules.len());
        for (c, id) in chars {
            let _ = writeln!(out, "{c} {id}");
        }
        for r in &self.rules {
            let _ = writeln!(out, "{} {} {}", r.x, r.y, r.z);
        }
        let id = |v: Option<u32>| v.map_or(-1, i64::from);
        let s = &self.special;
        let _ = writeln!(out, "{} {} {} {}", id(s.unk), id(s.pad), id(s.bos), id(s.eos));
        out
    }

    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), TokenizerError> {
        let path = path.as_ref();
        std::fs::write(path, self.to_model_string())
            .map_err(|source| TokenizerError::Io { path: path.display().to_string(), source })
    }

    /// Number of ids: characters + rules + special tokens (as YTTM counts it).
    pub fn vocab_size(&self) -> usize {
        self.char_ids.len() + self.rules.len() + self.special.iter().count()
    }

    pub fn special_tokens(&self) -> SpecialTokens {
        self.special
    }

    /// The characters of `text` this model has no id for, each once, in order of
    /// appearance (whitespace aside); `encode` turns each run of them into one UNK.
    pub fn unknown_chars(&self, text: &str) -> Vec<char> {
        let mut unknown: Vec<char> = Vec::new();
        for c in text.chars() {
            if !is_space(c as u32) && !self.char_ids.contains_key(&(c as u32)) && !unknown.contains(&c) {
                unknown.push(c);
            }
        }
        unknown
    }

    /// Encodes one sentence into ids, as `yttm.BPE.encode([text], OutputType.ID)`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut chars: Vec<u32> = text.chars().map(|c| c as u32).collect();
        while chars.last().is_some_and(|&c| is_space(c)) {
            chars.pop();
        }
        let mut ids = Vec::with_capacity(chars.len());
        let mut rest = chars.as_slice();
        while !rest.is_empty() {
            let start = rest.iter().position(|&c| !is_space(c)).unwrap_or(rest.len());
            let word_len = rest[start..].iter().position(|&c| is_space(c)).unwrap_or(rest.len() - start);
            self.encode_word(&rest[start..start + word_len], &mut ids);
            rest = &rest[start + word_len..];
        }
        ids
    }

    /// Merges one word (prefixed by the word marker) and appends its ids.
    fn encode_word(&self, word: &[u32], out: &mut Vec<u32>) {
        // A doubly linked list of symbols; a merged-away node gets token 0 and next -1.
        #[derive(Clone, Copy)]
        struct Node {
            token: u32,
            prev: i64,
            next: i64,
        }
        let mut nodes: Vec<Node> = Vec::with_capacity(word.len() + 1);
        let push = |nodes: &mut Vec<Node>, token: u32| {
            let pos = nodes.len() as i64;
            nodes.push(Node { token, prev: pos - 1, next: pos + 1 });
        };
        push(&mut nodes, self.space_id);
        let mut unknown_runs = 0;
        let mut i = 0;
        while i < word.len() {
            match self.char_ids.get(&word[i]) {
                Some(&id) => {
                    push(&mut nodes, id);
                    i += 1;
                }
                None => {
                    // A run of unknown characters is one UNK.
                    while i < word.len() && !self.char_ids.contains_key(&word[i]) {
                        i += 1;
                    }
                    push(&mut nodes, UNKNOWN_RUN + unknown_runs);
                    unknown_runs += 1;
                }
            }
        }
        nodes.last_mut().expect("the marker node").next = -1;

        // Min-heap of (rule priority, position): the best rule first, leftmost first.
        let mut queue: BinaryHeap<Reverse<(u32, i64)>> = BinaryHeap::new();
        let push_rule = |queue: &mut BinaryHeap<Reverse<(u32, i64)>>, nodes: &[Node], pos: i64| {
            let first = nodes[pos as usize];
            let second = nodes[first.next as usize];
            if let Some(&rule) = self.rule_index.get(&(first.token, second.token)) {
                queue.push(Reverse((rule, pos)));
            }
        };
        for pos in 0..nodes.len() as i64 - 1 {
            push_rule(&mut queue, &nodes, pos);
        }
        while let Some(Reverse((rule_id, pos1))) = queue.pop() {
            let rule = self.rules[rule_id as usize];
            let pos2 = nodes[pos1 as usize].next;
            // Stale events: the pair changed since it was queued.
            if nodes[pos1 as usize].token != rule.x || pos2 == -1 || nodes[pos2 as usize].token != rule.y {
                continue;
            }
            let pos0 = nodes[pos1 as usize].prev;
            let pos3 = nodes[pos2 as usize].next;
            nodes[pos2 as usize] = Node { token: 0, prev: -1, next: -1 };
            nodes[pos1 as usize] = Node { token: rule.z, prev: pos0, next: pos3 };
            if pos3 != -1 {
                nodes[pos3 as usize].prev = pos1;
            }
            if pos0 != -1 {
                push_rule(&mut queue, &nodes, pos0);
            }
            if pos3 != -1 {
                push_rule(&mut queue, &nodes, pos1);
            }
        }
        let unk = self.special.unk.unwrap_or(0);
        let mut pos = 0i64;
        while pos != -1 {
            let node = nodes[pos as usize];
            out.push(if node.token >= UNKNOWN_RUN { unk } else { node.token });
            pos = node.next;
        }
    }

    /// Decodes ids into text, as `yttm.BPE.decode(ids, ignore_ids)`: word markers
    /// become spaces, a leading space is dropped, special ids print as `<UNK>` etc.
    pub fn decode(&self, ids: &[u32], ignore: &[u32]) -> Result<String, TokenizerError> {
        let mut text = String::new();
        let mut first = true;
        for &id in ids.iter().filter(|id| !ignore.contains(id)) {
            if let Some(name) = self.special.name_of(id) {
                text.push_str(name);
            } else {
                let piece =
                    self.pieces.get(&id).ok_or(TokenizerError::UnknownId { id, vocab_size: self.vocab_size() })?;
                let (marker, rest) = match piece.split_first() {
                    Some((&c, rest)) if c == SPACE_TOKEN as u32 => (true, rest),
                    _ => (false, piece.as_slice()),
                };
                if marker {
                    text.push(' ');
                }
                text.extend(rest.iter().map(|&c| char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER)));
            }
            if first && text.starts_with(' ') {
                text.remove(0);
            }
            first = false;
        }
        Ok(text)
    }

    /// Learns a vocabulary of `vocab_size` ids from `corpus` (one sentence per line).
    ///
    /// Ids: 0-3 are pad, unk, bos, eos; then every character of the corpus (most
    /// frequent first); then merges of the most frequent adjacent pair, ties broken by
    /// the smaller ids, skipping pairs that would spell an existing token. Deterministic.
    pub fn train(corpus: &str, vocab_size: usize) -> Result<Bpe, TokenizerError> {
        let special = SpecialTokens::RUDALLE;
        let n_special = 4u32;
        // Word types with counts; each word is the marker then its characters.
        let mut word_counts: HashMap<Vec<u32>, u64> = HashMap::default();
        for line in corpus.lines() {
            let chars: Vec<u32> = line.chars().map(|c| c as u32).collect();
            for word in chars.split(|&c| is_space(c)).filter(|w| !w.is_empty()) {
                let mut symbols = Vec::with_capacity(word.len() + 1);
                symbols.push(SPACE_TOKEN as u32);
                symbols.extend_from_slice(word);
                *word_counts.entry(symbols).or_default() += 1;
            }
        }
        if word_counts.is_empty() {
            return Err(TokenizerError::Training("the corpus has no words".into()));
        }
        let mut char_counts: HashMap<u32, u64> = HashMap::default();
        for (word, &count) in &word_counts {
            for &c in word {
                *char_counts.entry(c).or_default() += count;
            }
        }
        let mut chars: Vec<(u32, u64)> = char_counts.into_iter().collect();
        chars.sort_by_key(|&(c, n)| (Reverse(n), c));
        let min_size = chars.len() + n_special as usize;
        if vocab_size < min_size {
            return Err(TokenizerError::Training(format!(
                "vocab size {vocab_size} is smaller than the {} characters of the corpus plus 4 special ids",
                chars.len()
            )));
        }
        let char_ids: Vec<(u32, u32)> =
            chars.iter().enumerate().map(|(i, &(c, _))| (c, n_special + i as u32)).collect();
        let id_of: HashMap<u32, u32> = char_ids.iter().copied().collect();

        let mut words: Vec<(Vec<u32>, u64)> =
            word_counts.into_iter().map(|(w, n)| (w.iter().map(|c| id_of[c]).collect(), n)).collect();
        words.sort(); // determinism independent of hash order
        let mut spelled: HashMap<u32, Vec<u32>> = char_ids.iter().map(|&(c, id)| (id, vec![c])).collect();
        let mut known_spellings: HashSet<Vec<u32>> = spelled.values().cloned().collect();
        let mut rules = Vec::new();
        let mut next_id = n_special + char_ids.len() as u32;
        while (next_id as usize) < vocab_size {
            let mut pair_counts: HashMap<(u32, u32), u64> = HashMap::default();
            for (word, count) in &words {
                for pair in word.windows(2) {
                    *pair_counts.entry((pair[0], pair[1])).or_default() += count;
                }
            }
            let best = pair_counts
                .into_iter()
                .filter(|&((x, y), _)| !known_spellings.contains(&[spelled[&x].as_slice(), &spelled[&y]].concat()))
                .max_by_key(|&((x, y), n)| (n, Reverse((x, y))));
            let Some(((x, y), _)) = best else { break };
            let z = next_id;
            next_id += 1;
            let spelling = [spelled[&x].as_slice(), &spelled[&y]].concat();
            known_spellings.insert(spelling.clone());
            spelled.insert(z, spelling);
            rules.push(MergeRule { x, y, z });
            for (word, _) in &mut words {
                let mut merged = Vec::with_capacity(word.len());
                let mut i = 0;
                while i < word.len() {
                    if i + 1 < word.len() && word[i] == x && word[i + 1] == y {
                        merged.push(z);
                        i += 2;
                    } else {
                        merged.push(word[i]);
                        i += 1;
                    }
                }
                *word = merged;
            }
        }
        Bpe::new(char_ids, rules, special).map_err(TokenizerError::Training)
    }
}

/// rudalle's `YTTMTokenizerWrapper`: fixed-length id sequences for the model.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    bpe: Bpe,
}

impl TextTokenizer {
    pub const PAD: u32 = 0;
    pub const UNK: u32 = 1;
    pub const BOS: u32 = 2;
    pub const EOS: u32 = 3;

    pub fn new(bpe: Bpe) -> Self {
        TextTokenizer { bpe }
    }

    pub fn load(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        Bpe::load(path).map(Self::new)
    }

    pub fn bpe(&self) -> &Bpe {
        &self.bpe
    }

    pub fn vocab_size(&self) -> usize {
        self.bpe.vocab_size()
    }

    /// `[BOS] + ids + [EOS]`, zero-padded to `seq_len` or cut to it (losing the EOS).
    pub fn encode_text(&self, text: &str, seq_len: usize) -> Vec<u32> {
        let mut ids = Vec::with_capacity(seq_len.max(2));
        ids.push(Self::BOS);
        ids.extend(self.bpe.encode(text));
        ids.push(Self::EOS);
        ids.resize(seq_len, Self::PAD);
        ids
    }

    /// Decodes ids, dropping pad, unk, bos and eos (ids 0-3).
    pub fn decode_text(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.bpe.decode(ids, &[Self::EOS, Self::BOS, Self::UNK, Self::PAD])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-made model: chars ▁ a b c (ids 4-7), rules ab, ▁ab, bc, ▁a.
    fn toy() -> Bpe {
        let text = "4 4\n9601 4\n97 5\n98 6\n99 7\n5 6 8\n4 8 9\n6 7 10\n4 5 11\n1 0 2 3\n";
        Bpe::parse(text).unwrap()
    }

    #[test]
    fn merges_follow_rule_priority_not_position() {
        let bpe = toy();
        // ▁ a b c: "ab" (rule 0) beats "bc" (rule 2); then ▁+ab (rule 1).
        assert_eq!(bpe.encode("abc"), vec![9, 7]);
        // ▁ a c: only ▁a applies.
        assert_eq!(bpe.encode("ac"), vec![11, 7]);
        assert_eq!(bpe.encode("  bc\tab \n"), vec![4, 10, 9]);
        assert_eq!(bpe.encode(""), Vec::<u32>::new());
        assert_eq!(bpe.encode(" \t "), Vec::<u32>::new());
    }

    #[test]
    fn a_run_of_unknown_characters_is_one_unk() {
        let bpe = toy();
        assert_eq!(bpe.encode("axyzb"), vec![11, 1, 6]);
        assert_eq!(bpe.encode("x"), vec![4, 1]);
    }

    #[test]
    fn unknown_characters_are_named_once_each() {
        let bpe = toy();
        assert_eq!(bpe.unknown_chars("axyzb x\tcab"), vec!['x', 'y', 'z']);
        assert_eq!(bpe.unknown_chars(" abc  ba\n"), Vec::<char>::new(), "whitespace is not unknown");
        assert_eq!(bpe.unknown_chars("ab\u{2581}é"), vec!['é'], "the word marker is a character it knows");
    }

    #[test]
    fn decode_drops_the_leading_space_and_names_specials() {
        let bpe = toy();
        assert_eq!(bpe.decode(&[9, 7, 4, 10], &[]).unwrap(), "abc bc");
        assert_eq!(bpe.decode(&[2, 9, 3], &[]).unwrap(), "<BOS> ab<EOS>");
        assert_eq!(bpe.decode(&[2, 9, 3], &[2, 3]).unwrap(), "ab");
        assert!(matches!(bpe.decode(&[99], &[]), Err(TokenizerError::UnknownId { id: 99, .. })));
    }

    #[test]
    fn wrapper_pads_and_truncates() {
        let tok = TextTokenizer::new(toy());
        assert_eq!(tok.encode_text("abc", 6), vec![2, 9, 7, 3, 0, 0]);
        assert_eq!(tok.encode_text("abc abc", 3), vec![2, 9, 7]);
        assert_eq!(tok.decode_text(&[2, 9, 7, 3, 0, 0]).unwrap(), "abc");
    }

    #[test]
    fn malformed_files_name_the_line() {
        let cases = [
            ("", 1, "header"),
            ("2 0\n9601 4\n", 2, "file ends"),
            ("1 0\n9601 x\n1 0 2 3\n", 2, "not a number"),
            ("1 1\n9601 4\n4 4\n1 0 2 3\n", 3, "expected 3 numbers"),
            ("1 1\n9601 4\n4 9 5\n1 0 2 3\n", 3, "not defined"),
            ("1 0\n97 4\n1 0 2 3\n", 1, "U+2581"),
            ("2 0\n9601 4\n97 4\n1 0 2 3\n", 3, "already taken"),
            ("1 0\n9601 4\n1 0 2 3\n7\n", 4, "unexpected content"),
        ];
        for (text, line, needle) in cases {
            let (got_line, message) = Bpe::parse(text).unwrap_err();
            assert_eq!(got_line, line, "{text:?}: {message}");
            assert!(message.contains(needle), "{text:?}: {message}");
        }
    }

    #[test]
    fn training_learns_frequent_pairs_and_round_trips() {
        let corpus = "борщ борщ борщ\nщи и борщ\nborscht 12,5 ккал\n";
        let bpe = Bpe::train(corpus, 40).unwrap();
        assert!(bpe.vocab_size() <= 40);
        let reparsed = Bpe::parse(&bpe.to_model_string()).unwrap();
        assert_eq!(reparsed.to_model_string(), bpe.to_model_string());
        let ids = bpe.encode("борщ");
        assert_eq!(ids.len(), 1, "a word seen 4 times becomes one token: {ids:?}");
        for line in corpus.lines() {
            assert_eq!(bpe.decode(&bpe.encode(line), &[]).unwrap(), line);
        }
        assert!(Bpe::train("", 10).is_err());
        assert!(Bpe::train("abcdef", 5).is_err());
    }
}
