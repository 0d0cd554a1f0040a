//! youtokentome 1.0.6's trainer (`learn_bpe_from_string`, one thread), step for step.
//!
//! Where it is not textbook BPE:
//! - the rarest characters, up to `1 - coverage` of the text (whitespace counted), are
//!   dropped, from the words too; id 4 is the word marker, then the characters by
//!   count, of equal counts the larger code point first;
//! - a run of n equal tokens holds n / 2 of their pair;
//! - the next merge is chosen while a second thread still applies the last one, so
//!   pairs with the newest token count one merge late, unless the queue's top touches
//!   the last merge (or that was x + x): then it waits;
//! - pairs of equal count come in the order its queue received them (a stack per count
//!   below sqrt(text length), a scan that swaps the largest to the back above), and
//!   that order comes from where its hash tables (ska::flat_hash_map) keep their keys.
//!
//! So this module keeps the same tables, queue and schedule.

use super::{is_space, HashMap, MergeRule, SPACE_TOKEN};
use std::borrow::Cow;

/// Key order of a ska::flat_hash_map (sherwood_v3_table: Robin Hood probing,
/// Fibonacci hashing, max load 0.5): inserts, `clear` (keeps the slots), copies.
struct SkaMap<V> {
    /// Distance from the wanted slot, -1 for an empty one; the last slot ends the table.
    dist: Vec<i8>,
    /// (key, hash, value) per slot.
    slots: Vec<(u64, u64, V)>,
    slots_minus_one: u64,
    shift: u32,
    max_lookups: i8,
    len: usize,
}

impl<V: Copy + Default> SkaMap<V> {
    fn new() -> Self {
        SkaMap {
            dist: vec![-1, -1, -1, 0],
            slots: vec![(0, 0, V::default()); 4],
            slots_minus_one: 0,
            shift: 63,
            max_lookups: 3,
            len: 0,
        }
    }

    /// A copy as ska's copy constructor makes it (sized for `other`, keys in its order).
    fn copy_of(other: &SkaMap<V>) -> Self {
        let mut copy = SkaMap::new();
        copy.rehash((2 * other.len as u64).min(other.bucket_count()));
        for (key, hash, value) in other.iter() {
            *copy.get_or_insert(key, hash) = value;
        }
        copy
    }

    fn bucket_count(&self) -> u64 {
        if self.slots_minus_one == 0 {
            0
        } else {
            self.slots_minus_one + 1
        }
    }

    /// The slots iteration visits (the end marker excluded).
    fn used_range(&self) -> usize {
        (self.slots_minus_one + self.max_lookups as u64) as usize
    }

    fn iter(&self) -> impl Iterator<Item = (u64, u64, V)> + '_ {
        (0..self.used_range()).filter(|&i| self.dist[i] >= 0).map(|i| self.slots[i])
    }

    fn clear(&mut self) {
        let end = self.used_range();
        self.dist[..end].fill(-1);
        self.len = 0;
    }

    /// `map[key]`: the value of `key`, inserted as `V::default()` if it is new.
    fn get_or_insert(&mut self, key: u64, hash: u64) -> &mut V {
        let slot = loop {
            let mut i = (hash.wrapping_mul(11_400_714_819_323_198_485) >> self.shift) as usize;
            let mut d = 0i8;
            let mut found = None;
            while self.dist[i] >= d {
                if self.slots[i].0 == key && i + 1 < self.dist.len() {
                    found = Some(i);
                    break;
                }
                i += 1;
                d += 1;
            }
            if let Some(slot) = found.or_else(|| self.insert_new(d, i, key, hash)) {
                break slot;
            }
        };
        &mut self.slots[slot].2
    }

    /// ska's emplace_new_key: `None` when the table grew and the insert must start over.
    fn insert_new(&mut self, mut d: i8, mut i: usize, key: u64, hash: u64) -> Option<usize> {
        if self.slots_minus_one == 0
            || d == self.max_lookups
            || (self.len + 1) as f64 > (self.slots_minus_one + 1) as f64 * 0.5
        {
            self.grow();
            return None;
        }
        let mut carried = (key, hash, V::default());
        if self.dist[i] < 0 {
            self.dist[i] = d;
            self.slots[i] = carried;
            self.len += 1;
            return Some(i);
        }
        let result = i;
        std::mem::swap(&mut d, &mut self.dist[i]);
        std::mem::swap(&mut carried, &mut self.slots[i]);
        d += 1;
        i += 1;
        loop {
            if self.dist[i] < 0 {
                self.dist[i] = d;
                self.slots[i] = carried;
                self.len += 1;
                return Some(result);
            } else if self.dist[i] < d {
                std::mem::swap(&mut d, &mut self.dist[i]);
                std::mem::swap(&mut carried, &mut self.slots[i]);
                d += 1;
            } else {
                d += 1;
                if d == self.max_lookups {
                    // The new key leaves its slot again; the table grows, then it is retried.
                    std::mem::swap(&mut carried, &mut self.slots[result]);
                    self.grow();
                    return None;
                }
            }
            i += 1;
        }
    }

    fn grow(&mut self) {
        self.rehash(4.max(2 * self.bucket_count()));
    }

    fn rehash(&mut self, buckets: u64) {
        let buckets = buckets.max((self.len as f64 / 0.5).ceil() as u64);
        if buckets == 0 {
            *self = SkaMap::new();
            return;
        }
        let buckets = buckets.next_power_of_two().max(2);
        if buckets == self.bucket_count() {
            return;
        }
        let log2 = buckets.trailing_zeros();
        let max_lookups = log2.max(4) as i8;
        let total = buckets as usize + max_lookups as usize;
        let old_end = self.used_range();
        let mut old_dist = vec![-1i8; total];
        old_dist[total - 1] = 0;
        let old_dist = std::mem::replace(&mut self.dist, old_dist);
        let old_slots = std::mem::replace(&mut self.slots, vec![(0, 0, V::default()); total]);
        self.slots_minus_one = buckets - 1;
        self.shift = 64 - log2;
        self.max_lookups = max_lookups;
        self.len = 0;
        for i in (0..old_end).filter(|&i| old_dist[i] >= 0) {
            let (key, hash, value) = old_slots[i];
            *self.get_or_insert(key, hash) = value;
        }
    }
}

/// A set of integer keys (std::hash of an integer is the integer).
type SkaSet = SkaMap<()>;

fn pair(x: u32, y: u32) -> u64 {
    (u64::from(x) << 32) | u64::from(y)
}

fn unpair(code: u64) -> (u32, u32) {
    ((code >> 32) as u32, code as u32)
}

/// YTTM's hash of a word (its UTF-8 bytes).
fn word_hash(word: &[u8]) -> u64 {
    const MOD: u64 = 2_032_191_299;
    const P: u64 = 726_328_703;
    word.iter().fold(0, |hash, &b| (hash * P + u64::from(b)) % MOD)
}

#[derive(Clone, Copy, Debug)]
struct Candidate {
    count: u64,
    left: u32,
    right: u32,
}

/// YTTM's merge queue: counts below `bound` in LIFO buckets per count, the rest in
/// a list whose largest entry is swapped to the back (no tie-break beyond that).
struct MergeQueue {
    bound: u64,
    big: Vec<Candidate>,
    small: Vec<Vec<Candidate>>,
}

/// Whether a pair's count may still change with the merge `rule` in flight.
fn intersects(rule: MergeRule, left: u32, right: u32) -> bool {
    rule.y == left || rule.x == right
}

impl MergeQueue {
    fn new(text_len: u64) -> Self {
        MergeQueue { bound: (text_len as f64).sqrt() as u64, big: Vec::new(), small: Vec::new() }
    }

    fn push(&mut self, candidate: Candidate) {
        if candidate.count == 0 {
            return;
        }
        if candidate.count < self.bound {
            self.push_small(candidate);
        } else {
            self.big.push(candidate);
        }
    }

    fn push_small(&mut self, candidate: Candidate) {
        let count = candidate.count as usize;
        if self.small.len() <= count {
            self.small.resize_with(count + 1, Vec::new);
        }
        self.small[count].push(candidate);
    }

    fn trim_small(&mut self) {
        while self.small.last().is_some_and(Vec::is_empty) {
            self.small.pop();
        }
    }

    fn is_empty(&mut self) -> bool {
        self.trim_small();
        self.big.is_empty() && self.small.is_empty()
    }

    fn top(&mut self, counts: &HashMap<u64, u64>, last_rule: MergeRule) -> Candidate {
        let mut i = 0;
        while i < self.big.len() {
            let event = &mut self.big[i];
            if !intersects(last_rule, event.left, event.right) {
                event.count = counts.get(&pair(event.left, event.right)).copied().unwrap_or(0);
            }
            if event.count < self.bound {
                let event = self.big.swap_remove(i);
                self.push_small(event);
            } else {
                i += 1;
            }
        }
        if let Some(last) = self.big.len().checked_sub(1) {
            for j in 0..self.big.len() {
                if self.big[j].count > self.big[last].count {
                    self.big.swap(j, last);
                }
            }
            return self.big[last];
        }
        self.trim_small();
        *self.small.last().and_then(|bucket| bucket.last()).expect("top of an empty queue")
    }

    fn pop(&mut self) {
        if self.big.pop().is_none() {
            self.small.last_mut().and_then(Vec::pop);
        }
    }
}

#[derive(Clone, Copy)]
struct Node {
    val: u32,
    prev: i32,
    next: i32,
    seg_len: i32,
}

const DEAD: Node = Node { val: 0, prev: -1, next: -1, seg_len: 0 };

/// YTTM's merge worker: words as linked lists of runs (a run of one token with
/// its length), pair counts (a run of n equal tokens holds n / 2 of its pair) and
/// positions.
struct Worker {
    lists: Vec<Vec<Node>>,
    freq: Vec<u64>,
    positions: HashMap<u64, Vec<(u32, u32)>>,
    counts: HashMap<u64, u64>,
    left_tokens: SkaSet,
    right_tokens: SkaSet,
    /// Per parity of the rule: (token, count of (token, z)) and (token, count of (z, token)).
    submitted: [(SkaMap<u64>, SkaMap<u64>); 2],
}

impl Worker {
    fn pair_code(&self, w: usize, p: usize) -> u64 {
        let list = &self.lists[w];
        pair(list[p].val, list[list[p].next as usize].val)
    }

    fn self_code(&self, w: usize, p: usize) -> u64 {
        pair(self.lists[w][p].val, self.lists[w][p].val)
    }

    fn count_mut(&mut self, code: u64) -> &mut u64 {
        self.counts.entry(code).or_default()
    }

    fn remove_pair(&mut self, w: usize, p: usize) {
        let (code, f) = (self.pair_code(w, p), self.freq[w]);
        let c = self.count_mut(code);
        *c = c.wrapping_sub(f);
    }

    /// After a merge at `p1` of word `w`: the pairs it makes with its neighbours `p0`
    /// and `p3` (-1 where there is none) are counted again.
    fn add_pairs_around(&mut self, w: usize, p0: i32, p1: usize, p3: i32) {
        if p0 != -1 {
            self.add_pair(w, p0 as usize);
            self.left(self.lists[w][p0 as usize].val);
        }
        if p3 != -1 {
            self.add_pair(w, p1);
            self.right(self.lists[w][p3 as usize].val);
        }
    }

    fn add_pair(&mut self, w: usize, p: usize) {
        let (code, f) = (self.pair_code(w, p), self.freq[w]);
        self.positions.entry(code).or_default().push((w as u32, p as u32));
        let c = self.count_mut(code);
        *c = c.wrapping_add(f);
    }

    fn add_empty_pair(&mut self, w: usize, p: usize) {
        let code = self.pair_code(w, p);
        self.positions.entry(code).or_default().push((w as u32, p as u32));
    }

    fn add_self_pair(&mut self, w: usize, p: usize) {
        let (code, f) = (self.self_code(w, p), self.freq[w]);
        let real = f * (self.lists[w][p].seg_len / 2) as u64;
        self.positions.entry(code).or_default().push((w as u32, p as u32));
        let c = self.count_mut(code);
        *c = c.wrapping_add(real);
    }

    fn add_merge_compensation(&mut self, w: usize, p: usize, score_diff: i32) {
        let (code, f) = (self.self_code(w, p), self.freq[w]);
        let c = self.count_mut(code);
        *c = c.wrapping_sub((score_diff as u64).wrapping_mul(f));
    }

    fn seg_len_decrement(&mut self, w: usize, p: usize) {
        let seg_len = self.lists[w][p].seg_len;
        self.lists[w][p].seg_len -= 1;
        if seg_len % 2 == 1 {
            return;
        }
        let (code, f) = (self.self_code(w, p), self.freq[w]);
        let c = self.count_mut(code);
        *c = c.wrapping_sub(f);
    }

    fn self_full_remove(&mut self, w: usize, p: usize) {
        let (code, f) = (self.self_code(w, p), self.freq[w]);
        // YTTM keeps this product in 32 bits.
        let real = (f * (self.lists[w][p].seg_len / 2) as u64) as u32;
        let c = self.count_mut(code);
        *c = c.wrapping_sub(u64::from(real));
    }

    fn try_merge(&mut self, w: usize, p1: usize, p2: usize) {
        let (a, b) = (self.lists[w][p1], self.lists[w][p2]);
        if a.val != b.val {
            return;
        }
        let before = a.seg_len / 2 + b.seg_len / 2 + 1;
        self.lists[w][p1].seg_len += b.seg_len;
        let after = self.lists[w][p1].seg_len / 2;
        if before != after {
            self.add_merge_compensation(w, p1, before - after);
        }
        self.lists[w][p1].next = b.next;
        self.lists[w][p2] = DEAD;
        if b.next != -1 {
            self.lists[w][b.next as usize].prev = p1 as i32;
            self.add_empty_pair(w, p1);
        }
    }

    fn left(&mut self, token: u32) {
        self.left_tokens.get_or_insert(token.into(), token.into());
    }

    fn right(&mut self, token: u32) {
        self.right_tokens.get_or_insert(token.into(), token.into());
    }

    /// Applies the merge x + y -> z everywhere and records the counts of the new pairs.
    fn merge(&mut self, MergeRule { x, y, z }: MergeRule) {
        self.left_tokens.clear();
        self.right_tokens.clear();
        self.left(z);
        let candidates = self.positions.remove(&pair(x, y)).unwrap_or_default();
        for (w, p1) in candidates {
            let (w, p1) = (w as usize, p1 as usize);
            if x == y {
                self.merge_run(w, p1, x, z);
            } else {
                self.merge_pair(w, p1, x, y, z);
            }
        }
        self.positions.remove(&pair(x, y));
        let parity = (z % 2) as usize;
        let (mut lefts, mut rights) = std::mem::replace(&mut self.submitted[parity], (SkaMap::new(), SkaMap::new()));
        lefts.clear();
        rights.clear();
        for (token, _, ()) in self.left_tokens.iter() {
            *lefts.get_or_insert(token, token) = self.counts.get(&pair(token as u32, z)).copied().unwrap_or(0);
        }
        for (token, _, ()) in self.right_tokens.iter() {
            *rights.get_or_insert(token, token) = self.counts.get(&pair(z, token as u32)).copied().unwrap_or(0);
        }
        self.submitted[parity] = (lefts, rights);
    }

    /// x + x -> z inside the run of x at p1.
    fn merge_run(&mut self, w: usize, p1: usize, x: u32, z: u32) {
        let node = self.lists[w][p1];
        if node.val != x || node.seg_len < 2 {
            return;
        }
        let (p0, p3) = (node.prev, node.next);
        self.self_full_remove(w, p1);
        if p0 != -1 {
            self.remove_pair(w, p0 as usize);
        }
        if p3 != -1 {
            self.remove_pair(w, p1);
        }
        let seg_len = node.seg_len;
        if seg_len % 2 == 0 {
            self.lists[w][p1] = Node { val: z, prev: p0, next: p3, seg_len: seg_len / 2 };
            self.add_pairs_around(w, p0, p1, p3);
        } else {
            let p2 = self.lists[w].len();
            self.lists[w].push(Node { val: x, prev: p1 as i32, next: p3, seg_len: 1 });
            self.lists[w][p1] = Node { val: z, prev: p0, next: p2 as i32, seg_len: seg_len / 2 };
            if p0 != -1 {
                self.add_pair(w, p0 as usize);
                self.left(self.lists[w][p0 as usize].val);
            }
            self.add_pair(w, p1);
            self.right(self.lists[w][p2].val);
            if p3 != -1 {
                self.lists[w][p3 as usize].prev = p2 as i32;
                self.add_pair(w, p2);
            }
        }
        if seg_len / 2 >= 2 {
            self.add_self_pair(w, p1);
        }
    }

    /// x + y -> z (x != y) between the nodes p1 and its next.
    fn merge_pair(&mut self, w: usize, p1: usize, x: u32, y: u32, z: u32) {
        let node = self.lists[w][p1];
        let p2 = node.next;
        if node.val != x || p2 == -1 || self.lists[w][p2 as usize].val != y {
            return;
        }
        let p2 = p2 as usize;
        let (p0, p3) = (node.prev, self.lists[w][p2].next);
        self.remove_pair(w, p1);
        if p0 != -1 && self.lists[w][p1].seg_len == 1 {
            self.remove_pair(w, p0 as usize);
        }
        if p3 != -1 && self.lists[w][p2].seg_len == 1 {
            self.remove_pair(w, p2);
        }
        match (self.lists[w][p1].seg_len > 1, self.lists[w][p2].seg_len > 1) {
            (true, true) => {
                let p12 = self.lists[w].len();
                self.lists[w].push(Node { val: z, prev: p1 as i32, next: p2 as i32, seg_len: 1 });
                self.seg_len_decrement(w, p1);
                self.seg_len_decrement(w, p2);
                self.lists[w][p1].next = p12 as i32;
                self.lists[w][p2].prev = p12 as i32;
                self.add_pair(w, p1);
                self.left(self.lists[w][p1].val);
                self.add_pair(w, p12);
                self.right(self.lists[w][p2].val);
            }
            (true, false) => {
                self.lists[w][p2] = Node { val: z, prev: p1 as i32, next: p3, seg_len: 1 };
                self.seg_len_decrement(w, p1);
                self.add_pair(w, p1);
                self.left(self.lists[w][p1].val);
                if p3 != -1 {
                    self.add_pair(w, p2);
                    self.right(self.lists[w][p3 as usize].val);
                    self.try_merge(w, p2, p3 as usize);
                }
            }
            (false, true) => {
                self.lists[w][p1] = Node { val: z, prev: p0, next: p2 as i32, seg_len: 1 };
                self.seg_len_decrement(w, p2);
                if p0 != -1 {
                    self.add_pair(w, p0 as usize);
                    self.left(self.lists[w][p0 as usize].val);
                }
                self.add_pair(w, p1);
                self.right(self.lists[w][p2].val);
                if p0 != -1 {
                    self.try_merge(w, p0 as usize, p1);
                }
            }
            (false, false) => {
                self.lists[w][p1] = Node { val: z, prev: p0, next: p3, seg_len: 1 };
                self.lists[w][p2] = DEAD;
                if p3 != -1 {
                    self.lists[w][p3 as usize].prev = p1 as i32;
                }
                self.add_pairs_around(w, p0, p1, p3);
                if p0 != -1 {
                    self.try_merge(w, p0 as usize, p1);
                }
                if p3 != -1 {
                    self.try_merge(w, p1, p3 as usize);
                }
            }
        }
    }
}

/// What training learned: characters with their ids in the order the model file
/// lists them, and the merge rules in order.
pub(super) struct Learned {
    pub chars: Vec<(u32, u32)>,
    pub rules: Vec<MergeRule>,
}

/// Trains like `yttm.BPE.train(..., coverage, n_threads=1)` with the special ids
/// 0-3 (which makes YTTM's final renaming of ids the identity).
pub(super) fn learn(text: &str, vocab_size: usize, coverage: f64) -> Result<Learned, String> {
    let n_special = 4;
    // The alphabet: the rarest characters, up to 1 - coverage of the text, are dropped.
    let text_len = text.chars().count() as u64;
    let mut char_counts: HashMap<u32, u64> = HashMap::default();
    for c in text.chars().map(u32::from).filter(|&c| !is_space(c)) {
        *char_counts.entry(c).or_default() += 1;
    }
    let mut frequencies: Vec<(u64, u32)> = char_counts.into_iter().map(|(c, n)| (n, c)).collect();
    frequencies.sort_unstable();
    let (mut cut, mut removed) = (0, 0u64);
    while cut < frequencies.len() && (text_len - removed - frequencies[cut].0) as f64 > text_len as f64 * coverage {
        removed += frequencies[cut].0;
        cut += 1;
    }
    let mut char2id = SkaMap::<u32>::new();
    let mut next_id = n_special;
    let mut id_of: HashMap<u32, u32> = HashMap::default();
    for c in std::iter::once(SPACE_TOKEN as u32).chain(frequencies[cut..].iter().rev().map(|&(_, c)| c)) {
        *char2id.get_or_insert(c.into(), c.into()) = next_id;
        id_of.insert(c, next_id);
        next_id += 1;
    }
    if next_id as usize > vocab_size {
        return Err(format!(
            "vocab size {vocab_size} is below {next_id}: {} characters, the marker and {n_special} special ids",
            next_id - n_special - 1
        ));
    }

    // Words in the order of YTTM's word table, rare characters taken out of them.
    let mut word_table = SkaMap::<()>::new();
    let mut word_index: HashMap<Cow<str>, usize> = HashMap::default();
    let mut words: Vec<(Vec<u32>, u64)> = Vec::new();
    let known = |c: &char| id_of.contains_key(&u32::from(*c));
    for raw in text.split(|c: char| is_space(c.into())) {
        let word: Cow<str> =
            if raw.chars().all(|c| known(&c)) { raw.into() } else { raw.chars().filter(known).collect() };
        if word.is_empty() {
            continue;
        }
        if let Some(&i) = word_index.get(word.as_ref()) {
            words[i].1 += 1;
            continue;
        }
        word_table.get_or_insert(words.len() as u64, word_hash(word.as_bytes()));
        let ids = std::iter::once(SPACE_TOKEN as u32).chain(word.chars().map(u32::from)).map(|c| id_of[&c]).collect();
        word_index.insert(word, words.len());
        words.push((ids, 1));
    }
    if words.is_empty() {
        return Err("the corpus has no words".into());
    }
    let words: Vec<(Vec<u32>, u64)> =
        word_table.iter().map(|(i, _, ())| std::mem::take(&mut words[i as usize])).collect();

    // Linked lists of runs, pair positions and counts (and the order pairs were first seen).
    let mut worker = Worker {
        lists: Vec::with_capacity(words.len()),
        freq: words.iter().map(|(_, n)| *n).collect(),
        positions: HashMap::default(),
        counts: HashMap::default(),
        left_tokens: SkaSet::new(),
        right_tokens: SkaSet::new(),
        submitted: [(SkaMap::new(), SkaMap::new()), (SkaMap::new(), SkaMap::new())],
    };
    let mut first_seen = SkaSet::new();
    for (w, (word, count)) in words.iter().enumerate() {
        let mut list: Vec<Node> = Vec::new();
        for &c in word {
            match list.last_mut() {
                Some(last) if last.val == c => last.seg_len += 1,
                _ => {
                    let n = list.len() as i32;
                    list.push(Node { val: c, prev: n - 1, next: n + 1, seg_len: 1 });
                }
            }
        }
        list.last_mut().expect("a word has its marker").next = -1;
        for j in 0..list.len() {
            let mut add = |code: u64, n: u64| {
                worker.positions.entry(code).or_default().push((w as u32, j as u32));
                first_seen.get_or_insert(code, code);
                *worker.counts.entry(code).or_default() += n;
            };
            if j + 1 < list.len() {
                add(pair(list[j].val, list[j + 1].val), *count);
            }
            if list[j].seg_len > 1 {
                add(pair(list[j].val, list[j].val), count * (list[j].seg_len / 2) as u64);
            }
        }
        worker.lists.push(list);
    }

    let mut queue = MergeQueue::new(text_len);
    let mut all_pairs = SkaSet::new();
    for (code, _, ()) in first_seen.iter() {
        all_pairs.get_or_insert(code, code);
    }
    for (code, _, ()) in all_pairs.iter() {
        let (left, right) = unpair(code);
        queue.push(Candidate { count: worker.counts[&code], left, right });
    }

    // YTTM's main loop: a merge is chosen while the worker still applies the one
    // before (whose new pairs are not queued yet), unless the queue's top touches
    // that one; then it waits for it. Right after a merge chosen with nothing in
    // flight, whether the worker reports before the main thread looks again is a
    // race in YTTM; the worker usually loses it, and always does here.
    let n_tokens = vocab_size as u64;
    let mut used = u64::from(next_id);
    let mut finished = used;
    let mut last_failed_try = 0u64;
    let mut rules: Vec<MergeRule> = Vec::new();
    let mut global_left = SkaMap::<u64>::new();
    let mut global_right = SkaMap::<u64>::new();
    while used < n_tokens {
        let fresh = used == finished;
        let mut picked = false;
        if used - finished < 2 && last_failed_try < finished {
            let in_flight = used - finished == 1;
            loop {
                if queue.is_empty() {
                    if finished == used {
                        // Nothing left to merge.
                        return Ok(Learned { chars: dump_order(&char2id), rules });
                    }
                    last_failed_try = finished;
                    break;
                }
                let last_rule =
                    if in_flight { *rules.last().expect("a rule in flight") } else { MergeRule { x: 0, y: 0, z: 0 } };
                let top = queue.top(&worker.counts, last_rule);
                if in_flight && (intersects(last_rule, top.left, top.right) || last_rule.x == last_rule.y) {
                    last_failed_try = finished;
                    break;
                }
                queue.pop();
                let real = worker.counts.get(&pair(top.left, top.right)).copied().unwrap_or(0);
                if real != top.count {
                    if real > 0 {
                        queue.push(Candidate { count: real, ..top });
                    }
                    continue;
                }
                if real == 0 {
                    continue;
                }
                let rule = MergeRule { x: top.left, y: top.right, z: used as u32 };
                worker.merge(rule);
                rules.push(rule);
                used += 1;
                picked = true;
                break;
            }
        }
        if finished < used && !(fresh && picked) {
            let z = finished as u32; // the token rule `finished` made
            let (lefts, rights) = &worker.submitted[(finished % 2) as usize];
            for (token, _, count) in lefts.iter() {
                *global_left.get_or_insert(token, token) += count;
            }
            for (token, _, count) in rights.iter() {
                *global_right.get_or_insert(token, token) += count;
            }
            for (token, _, count) in global_left.iter() {
                queue.push(Candidate { count, left: token as u32, right: z });
            }
            for (token, _, count) in global_right.iter() {
                queue.push(Candidate { count, left: z, right: token as u32 });
            }
            global_left.clear();
            global_right.clear();
            finished += 1;
        }
    }
    Ok(Learned { chars: dump_order(&char2id), rules })
}

/// The model file lists the characters in the order of a copy of YTTM's table.
fn dump_order(char2id: &SkaMap<u32>) -> Vec<(u32, u32)> {
    SkaMap::copy_of(char2id).iter().map(|(c, _, id)| (c as u32, id)).collect()
}
