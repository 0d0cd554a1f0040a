//! YouTokenToMe (YTTM) byte-pair encoding, as RUDOLPH's text side uses it.
//!
//! [`Bpe`] reads and writes the YTTM `bpe.model` text format and encodes exactly
//! like `youtokentome==1.0.6` with dropout 0; [`TextTokenizer`] adds the
//! semantics of rudalle's `YTTMTokenizerWrapper` (`[BOS] ids [EOS]`, zero
//! padding, decoding without special ids). [`Bpe::train`] learns the vocabulary
//! `yttm.BPE.train(..., n_threads=1)` learns, down to the bytes of the model file.
//!
//! The model file: `n_chars n_rules`, then `n_chars` lines `codepoint id` (YTTM writes
//! them in its hash table's order), then `n_rules` lines `x y z` (merge x + y into z;
//! earlier lines win), then `unk_id pad_id bos_id eos_id` (-1 for an unused one).

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
    /// The same pairs in the order the model file lists them.
    char_order: Vec<(u32, u32)>,
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

/// Marks a run of unknown characters while a word is merged (larger than any id a
/// model may have).
const UNKNOWN_RUN: u32 = 1_000_000_000;

/// Most characters all the model's pieces may spell out together: each rule's piece is
/// two earlier ones joined, so a few dozen lines could otherwise ask for terabytes. A
/// real vocabulary (16 384 ids) spells out some hundred thousand.
const MAX_PIECE_CHARS: usize = 1 << 24;

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
        for (i, &(codepoint, id)) in chars.iter().enumerate() {
            if id >= UNKNOWN_RUN {
                return Err((ModelPart::Char(i), format!("id {id} of character {codepoint} is too large")));
            }
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
        let mut piece_chars = chars.len();
        for (i, rule) in rules.iter().enumerate() {
            let (Some(x), Some(y)) = (pieces.get(&rule.x), pieces.get(&rule.y)) else {
                let message = format!("rule {} {} {} merges an id not defined before it", rule.x, rule.y, rule.z);
                return Err((ModelPart::Rule(i), message));
            };
            if rule.z >= UNKNOWN_RUN {
                return Err((
                    ModelPart::Rule(i),
                    format!("rule {} {} {} produces too large an id", rule.x, rule.y, rule.z),
                ));
            }
            piece_chars += x.len() + y.len();
            if piece_chars > MAX_PIECE_CHARS {
                let message = format!("the pieces spell out over {MAX_PIECE_CHARS} characters by rule {}", i + 1);
                return Err((ModelPart::Rule(i), message));
            }
            let merged = [x.as_slice(), y.as_slice()].concat();
            if specials.contains(&rule.z) || pieces.insert(rule.z, merged).is_some() {
                let message = format!("rule {} {} {} produces an id that is already taken", rule.x, rule.y, rule.z);
                return Err((ModelPart::Rule(i), message));
            }
            rule_index.insert((rule.x, rule.y), i as u32);
        }
        Ok(Bpe { char_ids, char_order: chars, rules, rule_index, special, pieces, space_id })
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
        // The counts are the file's word: reserve no more than it has lines for.
        let mut chars = Vec::with_capacity(n_chars.min(last_line));
        let mut char_lines = Vec::with_capacity(n_chars.min(last_line));
        for _ in 0..n_chars {
            let (line, v) = next_numbers(2, "a character line `codepoint id`")?;
            chars.push((as_u32(v[0], line, "code point")?, as_u32(v[1], line, "id")?));
            char_lines.push(line);
        }
        let mut rules = Vec::with_capacity(n_rules.min(last_line));
        let mut rule_lines = Vec::with_capacity(n_rules.min(last_line));
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

    /// Writes the model in YTTM's format (characters in the order they were given, rules
    /// in priority order), so a loaded YTTM file is written back byte for byte.
    pub fn to_model_string(&self) -> String {
        let mut out = format!("{} {}\n", self.char_order.len(), self.rules.len());
        for &(c, id) in &self.char_order {
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

    /// Learns a vocabulary of at most `vocab_size` ids from `corpus` (one sentence per
    /// line) with every character kept: the model `yttm.BPE.train(corpus, model,
    /// vocab_size, n_threads=1)` writes (coverage 1.0 is YTTM's default).
    pub fn train(corpus: &str, vocab_size: usize) -> Result<Bpe, TokenizerError> {
        Self::train_with_coverage(corpus, vocab_size, 1.0)
    }

    /// Like [`Bpe::train`], but the rarest characters, up to `1 - coverage` of the
    /// corpus (whitespace counted), get no id (YTTM's `coverage`).
    ///
    /// Ids: 0-3 are pad, unk, bos, eos; 4 the word marker; then the characters, most
    /// frequent first; then merges of the most frequent adjacent pair, as YTTM picks
    /// them (the module `yttm_trainer` below). Ends early when no pair is left.
    pub fn train_with_coverage(corpus: &str, vocab_size: usize, coverage: f64) -> Result<Bpe, TokenizerError> {
        if !(coverage > 0.0 && coverage <= 1.0) {
            return Err(TokenizerError::Training(format!("coverage {coverage} is not in (0, 1]")));
        }
        let learned = yttm_trainer::learn(corpus, vocab_size, coverage).map_err(TokenizerError::Training)?;
        Bpe::new(learned.chars, learned.rules, SpecialTokens::RUDALLE).map_err(TokenizerError::Training)
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

mod yttm_trainer;

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

    /// The header's counts were trusted for reserving memory: "4294967295 0" asked for
    /// 64 GB before reading the first character line.
    #[test]
    fn a_header_claiming_four_billion_characters_is_an_error_not_an_allocation() {
        let (line, message) = Bpe::parse("4294967295 4294967295\n9601 4\n").unwrap_err();
        assert_eq!(line, 2, "{message}");
        assert!(message.contains("file ends"), "{message}");
    }

    /// Each rule's piece joins two earlier ones: forty rules doubling one character spelt
    /// out 2^40 characters (terabytes) while the file was read.
    #[test]
    fn rules_that_double_a_piece_again_and_again_are_refused() {
        let mut text = String::from("2 40\n9601 4\n97 5\n5 5 6\n");
        for z in 7..6 + 40 {
            text.push_str(&format!("{} {} {z}\n", z - 1, z - 1));
        }
        text.push_str("1 0 2 3\n");
        let (line, message) = Bpe::parse(&text).unwrap_err();
        assert!(message.contains("spell out over"), "{message}");
        assert_eq!(line, 4 + 23, "the rule whose piece passes 2^24 characters: {message}");
    }

    /// An id from 10^9 up was taken for a run of unknown characters: a model giving `a` such
    /// an id encoded "a" as UNK.
    #[test]
    fn ids_a_model_cannot_have_are_refused() {
        let (line, message) = Bpe::parse("2 0\n9601 4\n97 1000000000\n1 0 2 3\n").unwrap_err();
        assert_eq!(line, 3);
        assert!(message.contains("too large"), "{message}");
        let (line, message) = Bpe::parse("2 1\n9601 4\n97 5\n4 5 1000000000\n1 0 2 3\n").unwrap_err();
        assert_eq!(line, 4);
        assert!(message.contains("too large"), "{message}");
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

    #[test]
    fn a_model_file_is_written_back_as_it_was_read() {
        // YTTM lists the characters in its hash table's order, not by id.
        let text = "3 1\n97 6\n9601 4\n98 5\n6 5 7\n1 0 2 3\n";
        assert_eq!(Bpe::parse(text).unwrap().to_model_string(), text);
    }

    #[test]
    fn training_gives_character_ids_as_youtokentome_does() {
        // a 4, b 2, c 2, d 1 of 14 characters: at coverage 0.9 'd' is dropped (even from
        // its word); the marker comes first, then the most frequent, a tie larger code point first.
        let bpe = Bpe::train_with_coverage("aaa bb cc a\nd\n", 8, 0.9).unwrap();
        let ids: Vec<Option<u32>> =
            ['\u{2581}', 'a', 'c', 'b', 'd'].iter().map(|&c| bpe.char_ids.get(&(c as u32)).copied()).collect();
        assert_eq!(ids, [Some(4), Some(5), Some(6), Some(7), None]);
        assert_eq!(bpe.encode("d"), vec![4, TextTokenizer::UNK]);
        for coverage in [0.0, 1.5, f64::NAN] {
            assert!(Bpe::train_with_coverage("a b", 10, coverage).is_err(), "{coverage}");
        }
    }
}
