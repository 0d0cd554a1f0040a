//! Seeded property tests of every parser of outside bytes: the protocol's JSON frames,
//! base64 and data-URL pictures, image files and their EXIF, the HTTP API's multipart
//! forms, BPE model files and the tokenizer, torch and safetensors checkpoints, and
//! training CSVs. Each property feeds arbitrary input and mutations of valid input
//! (flipped bytes, edge-case integers, cuts, splices) and requires an error value:
//! no panic, no hang (a watchdog aborts a case running over a minute), and no allocation
//! beyond what the parser's limits allow (a counting allocator measures the largest one).
//!
//! The cases are the same on every run (ChaCha from a fixed seed). For a longer run:
//! `PROPTEST_CASES=100000 cargo test -p borscht --release --test decoders_fuzz`, and
//! `DECODERS_FUZZ_SEED=<u64>` draws other cases (docs/fuzzing.md).

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Cursor, Write as _};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

// ---------------------------------------------------------------------------------------
// Harness: seeded runners and a counting allocator.

/// Every property draws from this seed (mixed with its name, so adding a property
/// changes no other's cases).
const SEED: u64 = 0x626f_7273_6368_7400;

fn runner(name: &str, default_cases: u32) -> TestRunner {
    let env = |key: &str| std::env::var(key).ok().and_then(|v| v.parse::<u64>().ok());
    let cases = env("PROPTEST_CASES").map_or(default_cases, |n| n as u32);
    let seed = env("DECODERS_FUZZ_SEED").unwrap_or(SEED);
    // FNV-1a of the name: a stable stream per property.
    let name_hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&name_hash.to_le_bytes());
    let config = Config {
        cases,
        rng_algorithm: RngAlgorithm::ChaCha,
        failure_persistence: None,
        max_shrink_iters: 512,
        max_shrink_time: 60_000,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key))
}

thread_local! {
    /// How often each outcome ([`reached`]) came up in the property running on this thread.
    static OUTCOMES: std::cell::RefCell<std::collections::BTreeMap<&'static str, u32>> = Default::default();
}

/// Notes that a case ended in `outcome` ("decoded", "refused", ...).
fn reached(outcome: &'static str) {
    OUTCOMES.with(|o| *o.borrow_mut().entry(outcome).or_default() += 1);
}

/// Longest one case may take: past it the parser counts as hung and the run aborts.
const CASE_DEADLINE_MS: u64 = 60_000;

/// Runs `test` on `cases` values of `strategy`; a failure (or panic) fails with the
/// smallest input found, a case running past [`CASE_DEADLINE_MS`] aborts the run. Each
/// of `must_reach` must have come up, so a property whose inputs stop reaching past the
/// parser's first check fails instead of passing idly.
fn check<S: Strategy>(
    name: &str,
    cases: u32,
    must_reach: &[&str],
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    OUTCOMES.with(|o| o.borrow_mut().clear());
    let epoch = std::time::Instant::now();
    let now = move || epoch.elapsed().as_millis() as u64 + 1;
    // When the running case started (0: none running).
    let (started, done) = (std::sync::Arc::new(AtomicU64::new(0)), std::sync::Arc::new(AtomicBool::new(false)));
    let watchdog = {
        let (started, done, name) = (started.clone(), done.clone(), name.to_string());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(100));
                let start = started.load(Ordering::Relaxed);
                if start != 0 && now() - start > CASE_DEADLINE_MS {
                    // Straight to stderr: the test harness's capture dies with the process.
                    let _ =
                        writeln!(std::io::stderr(), "{name}: a case ran over {CASE_DEADLINE_MS} ms: the parser hangs");
                    std::process::abort();
                }
            }
        })
    };
    let result = runner(name, cases).run(&strategy, |value| {
        started.store(now(), Ordering::Relaxed);
        let result = test(value);
        started.store(0, Ordering::Relaxed);
        result
    });
    done.store(true, Ordering::Relaxed);
    watchdog.join().unwrap();
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    let outcomes = OUTCOMES.with(|o| o.take());
    eprintln!("{name}: {outcomes:?}");
    for outcome in must_reach {
        assert!(outcomes.contains_key(outcome), "{name}: no case was {outcome} ({outcomes:?})");
    }
}

/// Wraps the system allocator to record each thread's largest request, and refuses
/// (aborting the run with "memory allocation of N bytes failed") any over
/// [`ALLOCATION_CEILING`], so a parser that trusts a claimed size fails here instead of
/// taking the machine's memory.
struct Counting;

const ALLOCATION_CEILING: usize = 1 << 30;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) -> bool {
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
    size <= ALLOCATION_CEILING
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !note(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !note(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !note(new_size) {
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// `f`'s result and the largest single allocation it made on this thread.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = LARGEST.with(|l| l.replace(0));
    let result = f();
    let largest = LARGEST.with(|l| l.replace(before.max(l.get())));
    (result, largest)
}

const MIB: usize = 1 << 20;

// ---------------------------------------------------------------------------------------
// Mutations of valid input.

#[derive(Debug, Clone)]
enum Mutation {
    /// XOR one byte with a nonzero mask.
    Flip(Index, u8),
    /// Overwrite four bytes with an edge-case integer (little or big endian).
    Word(Index, u32, bool),
    /// Cut the input there.
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Delete(Index, u8),
    /// Copy a span of the input over another place.
    Splice {
        from: Index,
        to: Index,
        len: u16,
    },
}

fn edge_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(0x7f),
        Just(0xff),
        Just(0xffff),
        Just(100_000),
        Just(0x7fff_ffff),
        Just(0x8000_0000),
        Just(u32::MAX),
        any::<u32>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        6 => (any::<Index>(), 1..=255u8).prop_map(|(at, mask)| Mutation::Flip(at, mask)),
        2 => (any::<Index>(), edge_u32(), any::<bool>()).prop_map(|(at, v, be)| Mutation::Word(at, v, be)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), vec(any::<u8>(), 1..16)).prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        1 => (any::<Index>(), 1..64u8).prop_map(|(at, n)| Mutation::Delete(at, n)),
        1 => (any::<Index>(), any::<Index>(), 1..512u16).prop_map(|(from, to, len)| Mutation::Splice { from, to, len }),
    ]
}

fn mutations(max: usize) -> impl Strategy<Value = Vec<Mutation>> {
    vec(mutation(), 1..=max)
}

fn mutate(base: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut out = base.to_vec();
    for m in mutations {
        if out.is_empty() {
            break;
        }
        let len = out.len();
        match m {
            Mutation::Flip(at, mask) => out[at.index(len)] ^= mask,
            Mutation::Word(at, value, big_endian) => {
                let bytes = if *big_endian { value.to_be_bytes() } else { value.to_le_bytes() };
                let at = at.index(len);
                for (i, b) in bytes.iter().enumerate().take(len - at) {
                    out[at + i] = *b;
                }
            }
            Mutation::Truncate(at) => out.truncate(at.index(len)),
            Mutation::Insert(at, bytes) => {
                let at = at.index(len + 1);
                out.splice(at..at, bytes.iter().copied());
            }
            Mutation::Delete(at, n) => {
                let at = at.index(len);
                out.drain(at..(at + *n as usize).min(len));
            }
            Mutation::Splice { from, to, len: n } => {
                let (from, to) = (from.index(len), to.index(len));
                let span: Vec<u8> = out[from..(from + *n as usize).min(len)].to_vec();
                let end = (to + span.len()).min(len);
                out.splice(to..end, span);
            }
        }
    }
    out
}

/// `base` with the mutations applied to `range` only (a header, a directory, a pickle).
fn mutate_within(base: &[u8], range: std::ops::Range<usize>, mutations: &[Mutation]) -> Vec<u8> {
    [&base[..range.start], &mutate(&base[range.clone()], mutations)[..], &base[range.end..]].concat()
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(path)
}

// ---------------------------------------------------------------------------------------
// Protocol frames.

/// Valid frames of every client and server type, to mutate.
const FRAMES: &[&str] = &[
    r#"{"type":"hello","protocol_version":3}"#,
    r#"{"type":"ping","nonce":3}"#,
    r#"{"type":"recognize","id":1,"image":"aGk=","template":"блюдо:","n":4,"portion_g":250}"#,
    r#"{"type":"classify","id":2,"image":"data:image/png;base64,aGk=","classes":["борщ","шаурма"],"method":"zero_shot"}"#,
    r#"{"type":"generate_image","id":3,"text":"борщ","n":2,"seed":7}"#,
    r#"{"type":"generate_text","id":4,"prompt":"блюдо:","n":1}"#,
    r#"{"type":"cancel","id":1}"#,
    r#"{"type":"hello","protocol_version":3,"server":"borscht/0.1.0","model":"demo","dishes":[{"name":"рис","en":"rice"}]}"#,
    r#"{"type":"accepted","id":9,"queue_position":0}"#,
    r#"{"type":"candidate","id":9,"text":"блюдо: рис;","nutrition":{}}"#,
    r#"{"type":"result","id":1,"recognition":{"verdict":"not_sure","best":null,"alternatives":[],"confidence":0.5,"calibrated":true,"atwater":null,"portion":null,"candidates":[{"text":"x","nutrition":{},"perplexity":2.5}]}}"#,
    r#"{"type":"classification","id":9,"classification":{"classes":["a","b"],"scores":[0.5,0.5],"perplexities":[3.0,4.0],"label":0,"none_of_these":false}}"#,
    r#"{"type":"images","id":9,"images":["aGk="],"seed":7}"#,
    r#"{"type":"error","id":null,"code":"busy","message":"m","retry_after_s":2}"#,
];

/// Text near JSON: brackets, quotes, escapes, numbers and the protocol's words.
fn jsonish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("{".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just("\"".to_string()),
        Just(":".to_string()),
        Just(",".to_string()),
        Just("\\u00".to_string()),
        Just("\\ud800".to_string()),
        Just("null".to_string()),
        Just("1e999".to_string()),
        Just("-0".to_string()),
        Just("18446744073709551616".to_string()),
        Just("\"type\"".to_string()),
        Just("\"hello\"".to_string()),
        Just("\"recognize\"".to_string()),
        Just("\"id\"".to_string()),
        any::<u32>().prop_map(|n| n.to_string()),
        "[a-z_]{1,12}",
        any::<char>().prop_map(String::from),
    ];
    vec(token, 0..64).prop_map(|tokens| tokens.concat())
}

/// A frame mutated as text: characters replaced, inserted, removed, cut.
fn mutated_frame() -> impl Strategy<Value = String> {
    (0..FRAMES.len(), mutations(6))
        .prop_map(|(i, m)| String::from_utf8_lossy(&mutate(FRAMES[i].as_bytes(), &m)).into_owned())
}

fn decode_both(text: &str) -> Result<(), TestCaseError> {
    use borscht_protocol::{decode_client_message, decode_server_message, ErrorCode};
    let is_json = serde_json::from_str::<serde_json::Value>(text).is_ok();
    let results = [decode_client_message(text).map(|_| ()), decode_server_message(text).map(|_| ())];
    reached(if results.iter().any(Result::is_ok) { "decoded" } else { "refused" });
    for result in results {
        if let Err(e) = result {
            // The error says what is wrong, in a short message.
            prop_assert_eq!(e.code == ErrorCode::MalformedJson, !is_json, "{:?} for {:?}", e, text);
            prop_assert!(e.message.chars().count() < 400, "long message {:?}", e.message);
        }
    }
    Ok(())
}

#[test]
fn protocol_decoders_turn_any_text_into_a_message_or_a_classified_error() {
    check("protocol_any", 2048, &["refused"], any::<String>(), |text| decode_both(&text));
    check("protocol_jsonish", 2048, &["refused"], jsonish(), |text| decode_both(&text));
    check("protocol_mutated", 4096, &["decoded", "refused"], mutated_frame(), |text| decode_both(&text));
    // Nesting past serde_json's recursion limit is an error, not a stack overflow.
    for depth in [200, 100_000] {
        let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        decode_both(&deep).unwrap();
        let deep_field = format!(r#"{{"type":"ping","nonce":{}1{}}}"#, "[".repeat(depth), "]".repeat(depth));
        decode_both(&deep_field).unwrap();
    }
}

fn client_message() -> impl Strategy<Value = borscht_protocol::ClientMessage> {
    use borscht_protocol::{ClassifyMethod, ClientMessage};
    let text = any::<String>();
    let method =
        prop_oneof![Just(ClassifyMethod::CaptionFit), Just(ClassifyMethod::ImageFit), Just(ClassifyMethod::ZeroShot)];
    prop_oneof![
        any::<u32>().prop_map(|v| ClientMessage::Hello { protocol_version: v }),
        any::<u64>().prop_map(|nonce| ClientMessage::Ping { nonce }),
        (any::<u64>(), text, proptest::option::of(text), any::<Option<u32>>(), proptest::option::of(-1e6f32..1e6))
            .prop_map(|(id, image, template, n, portion_g)| ClientMessage::Recognize {
                id,
                image,
                template,
                n,
                portion_g
            }),
        (any::<u64>(), text, vec(text, 0..4), proptest::option::of(text), proptest::option::of(method)).prop_map(
            |(id, image, classes, template, method)| ClientMessage::Classify { id, image, classes, template, method }
        ),
        (any::<u64>(), text, any::<Option<u32>>(), any::<Option<u64>>())
            .prop_map(|(id, text, n, seed)| ClientMessage::GenerateImage { id, text, n, seed }),
        (any::<u64>(), text, any::<Option<u32>>()).prop_map(|(id, prompt, n)| ClientMessage::GenerateText {
            id,
            prompt,
            n
        }),
        any::<u64>().prop_map(|id| ClientMessage::Cancel { id }),
    ]
}

#[test]
fn every_client_message_survives_encoding_and_decoding() {
    check("protocol_round_trip", 1024, &[], client_message(), |message| {
        let text = borscht_protocol::encode(&message);
        prop_assert_eq!(borscht_protocol::decode_client_message(&text).unwrap(), message);
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------
// Pictures: image files, EXIF, base64 and data URLs.

use borscht_pipelines::imaging::{decode_image, ImageInputError, ImageLimits};
use image::{DynamicImage, ImageFormat, RgbImage};

/// Tight limits, so that mutated headers claiming large sizes cost little here.
const TEST_LIMITS: ImageLimits = ImageLimits { max_bytes: MIB, max_width: 2048, max_height: 2048, max_pixels: 1 << 20 };

fn picture(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| image::Rgb([(x * 40) as u8, (y * 50) as u8, ((x + y) * 17) as u8]))
}

fn encoded(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    image.write_to(&mut Cursor::new(&mut bytes), format).unwrap();
    bytes
}

/// A TIFF (EXIF) block: byte order, first-IFD offset, its entries (tag, type, count,
/// value) as stated or with another count, then trailing bytes.
#[derive(Debug, Clone)]
struct Exif {
    big_endian: bool,
    ifd_offset: u32,
    claimed_entries: Option<u16>,
    entries: Vec<(u16, u16, u32, u32)>,
    tail: Vec<u8>,
}

impl Exif {
    fn orientation(value: u16) -> Exif {
        Exif {
            big_endian: false,
            ifd_offset: 8,
            claimed_entries: None,
            entries: vec![(0x0112, 3, 1, value as u32)],
            tail: vec![0; 4],
        }
    }

    fn tiff(&self) -> Vec<u8> {
        type Writers = (fn(u16) -> [u8; 2], fn(u32) -> [u8; 4]);
        let (u16b, u32b): Writers =
            if self.big_endian { (u16::to_be_bytes, u32::to_be_bytes) } else { (u16::to_le_bytes, u32::to_le_bytes) };
        let mut out = if self.big_endian { b"MM\0*".to_vec() } else { b"II*\0".to_vec() };
        out.extend(u32b(self.ifd_offset));
        out.extend(u16b(self.claimed_entries.unwrap_or(self.entries.len() as u16)));
        for &(tag, kind, count, value) in &self.entries {
            out.extend(u16b(tag));
            out.extend(u16b(kind));
            out.extend(u32b(count));
            // A SHORT value sits in the field's first two bytes.
            if kind == 3 && count == 1 {
                out.extend(u16b(value as u16));
                out.extend([0, 0]);
            } else {
                out.extend(u32b(value));
            }
        }
        out.extend(&self.tail);
        out
    }
}

fn exif() -> impl Strategy<Value = Exif> {
    let entry = (
        prop_oneof![3 => Just(0x0112u16), 1 => any::<u16>()],
        prop_oneof![3 => Just(3u16), 1 => 0..14u16, 1 => any::<u16>()],
        prop_oneof![3 => Just(1u32), 1 => edge_u32()],
        prop_oneof![3 => 0..12u32, 1 => edge_u32()],
    );
    (
        any::<bool>(),
        prop_oneof![3 => Just(8u32), 1 => edge_u32()],
        proptest::option::of(any::<u16>()),
        vec(entry, 0..6),
        vec(any::<u8>(), 0..32),
    )
        .prop_map(|(big_endian, ifd_offset, claimed_entries, entries, tail)| Exif {
            big_endian,
            ifd_offset,
            claimed_entries,
            entries,
            tail,
        })
}

/// A JPEG with an APP1 Exif segment right after its SOI.
fn jpeg_with_exif(jpeg: &[u8], exif: &Exif) -> Vec<u8> {
    let mut payload = [b"Exif\0\0".as_slice(), &exif.tiff()].concat();
    payload.truncate(65_533);
    let mut segment = vec![0xFF, 0xE1];
    segment.extend(((payload.len() + 2) as u16).to_be_bytes());
    segment.extend(payload);
    [&jpeg[..2], &segment, &jpeg[2..]].concat()
}

/// A PNG with an eXIf chunk right after its IHDR.
fn png_with_exif(png: &[u8], exif: &Exif) -> Vec<u8> {
    let tiff = exif.tiff();
    let body = [b"eXIf".as_slice(), &tiff].concat();
    let mut chunk = (tiff.len() as u32).to_be_bytes().to_vec();
    chunk.extend(&body);
    chunk.extend(crc32(&body).to_be_bytes());
    [&png[..33], &chunk, &png[33..]].concat()
}

/// Small valid files of every format the server reads.
fn image_files() -> &'static [(&'static str, Vec<u8>)] {
    static FILES: OnceLock<Vec<(&'static str, Vec<u8>)>> = OnceLock::new();
    FILES.get_or_init(|| {
        let rgb = DynamicImage::ImageRgb8(picture(7, 5));
        let rgba = DynamicImage::ImageRgba8(DynamicImage::ImageRgb8(picture(4, 6)).to_rgba8());
        let gray16 = DynamicImage::ImageLuma16(DynamicImage::ImageRgb8(picture(5, 3)).to_luma16());
        let jpeg = encoded(&DynamicImage::ImageRgb8(picture(16, 8)), ImageFormat::Jpeg);
        vec![
            ("png", encoded(&rgb, ImageFormat::Png)),
            ("png rgba", encoded(&rgba, ImageFormat::Png)),
            ("png 16-bit", encoded(&gray16, ImageFormat::Png)),
            ("jpeg exif", jpeg_with_exif(&jpeg, &Exif::orientation(6))),
            ("jpeg", jpeg),
            ("webp", encoded(&rgba, ImageFormat::WebP)),
            ("gif", encoded(&rgba, ImageFormat::Gif)),
            ("bmp", encoded(&rgb, ImageFormat::Bmp)),
        ]
    })
}

/// A mutated image file: anywhere, or within its first 64 bytes (the headers).
fn mutated_image() -> impl Strategy<Value = (usize, bool, Vec<Mutation>)> {
    (0..image_files().len(), any::<bool>(), mutations(4))
}

fn apply_image_mutation((file, header_only, m): &(usize, bool, Vec<Mutation>)) -> Vec<u8> {
    let bytes = &image_files()[*file].1;
    if *header_only {
        mutate_within(bytes, 0..64.min(bytes.len()), m)
    } else {
        mutate(bytes, m)
    }
}

/// A decoded picture within the limits, or an error; at most the decoder's allocation
/// bound (pixels x 4 channels x 2 bytes) at once.
fn decodes_within(bytes: &[u8], limits: ImageLimits) -> Result<Option<DynamicImage>, TestCaseError> {
    let (result, largest) = largest_allocation(|| decode_image(bytes, limits));
    let bound = (limits.max_pixels as usize * 8).max(bytes.len() * 4) + MIB;
    prop_assert!(largest <= bound, "allocated {} bytes (bound {})", largest, bound);
    match result {
        Ok(image) => {
            reached("decoded");
            let (w, h) = (image.width(), image.height());
            prop_assert!(w > 0 && h > 0, "an empty {}x{} picture", w, h);
            prop_assert!(w.max(h) <= limits.max_width.max(limits.max_height), "{}x{}", w, h);
            prop_assert!(w as u64 * h as u64 <= limits.max_pixels);
            Ok(Some(image))
        }
        Err(ImageInputError::Io { .. }) => Err(TestCaseError::fail("decoding bytes cannot be an I/O error")),
        Err(_) => {
            reached("refused");
            Ok(None)
        }
    }
}

#[test]
fn mutated_image_files_decode_within_the_limits_or_fail_cleanly() {
    for (name, bytes) in image_files() {
        assert!(decode_image(bytes, TEST_LIMITS).is_ok(), "the valid {name} decodes");
    }
    check("images_mutated", 3072, &["decoded", "refused"], mutated_image(), |case| {
        decodes_within(&apply_image_mutation(&case), TEST_LIMITS).map(|_| ())
    });
    check("images_arbitrary", 1024, &["refused"], vec(any::<u8>(), 0..256), |bytes| {
        // Magic numbers first, so the bytes reach each decoder.
        for magic in [&b"\x89PNG\r\n\x1a\n"[..], b"\xFF\xD8\xFF", b"RIFF\0\0\0\0WEBPVP8L", b"GIF89a", b"BM"] {
            decodes_within(&[magic, &bytes[..]].concat(), TEST_LIMITS)?;
        }
        decodes_within(&bytes, TEST_LIMITS).map(|_| ())
    });
}

#[test]
fn exif_with_any_orientation_or_garbage_ifd_decodes_upright_or_fails_cleanly() {
    let files = image_files();
    let jpeg = &files.iter().find(|(n, _)| *n == "jpeg").unwrap().1;
    let png = &files.iter().find(|(n, _)| *n == "png").unwrap().1;
    check("exif", 2048, &["decoded", "turned"], (exif(), any::<bool>()), |(exif, in_png)| {
        if in_png {
            // A 7x5 picture stays 7x5 or turns to 5x7.
            if let Some(image) = decodes_within(&png_with_exif(png, &exif), TEST_LIMITS)? {
                prop_assert!(matches!(image.width(), 5 | 7) && image.width() + image.height() == 12);
                if image.width() == 5 {
                    reached("turned");
                }
            }
        } else if let Some(image) = decodes_within(&jpeg_with_exif(jpeg, &exif), TEST_LIMITS)? {
            prop_assert!(matches!(image.width(), 8 | 16) && image.width() + image.height() == 24);
            if image.width() == 8 {
                reached("turned");
            }
        }
        Ok(())
    });
}

/// Each format's file with a header claiming a huge picture.
fn huge_headers() -> Vec<(&'static str, Vec<u8>)> {
    let files = image_files();
    let file = |name: &str| files.iter().find(|(n, _)| *n == name).unwrap().1.clone();
    let mut png = file("png");
    png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    let mut jpeg = file("jpeg");
    let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    jpeg[sof + 5..sof + 9].copy_from_slice(&[0xFF, 0xF0, 0xFF, 0xF0]);
    let mut gif = file("gif");
    gif[6..10].copy_from_slice(&[0xFF; 4]);
    let descriptor = gif.iter().position(|&b| b == 0x2C).unwrap();
    gif[descriptor + 5..descriptor + 9].copy_from_slice(&[0xFF; 4]);
    let mut bmp = file("bmp");
    // Within the BMP decoder's own bound of 65535 a side, so that ours is what refuses.
    bmp[18..22].copy_from_slice(&60_000i32.to_le_bytes());
    bmp[22..26].copy_from_slice(&60_000i32.to_le_bytes());
    let mut webp = file("webp");
    // VP8L: 14 bits of width - 1, 14 of height - 1 after the 0x2f signature: 16383 x 16383
    // (image-webp reads the largest, 16384, as 0).
    let vp8l = webp.windows(4).position(|w| w == b"VP8L").unwrap();
    let bits = u32::from_le_bytes(webp[vp8l + 9..vp8l + 13].try_into().unwrap());
    let sides = 0x3FFE | 0x3FFE << 14;
    webp[vp8l + 9..vp8l + 13].copy_from_slice(&(bits & !0x0FFF_FFFF | sides).to_le_bytes());
    vec![("png", png), ("jpeg", jpeg), ("gif", gif), ("bmp", bmp), ("webp", webp)]
}

#[test]
fn a_header_claiming_a_huge_picture_is_refused_before_allocating() {
    let limits = borscht_server::limits::Limits::default();
    for (name, bytes) in huge_headers() {
        let (result, largest) = largest_allocation(|| decode_image(&bytes, limits.image_limits()));
        assert!(matches!(result, Err(ImageInputError::TooManyPixels { .. })), "{name}: {result:?}");
        assert!(largest < MIB, "{name}: allocated {largest} bytes");
        let (result, largest) = largest_allocation(|| borscht_server::job::decode_picture(&bytes, &limits, 384));
        assert_eq!(result.unwrap_err().code, borscht_protocol::ErrorCode::ImageTooLarge, "{name}");
        assert!(largest < MIB, "{name}: allocated {largest} bytes");
    }
}

/// What the server does with a picture: the model's square RGB, or a refusal coded as a
/// picture problem.
fn served_picture(
    result: Result<DynamicImage, borscht_server::job::Rejection>,
    side: u32,
) -> Result<(), TestCaseError> {
    use borscht_protocol::ErrorCode;
    match result {
        Ok(DynamicImage::ImageRgb8(image)) => {
            reached("served");
            prop_assert!(image.width() == image.height() && image.width() > 0 && image.width() <= side);
            Ok(())
        }
        Ok(other) => Err(TestCaseError::fail(format!("not RGB8: {:?}", other.color()))),
        Err(rejection) => {
            reached("refused");
            prop_assert!(
                matches!(rejection.code, ErrorCode::InvalidImage | ErrorCode::ImageTooLarge),
                "{:?}",
                rejection
            );
            Ok(())
        }
    }
}

/// Base64 as clients write it: plain, as a data URL, with stray whitespace or padding.
fn base64_picture() -> impl Strategy<Value = String> {
    use base64::Engine as _;
    let prefix = prop_oneof![
        Just(String::new()),
        Just("data:image/png;base64,".to_string()),
        Just("data:;base64,".to_string()),
        Just("data:image/jpeg;charset=x;base64,".to_string()),
        Just("DATA:image/png;base64,".to_string()),
        "data:[ -~]{0,20};base64,",
    ];
    let suffix = prop_oneof![Just(""), Just("="), Just("=="), Just(" \n"), Just("\0"), Just("%3D")];
    (prefix, sent_image(), proptest::option::of(mutations(3)), suffix).prop_map(
        |(prefix, image, text_mutation, suffix)| {
            let payload = base64::engine::general_purpose::STANDARD.encode(apply_image_mutation(&image));
            let payload = match text_mutation {
                Some(m) => String::from_utf8_lossy(&mutate(payload.as_bytes(), &m)).into_owned(),
                None => payload,
            };
            format!("{prefix}{payload}{suffix}")
        },
    )
}

#[test]
fn base64_and_data_url_pictures_decode_to_the_model_input_or_fail_cleanly() {
    use borscht_server::job::decode_base64_image;
    let limits = borscht_server::limits::Limits::default();
    check("base64_any", 1024, &["refused"], any::<String>(), |text| {
        served_picture(decode_base64_image(&text, &limits, 384), 384)
    });
    check(
        "base64_pictures",
        1024,
        &["served", "refused"],
        (base64_picture(), prop_oneof![Just(384u32), Just(512), 1..64u32]),
        |(text, side)| served_picture(decode_base64_image(&text, &limits, side), side),
    );
}

#[test]
fn uploaded_pictures_decode_within_the_server_limits_or_fail_cleanly() {
    use borscht_server::job::decode_picture;
    let limits = borscht_server::limits::Limits::default();
    let bound = limits.max_pixels as usize * 8 + MIB;
    check("picture_uploads", 512, &["served", "refused"], mutated_image(), |case| {
        let bytes = apply_image_mutation(&case);
        let (result, largest) = largest_allocation(|| decode_picture(&bytes, &limits, 384));
        prop_assert!(largest <= bound, "allocated {} bytes", largest);
        served_picture(result, 384)
    });
}

// ---------------------------------------------------------------------------------------
// The HTTP API: multipart forms, raw bodies and JSON, through the whole router.

/// An image file as sent: intact, or mutated ([`mutated_image`]).
fn sent_image() -> impl Strategy<Value = (usize, bool, Vec<Mutation>)> {
    (0..image_files().len(), any::<bool>(), prop_oneof![Just(Vec::new()), mutations(4)])
}

/// A form part: name, file name, content type, and a body that is a picture or text.
#[derive(Debug, Clone)]
struct Part {
    name: String,
    filename: Option<String>,
    content_type: Option<String>,
    body: Result<(usize, bool, Vec<Mutation>), String>,
}

#[derive(Debug, Clone)]
enum Payload {
    /// A form: its boundary, the Content-Type header (`{b}` standing for the boundary),
    /// its parts, and changes to its bytes once written.
    Form {
        boundary: String,
        content_type: String,
        parts: Vec<Part>,
        damage: Vec<Mutation>,
    },
    /// The picture as the body.
    Raw {
        content_type: String,
        image: (usize, bool, Vec<Mutation>),
    },
    Json(String),
}

#[derive(Debug, Clone)]
struct ApiCall {
    endpoint: &'static str,
    query: String,
    payload: Payload,
}

fn part() -> impl Strategy<Value = Part> {
    let field = prop_oneof![
        (Just("n".into()), prop_oneof![Just("4".into()), Just("0".into()), Just("-1".into()), "[0-9]{1,12}"]),
        (Just("portion_g".into()), prop_oneof![Just("250".into()), Just("NaN".into()), Just("1e40".into())]),
        (Just("template".into()), prop_oneof![Just("блюдо:".into()), Just(" ".into()), any::<String>()]),
        (Just("classes".into()), prop_oneof![Just("борщ,шаурма".into()), Just(",,".into()), any::<String>()]),
        ("[ -~]{0,12}", any::<String>()),
    ];
    let text_part = field.prop_map(|(name, text): (String, String)| Part {
        name,
        filename: None,
        content_type: None,
        body: Err(text),
    });
    let image_part = (
        proptest::option::of("[ -~]{0,16}"),
        proptest::option::of(prop_oneof![Just("image/png".to_string()), "[ -~]{0,24}"]),
        sent_image(),
    )
        .prop_map(|(filename, content_type, image)| Part {
            name: "image".into(),
            filename,
            content_type,
            body: Ok(image),
        });
    prop_oneof![2 => image_part, 1 => text_part]
}

fn api_call() -> impl Strategy<Value = ApiCall> {
    let content_type = prop_oneof![
        6 => Just("multipart/form-data; boundary={b}".to_string()),
        1 => Just("Multipart/Form-Data; boundary=\"{b}\"".to_string()),
        1 => Just("multipart/form-data".to_string()),
        1 => Just("multipart/form-data; boundary=".to_string()),
        1 => Just("multipart/form-data; boundary={b}; boundary=x".to_string()),
        1 => "[ -~]{0,40}",
    ];
    let form = (
        "[A-Za-z0-9'()+_,./:=?-]{1,70}",
        content_type,
        vec(part(), 0..4),
        prop_oneof![3 => Just(Vec::new()), 1 => mutations(4)],
    )
        .prop_map(|(boundary, content_type, parts, damage)| Payload::Form { boundary, content_type, parts, damage })
        .boxed();
    let raw = (prop_oneof![Just("image/png".to_string()), Just(String::new()), "[ -~]{0,40}"], sent_image())
        .prop_map(|(content_type, image)| Payload::Raw { content_type, image })
        .boxed();
    let json = prop_oneof![
        Just(r#"{"text":"борщ","n":1}"#.to_string()),
        Just(r#"{"text":"борщ","n":1,"seed":7}"#.to_string()),
        jsonish(),
        mutated_frame(),
    ]
    .prop_map(Payload::Json);
    let query = prop_oneof![
        Just(String::new()),
        Just("?n=2&portion_g=100".to_string()),
        Just("?classes=борщ,шаурма&method=zero_shot".to_string()),
        Just("?n=x".to_string()),
        "\\?[!-~&&[^#]]{0,20}",
    ];
    prop_oneof![
        (Just("/api/v1/recognize"), query.clone(), prop_oneof![3 => form.clone(), 1 => raw.clone()]),
        (Just("/api/v1/classify"), query, prop_oneof![3 => form, 1 => raw]),
        (Just("/api/v1/generate"), Just(String::new()), json),
    ]
    .prop_map(|(endpoint, query, payload)| ApiCall { endpoint, query, payload })
}

impl ApiCall {
    fn content_type(&self) -> String {
        match &self.payload {
            Payload::Form { boundary, content_type, .. } => content_type.replace("{b}", boundary),
            Payload::Raw { content_type, .. } => content_type.clone(),
            Payload::Json(_) => "application/json".into(),
        }
    }

    fn body(&self) -> Vec<u8> {
        let (boundary, parts, damage) = match &self.payload {
            Payload::Form { boundary, parts, damage, .. } => (boundary, parts, damage),
            Payload::Raw { image, .. } => return apply_image_mutation(image),
            Payload::Json(text) => return text.clone().into_bytes(),
        };
        let mut body = Vec::new();
        for part in parts {
            write!(body, "--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"", part.name).unwrap();
            if let Some(filename) = &part.filename {
                write!(body, "; filename=\"{filename}\"").unwrap();
            }
            body.extend(b"\r\n");
            if let Some(content_type) = &part.content_type {
                write!(body, "Content-Type: {content_type}\r\n").unwrap();
            }
            body.extend(b"\r\n");
            match &part.body {
                Ok(image) => body.extend(apply_image_mutation(image)),
                Err(text) => body.extend(text.as_bytes()),
            }
            body.extend(b"\r\n");
        }
        write!(body, "--{boundary}--\r\n").unwrap();
        if damage.is_empty() {
            body
        } else {
            mutate(&body, damage)
        }
    }
}

/// The router with a model that failed to load: every request the API accepts ends in
/// 503, so anything else is its parsing's verdict.
fn refusing_server() -> (tokio::runtime::Runtime, borscht_server::Router) {
    use borscht_server::{Server, ServerConfig};
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let _context = runtime.enter();
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), std::env::temp_dir().join("borscht-no-web-app"));
    // Each request comes from its own address, so no per-client cap meets the fuzzing.
    config.client_ip_header = Some("x-forwarded-for".into());
    let server = Server::start(&config, Box::new(|| anyhow::bail!("no model: requests stop before the queue")));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while server.state.unavailable().is_none() {
        assert!(std::time::Instant::now() < deadline, "the failing model load is never reported");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    (runtime, server.router)
}

#[test]
fn api_requests_of_any_shape_get_a_json_error_and_never_a_500() {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let (runtime, router) = refusing_server();
    let counter = std::sync::atomic::AtomicU32::new(0);
    // "accepted": a request the API took whole, refused only for want of a model.
    check("api_calls", 512, &["accepted", "400", "415", "422"], api_call(), |call| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let request = axum::http::Request::post(format!("{}{}", call.endpoint, call.query))
            .header("content-type", call.content_type())
            .header("x-forwarded-for", format!("10.{}.{}.{}", n >> 16 & 255, n >> 8 & 255, n & 255))
            .body(Body::from(call.body()));
        let Ok(request) = request else { return Ok(()) }; // a header value http refuses to send
        let (status, body) = runtime.block_on(async {
            let response = tokio::time::timeout(std::time::Duration::from_secs(30), router.clone().oneshot(request))
                .await
                .expect("the API answers in time")
                .unwrap();
            (response.status().as_u16(), response.into_body().collect().await.unwrap().to_bytes())
        });
        reached(match status {
            503 => "accepted",
            400 => "400",
            413 => "413",
            415 => "415",
            422 => "422",
            _ => "other",
        });
        prop_assert!(matches!(status, 400 | 408 | 413 | 415 | 422 | 429 | 503), "status {} for {:?}", status, call);
        let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(json["error"]["code"].is_string() && json["error"]["message"].is_string(), "{}", json);
        Ok(())
    });
}

/// Examples users send to teach the model (`POST /api/v1/examples`): any body is stored
/// whole (a photo that decodes, a well-formed caption) or refused with a JSON error, and
/// the store holds exactly the examples answered 201.
#[test]
fn example_submissions_are_stored_whole_or_refused_with_a_json_error() {
    use axum::body::Body;
    use borscht_server::dataset::Dataset;
    use borscht_server::{Server, ServerConfig};
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let dir = tempfile::tempdir().unwrap();
    let dataset = std::sync::Arc::new(Dataset::open(dir.path(), 1_000_000, 1 << 40).unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let router = {
        let _context = runtime.enter();
        let mut config =
            ServerConfig::new("127.0.0.1:0".parse().unwrap(), std::env::temp_dir().join("borscht-no-web-app"));
        config.client_ip_header = Some("x-forwarded-for".into());
        let teaching = borscht_server::finetune::Teaching::new(Some(dataset.clone()), None, None, None);
        let loader = borscht_server::worker::DeviceLoader {
            device: "cpu".into(),
            load: Box::new(|| anyhow::bail!("no model: examples need none")),
            load_version: None,
        };
        Server::start_teaching(&config, vec![loader], std::sync::Arc::new(teaching)).router
    };
    let number = || prop_oneof![30 => 0.0..30.0f64, 1 => -5.0..0.0f64, 1 => any::<f64>(), 1 => Just(1e39)];
    let dish = prop_oneof![4 => "[а-я ]{1,20}", 1 => "[a-zа-я ;:\n\t]{0,70}"];
    let consent = prop_oneof![4 => "[ -~]{1,40}", 1 => Just(String::new()), 1 => "[a-z]{495,510}"];
    let intact = (0..image_files().len()).prop_map(|k| {
        use base64::Engine as _;
        format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(&image_files()[k].1))
    });
    let case = (
        prop_oneof![3 => intact, 1 => base64_picture()],
        dish,
        (number(), number(), number(), number()),
        consent,
        0..8u8,
        prop_oneof![3 => Just(None), 1 => mutations(3).prop_map(Some)],
    );
    let (counter, stored) = (std::sync::atomic::AtomicU32::new(0), std::sync::atomic::AtomicUsize::new(0));
    check(
        "example_submissions",
        256,
        &["stored", "415", "422"],
        case,
        |(photo, dish, values, consent, shape, damage)| {
            let mut body = serde_json::json!({
                "photo": photo, "dish": dish, "protein_g": values.0, "fat_g": values.1, "carbs_g": values.2,
                "kcal": values.3, "consent": consent, "source": "correction",
            });
            match shape {
                1 => drop(body.as_object_mut().unwrap().remove("dish")),
                2 => drop(body.as_object_mut().unwrap().insert("extra".into(), 1.into())),
                3 => body["kcal"] = "много".into(),
                4 => body["source"] = "elsewhere".into(),
                _ => {}
            }
            let mut bytes = body.to_string().into_bytes();
            if let Some(damage) = damage {
                bytes = mutate(&bytes, &damage);
            }
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let request = axum::http::Request::post("/api/v1/examples")
                .header("content-type", "application/json")
                .header("x-forwarded-for", format!("10.{}.{}.{}", n >> 16 & 255, n >> 8 & 255, n & 255))
                .body(Body::from(bytes))
                .unwrap();
            let (status, answer) = runtime.block_on(async {
                let response = router.clone().oneshot(request).await.unwrap();
                (response.status().as_u16(), response.into_body().collect().await.unwrap().to_bytes())
            });
            let json: serde_json::Value =
                serde_json::from_slice(&answer).map_err(|e| TestCaseError::fail(e.to_string()))?;
            if status == 201 {
                reached("stored");
                stored.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let example = dataset.get(json["id"].as_str().unwrap_or_default()).unwrap();
                let example = example.ok_or_else(|| TestCaseError::fail(format!("201 but not stored: {json}")))?;
                let limits = borscht_server::limits::Limits::default();
                prop_assert!(
                    borscht_server::job::decode_picture(&dataset.photo(&example).unwrap(), &limits, 64).is_ok()
                );
                prop_assert!(
                    example.caption.starts_with("блюдо: ") && example.caption.matches(';').count() == 5,
                    "{}",
                    example.caption
                );
                return Ok(());
            }
            reached(match status {
                415 => "415",
                422 => "422",
                _ => "other",
            });
            prop_assert!(matches!(status, 400 | 413 | 415 | 422), "status {} for {}", status, json);
            prop_assert!(json["error"]["code"].is_string() && json["error"]["message"].is_string(), "{}", json);
            Ok(())
        },
    );
    assert_eq!(dataset.list().unwrap().len(), stored.load(std::sync::atomic::Ordering::Relaxed));
}

// ---------------------------------------------------------------------------------------
// The BPE model file and the tokenizer.

use borscht_model::tokenizer::{Bpe, TextTokenizer};

fn is_space(c: char) -> bool {
    matches!(c as u32, 9..=13 | 32) || c == '\u{2581}'
}

/// Words joined by single spaces: what decoding an encoding gives back.
fn normalised(text: &str) -> String {
    text.split(is_space).filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ")
}

/// A random consistent model: the word marker and `alphabet` as characters, and rules
/// merging pairs of ids defined before them.
#[derive(Debug, Clone)]
struct ModelSpec {
    alphabet: Vec<char>,
    rules: Vec<(Index, Index)>,
    /// Specials as the file writes them (-1 for none); ids 0-3 are left for them.
    specials: [i64; 4],
    /// The word marker's id; the characters' and the rules' follow (the format does not
    /// make them dense).
    first_id: u32,
}

impl ModelSpec {
    fn last_id(&self) -> u32 {
        self.first_id + (self.alphabet.len() + self.rules.len()) as u32
    }

    fn text(&self) -> String {
        let mut chars = vec![('\u{2581}', self.first_id)];
        for (i, &c) in self.alphabet.iter().enumerate() {
            chars.push((c, self.first_id + 1 + i as u32));
        }
        let mut ids: Vec<u32> = chars.iter().map(|&(_, id)| id).collect();
        let mut rules = Vec::new();
        for (x, y) in &self.rules {
            let (x, y) = (ids[x.index(ids.len())], ids[y.index(ids.len())]);
            let z = self.first_id + 1 + self.alphabet.len() as u32 + rules.len() as u32;
            rules.push((x, y, z));
            ids.push(z);
        }
        let mut text = format!("{} {}\n", chars.len(), rules.len());
        for (c, id) in chars {
            text.push_str(&format!("{} {id}\n", c as u32));
        }
        for (x, y, z) in rules {
            text.push_str(&format!("{x} {y} {z}\n"));
        }
        let [a, b, c, d] = self.specials;
        text.push_str(&format!("{a} {b} {c} {d}\n"));
        text
    }
}

fn model_spec() -> impl Strategy<Value = ModelSpec> {
    let letter =
        prop_oneof![3 => proptest::char::range('a', 'z'), 2 => proptest::char::range('а', 'я'), 1 => any::<char>()];
    let special = prop_oneof![3 => Just(-1i64), 1 => 0..4i64];
    let first_id = prop_oneof![
        4 => Just(4u32),
        1 => 4..100_000u32,
        1 => 999_999_950..1_000_000_050u32,
        1 => u32::MAX - 100..u32::MAX - 50,
    ];
    (
        vec(letter, 1..10),
        vec((any::<Index>(), any::<Index>()), 0..40),
        [special.clone(), special.clone(), special.clone(), special],
        first_id,
    )
        .prop_map(|(mut alphabet, rules, specials, first_id)| {
            alphabet.retain(|&c| !is_space(c));
            alphabet.sort_unstable();
            alphabet.dedup();
            if alphabet.is_empty() {
                alphabet.push('a');
            }
            // Distinct specials, as the file format needs them.
            let mut seen = Vec::new();
            let specials = specials.map(|s| {
                if s >= 0 && !seen.contains(&s) {
                    seen.push(s);
                    s
                } else {
                    -1
                }
            });
            ModelSpec { alphabet, rules, specials, first_id }
        })
}

/// Text of the model's characters and whitespace (a marker among it).
fn text_of(alphabet: &[char], picks: &[(Index, u8)]) -> String {
    picks
        .iter()
        .map(|(i, kind)| match kind % 8 {
            0 => ' ',
            1 => '\n',
            2 if kind % 64 == 2 => '\u{2581}',
            _ => alphabet[i.index(alphabet.len())],
        })
        .collect()
}

fn fixture_models() -> &'static [Bpe] {
    static MODELS: OnceLock<Vec<Bpe>> = OnceLock::new();
    MODELS.get_or_init(|| {
        ["tokenizer/reference.model", "tokenizer/ours.model"].iter().map(|p| Bpe::load(fixture(p)).unwrap()).collect()
    })
}

/// The characters a model knows (besides whitespace), found by asking it.
fn known_chars(bpe: &Bpe, candidates: impl Iterator<Item = char>) -> Vec<char> {
    candidates.filter(|&c| !is_space(c) && bpe.unknown_chars(&c.to_string()).is_empty()).collect()
}

/// Encoding any text and decoding any ids never panics; decoding what text within the
/// model's characters encodes to gives it back, whitespace normalised.
fn tokenizes_back(bpe: &Bpe, known: &str, arbitrary: &str, ids: &[u32]) -> Result<(), TestCaseError> {
    let decoded = bpe.decode(&bpe.encode(known), &[]).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(decoded, normalised(known));
    reached(if known.split(is_space).any(|w| !w.is_empty()) { "round trip" } else { "blank" });
    let tokenizer = TextTokenizer::new(bpe.clone());
    let _ = bpe.decode(&bpe.encode(arbitrary), &[]);
    let _ = tokenizer.decode_text(&tokenizer.encode_text(arbitrary, 16));
    let _ = bpe.decode(ids, &[1]);
    let _ = bpe.unknown_chars(arbitrary);
    Ok(())
}

#[test]
fn tokenizer_decodes_its_encoding_back_and_never_panics() {
    let texts =
        (vec((any::<Index>(), any::<u8>()), 0..40), any::<String>(), vec(prop_oneof![0..64u32, any::<u32>()], 0..16));
    check(
        "bpe_random_models",
        1024,
        &["round trip", "refused"],
        (model_spec(), texts.clone()),
        |(spec, (picks, arbitrary, ids))| {
            match Bpe::parse(&spec.text()) {
                Ok(bpe) => tokenizes_back(&bpe, &text_of(&spec.alphabet, &picks), &arbitrary, &ids),
                // Ids from 10^9 up are refused: the encoder marks unknown characters with them.
                Err((_, message)) => {
                    reached("refused");
                    prop_assert!(spec.last_id() >= 1_000_000_000, "{} for\n{}", message, spec.text());
                    Ok(())
                }
            }
        },
    );
    let alphabets: Vec<Vec<char>> = fixture_models()
        .iter()
        .map(|bpe| known_chars(bpe, (' '..='~').chain('а'..='я').chain(['ё', '–', '—', '«', '»', '№'])))
        .collect();
    check(
        "bpe_fixture_models",
        512,
        &["round trip"],
        (0..fixture_models().len(), texts),
        |(model, (picks, arbitrary, ids))| {
            tokenizes_back(&fixture_models()[model], &text_of(&alphabets[model], &picks), &arbitrary, &ids)
        },
    );
}

/// Edits of a model file: a number replaced with an edge case, lines deleted,
/// duplicated or swapped, bytes changed.
#[derive(Debug, Clone)]
enum ModelEdit {
    Number(Index, &'static str),
    DeleteLine(Index),
    DuplicateLine(Index),
    SwapLines(Index, Index),
    Bytes(Vec<Mutation>),
}

fn model_edit() -> impl Strategy<Value = ModelEdit> {
    let number = prop_oneof![
        Just("-1"),
        Just("-2"),
        Just("0"),
        Just("4"),
        Just("9601"),
        Just("999999999"),
        Just("1000000000"),
        Just("4294967295"),
        Just("4294967296"),
        Just("99999999999999999999"),
        Just("1e3"),
        Just("x"),
        Just(""),
    ];
    prop_oneof![
        4 => (any::<Index>(), number).prop_map(|(at, n)| ModelEdit::Number(at, n)),
        1 => any::<Index>().prop_map(ModelEdit::DeleteLine),
        1 => any::<Index>().prop_map(ModelEdit::DuplicateLine),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| ModelEdit::SwapLines(a, b)),
        1 => mutations(3).prop_map(ModelEdit::Bytes),
    ]
}

fn edit_model(text: &str, edits: &[ModelEdit]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for edit in edits {
        if lines.is_empty() {
            break;
        }
        let n = lines.len();
        match edit {
            ModelEdit::Number(at, value) => {
                let mut numbers: Vec<(usize, usize)> = Vec::new();
                for (l, line) in lines.iter().enumerate() {
                    numbers.extend((0..line.split(' ').count()).map(|w| (l, w)));
                }
                let (l, w) = numbers[at.index(numbers.len())];
                let mut words: Vec<&str> = lines[l].split(' ').collect();
                words[w] = value;
                lines[l] = words.join(" ");
            }
            ModelEdit::DeleteLine(at) => {
                lines.remove(at.index(n));
            }
            ModelEdit::DuplicateLine(at) => {
                let line = lines[at.index(n)].clone();
                lines.insert(at.index(n), line);
            }
            ModelEdit::SwapLines(a, b) => lines.swap(a.index(n), b.index(n)),
            ModelEdit::Bytes(m) => {
                let joined = lines.join("\n");
                lines = String::from_utf8_lossy(&mutate(joined.as_bytes(), m)).lines().map(str::to_string).collect();
            }
        }
    }
    lines.join("\n") + "\n"
}

/// Parses a model file within memory proportional to it, and what parses encodes and
/// decodes without panicking.
fn parses_or_names_the_line(text: &str, sample: &str) -> Result<(), TestCaseError> {
    let (parsed, largest) = largest_allocation(|| Bpe::parse(text));
    // The pieces may spell out 2^24 characters (64 MiB) whatever the file's size.
    let bound = 64 * text.len() + 65 * MIB;
    prop_assert!(largest <= bound, "allocated {} bytes for {} bytes of model", largest, text.len());
    match parsed {
        Ok(bpe) => {
            reached("parsed");
            let _ = bpe.decode(&bpe.encode(sample), &[]);
            // Whatever the file says, the characters it knows come back.
            let unknown = bpe.unknown_chars(sample);
            let known: String = sample.chars().map(|c| if unknown.contains(&c) { ' ' } else { c }).collect();
            let decoded = bpe.decode(&bpe.encode(&known), &[]).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(decoded, normalised(&known));
            prop_assert_eq!(
                Bpe::parse(&bpe.to_model_string()).map(|b| b.to_model_string()).ok(),
                Some(bpe.to_model_string())
            );
        }
        Err((line, message)) => {
            reached("refused");
            prop_assert!(
                line >= 1 && line <= text.lines().count().max(1),
                "line {} of {}: {}",
                line,
                text.lines().count(),
                message
            );
        }
    }
    Ok(())
}

#[test]
fn bpe_model_files_parse_or_name_the_bad_line() {
    let reference = std::fs::read_to_string(fixture("tokenizer/reference.model")).unwrap();
    check("bpe_mutated_models", 1024, &["parsed", "refused"], vec(model_edit(), 1..5), |edits| {
        parses_or_names_the_line(&edit_model(&reference, &edits), "борщ с капустой, 250 г")
    });
    check(
        "bpe_mutated_random_models",
        1024,
        &["parsed", "refused"],
        (model_spec(), vec(model_edit(), 1..4)),
        |(spec, edits)| parses_or_names_the_line(&edit_model(&spec.text(), &edits), "abc абв"),
    );
    check("bpe_arbitrary_text", 1024, &["refused"], prop_oneof![any::<String>(), "([-0-9 ]{0,14}\n){0,12}"], |text| {
        parses_or_names_the_line(&text, "abc")
    });
}

// ---------------------------------------------------------------------------------------
// Checkpoints: torch zip pickles (`.bin`, Lightning `.ckpt`) and safetensors.

use borscht_model::{checkpoint, weights};

/// The entries of a zip file, in order.
fn zip_entries(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
    (0..archive.len())
        .map(|i| {
            let mut entry = archive.by_index(i).unwrap();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            (entry.name().unwrap().into_owned(), data)
        })
        .collect()
}

/// A zip of stored entries, as `torch.save` writes it.
fn torch_zip(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in entries {
        writer.start_file(name, options).unwrap();
        writer.write_all(data).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

/// Pickle opcodes for the values a state dict holds.
fn pickle_int(out: &mut Vec<u8>, value: i64) {
    match i32::try_from(value) {
        Ok(v) => {
            out.push(b'J');
            out.extend(v.to_le_bytes());
        }
        Err(_) => {
            out.extend([0x8a, 8]);
            out.extend(value.to_le_bytes());
        }
    }
}

fn pickle_str(out: &mut Vec<u8>, text: &str) {
    out.push(b'X');
    out.extend((text.len() as u32).to_le_bytes());
    out.extend(text.as_bytes());
}

/// One tensor of a hand-written state dict.
struct Stored<'a> {
    name: &'a str,
    key: &'a str,
    storage: &'a str,
    offset: i64,
    size: &'a [i64],
    stride: &'a [i64],
}

/// A `torch.save(state_dict)` pickle: an OrderedDict of `_rebuild_tensor_v2` calls.
fn state_dict_pickle(tensors: &[Stored]) -> Vec<u8> {
    let mut p = b"\x80\x02ccollections\nOrderedDict\n)R(".to_vec();
    for t in tensors {
        pickle_str(&mut p, t.name);
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.push(b'(');
        pickle_str(&mut p, "storage");
        p.extend(format!("ctorch\n{}\n", t.storage).as_bytes());
        pickle_str(&mut p, t.key);
        pickle_str(&mut p, "cpu");
        pickle_int(&mut p, t.size.iter().fold(1i64, |n, &d| n.saturating_mul(d)).max(0));
        p.extend(b"tQ");
        pickle_int(&mut p, t.offset);
        for dims in [t.size, t.stride] {
            p.push(b'(');
            for &d in dims {
                pickle_int(&mut p, d);
            }
            p.push(b't');
        }
        p.extend(b"\x89ccollections\nOrderedDict\n)RtR");
    }
    p.extend(b"u.");
    p
}

/// A torch zip holding `pickle` and two storages: "0" (6 floats) and "1" (3 floats).
fn torch_file(pickle: &[u8]) -> Vec<u8> {
    let floats = |values: &[f32]| values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    torch_zip(&[
        ("archive/data.pkl".into(), pickle.to_vec()),
        ("archive/data/0".into(), floats(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])),
        ("archive/data/1".into(), floats(&[0.5, 0.25, 0.125])),
        ("archive/version".into(), b"3\n".to_vec()),
    ])
}

fn small_state_dict() -> Vec<u8> {
    state_dict_pickle(&[
        Stored { name: "w", key: "0", storage: "FloatStorage", offset: 0, size: &[2, 3], stride: &[3, 1] },
        Stored { name: "b", key: "1", storage: "FloatStorage", offset: 0, size: &[3], stride: &[1] },
    ])
}

/// Every reader of a checkpoint file: an error or tensors, within `bound` bytes at once.
fn checkpoint_readers_survive(path: &Path, state_key: Option<&str>, bound: usize) -> Result<(), TestCaseError> {
    let (result, largest) = largest_allocation(|| checkpoint::read_all(path, state_key));
    prop_assert!(largest <= bound, "read_all allocated {} bytes", largest);
    reached(if result.is_ok() { "read" } else { "refused" });
    if let Ok(tensors) = result {
        for (_, t) in tensors {
            let _ = t.flatten_all().and_then(|t| t.to_dtype(candle_core::DType::F32)).and_then(|t| t.sum_all());
        }
    }
    let (_, largest) = largest_allocation(|| {
        checkpoint::var_builder(path, state_key, candle_core::DType::F32, &candle_core::Device::Cpu).map(|_| ())
    });
    prop_assert!(largest <= bound, "var_builder allocated {} bytes", largest);
    if state_key.is_none() {
        let (_, largest) = largest_allocation(|| weights::stored_tensor_shapes(path));
        prop_assert!(largest <= bound, "stored_tensor_shapes allocated {} bytes", largest);
    }
    Ok(())
}

#[test]
fn hand_written_state_dicts_read_as_torch_writes_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pytorch_model.bin");
    std::fs::write(&path, torch_file(&small_state_dict())).unwrap();
    let mut tensors = checkpoint::read_all(&path, None).unwrap();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(tensors[0].1.to_vec1::<f32>().unwrap(), [0.5, 0.25, 0.125]);
    assert_eq!(tensors[1].1.to_vec2::<f32>().unwrap(), [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]);
    let shapes = weights::stored_tensor_shapes(&path).unwrap();
    assert_eq!(shapes["w"], [2, 3]);
}

/// The checks refuse nothing torch writes: every committed checkpoint reads whole.
#[test]
fn the_committed_checkpoints_pass_the_checks_and_read_whole() {
    let files = [
        ("transformer/pytorch_model.bin", None),
        ("geometry_350m/pytorch_model.bin", None),
        ("pipelines/pytorch_model.bin", None),
        ("vqgan/vqgan.ckpt", Some("state_dict")),
        ("pipelines/vqgan/model.ckpt", Some("state_dict")),
    ];
    for (file, key) in files {
        let path = fixture(file);
        let tensors = checkpoint::read_all(&path, key).unwrap_or_else(|e| panic!("{file}: {e:#}"));
        assert!(tensors.len() > 10, "{file}");
        checkpoint::var_builder(&path, key, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        if key.is_none() {
            assert_eq!(weights::stored_tensor_shapes(&path).unwrap().len(), tensors.len(), "{file}");
        }
    }
}

/// Pickles that candle, trusting them, would turn into a panic, a huge allocation, an
/// exponential clone or a stack overflow.
fn hostile_pickles() -> Vec<(&'static str, Vec<u8>)> {
    let tensor = |size: &[i64], stride: &[i64], offset: i64| {
        state_dict_pickle(&[Stored { name: "w", key: "0", storage: "FloatStorage", offset, size, stride }])
    };
    let names: Vec<String> = (0..100).map(|i| format!("w{i}")).collect();
    let views = state_dict_pickle(
        &names
            .iter()
            .map(|name| Stored { name, key: "0", storage: "FloatStorage", offset: 0, size: &[2, 3], stride: &[3, 1] })
            .collect::<Vec<_>>(),
    );
    let mut long_string = b"\x80\x02X".to_vec();
    long_string.extend(0xFFFF_FFF0u32.to_le_bytes());
    long_string.extend(b"abc.");
    let mut memo_bomb = b"\x80\x02Nq\x00".to_vec();
    for _ in 0..64 {
        memo_bomb.extend(b"h\x00h\x00\x86q\x00");
    }
    memo_bomb.push(b'.');
    let mut deep = b"\x80\x02N".to_vec();
    deep.extend(std::iter::repeat_n(0x85u8, 200_000));
    deep.push(b'.');
    let mut short_args = b"\x80\x02ccollections\nOrderedDict\n)R(".to_vec();
    pickle_str(&mut short_args, "w");
    short_args.extend(b"ctorch._utils\n_rebuild_tensor_v2\nK\x01K\x02\x86Ru.");
    let mut short_storage = b"\x80\x02ccollections\nOrderedDict\n)R(".to_vec();
    pickle_str(&mut short_storage, "w");
    short_storage.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(K\x01\x85QK\x00(K\x01t(K\x01t\x89NtRu.");
    let mut short_parameter = b"\x80\x02ccollections\nOrderedDict\n)R(".to_vec();
    pickle_str(&mut short_parameter, "w");
    short_parameter.extend(b"ctorch._utils\n_rebuild_parameter\n)Ru.");
    vec![
        ("a 10^12-element tensor", tensor(&[1_000_000, 1_000_000], &[1_000_000, 1], 0)),
        ("sides whose product overflows", tensor(&[i32::MAX as i64; 3], &[1, 1, 1], 0)),
        (
            "a zero side beside overflowing ones",
            tensor(&[0, i32::MAX as i64, i32::MAX as i64, i32::MAX as i64], &[1, 1, 1, 1], 0),
        ),
        ("a negative offset", tensor(&[2, 3], &[3, 1], -1)),
        ("an offset past the data", tensor(&[2, 3], &[3, 1], 1 << 40)),
        ("a string of 4 GB", long_string),
        ("a hundred views of one storage", views),
        ("memo references doubling 64 times", memo_bomb),
        ("200000 nested tuples", deep),
        ("two arguments to _rebuild_tensor_v2", short_args),
        ("a storage tuple of one", short_storage),
        ("_rebuild_parameter of nothing", short_parameter),
    ]
}

#[test]
fn hostile_torch_checkpoints_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    for (what, pickle) in hostile_pickles() {
        for (name, key) in [("pytorch_model.bin", None), ("vqgan.ckpt", Some("state_dict"))] {
            let path = dir.path().join(name);
            std::fs::write(&path, torch_file(&pickle)).unwrap();
            let (result, largest) = largest_allocation(|| checkpoint::read_all(&path, key));
            assert!(result.is_err(), "{what}: read");
            assert!(largest < 16 * MIB, "{what}: read_all allocated {largest} bytes");
            let (result, largest) = largest_allocation(|| {
                checkpoint::var_builder(&path, key, candle_core::DType::F32, &candle_core::Device::Cpu).map(|_| ())
            });
            assert!(result.is_err(), "{what}: opened");
            assert!(largest < 16 * MIB, "{what}: var_builder allocated {largest} bytes");
            if key.is_none() {
                let (result, largest) = largest_allocation(|| weights::stored_tensor_shapes(&path));
                assert!(result.is_err(), "{what}: shapes read");
                assert!(largest < 16 * MIB, "{what}: stored_tensor_shapes allocated {largest} bytes");
            }
        }
    }
}

/// A torch file to mutate: its bytes, where the pickle's entry lies, where the central
/// directory starts, its entries, and the state key its readers use.
struct TorchBase {
    name: &'static str,
    bytes: Vec<u8>,
    pickle: std::ops::Range<usize>,
    directory: usize,
    entries: Vec<(String, Vec<u8>)>,
    state_key: Option<&'static str>,
}

fn torch_bases() -> &'static [TorchBase] {
    static BASES: OnceLock<Vec<TorchBase>> = OnceLock::new();
    BASES.get_or_init(|| {
        [
            ("pytorch_model.bin", std::fs::read(fixture("transformer/pytorch_model.bin")).unwrap(), None),
            ("vqgan.ckpt", std::fs::read(fixture("vqgan/vqgan.ckpt")).unwrap(), Some("state_dict")),
            ("small.bin", torch_file(&small_state_dict()), None),
        ]
        .into_iter()
        .map(|(name, bytes, state_key)| {
            let entries = zip_entries(&bytes);
            let pickle = &entries.iter().find(|(n, _)| n.ends_with("data.pkl")).unwrap().1;
            let start = bytes.windows(pickle.len()).position(|w| w == &pickle[..]).unwrap();
            let eocd = bytes.windows(4).rposition(|w| w == b"PK\x05\x06").unwrap();
            let directory = u32::from_le_bytes(bytes[eocd + 16..eocd + 20].try_into().unwrap()) as usize;
            TorchBase { name, pickle: start..start + pickle.len(), directory, entries, state_key, bytes }
        })
        .collect()
    })
}

/// Where a torch file is damaged: anywhere, in its pickle's bytes (the zip's checksum
/// then fails), in its central directory, or in the pickle rewritten into a sound zip.
#[derive(Debug, Clone, Copy)]
enum Target {
    File,
    PickleBytes,
    Directory,
    Pickle,
}

fn torch_damage(base: &TorchBase, target: Target, m: &[Mutation]) -> Vec<u8> {
    match target {
        Target::File => mutate(&base.bytes, m),
        Target::PickleBytes => mutate_within(&base.bytes, base.pickle.clone(), m),
        Target::Directory => mutate_within(&base.bytes, base.directory..base.bytes.len(), m),
        Target::Pickle => {
            let entries: Vec<(String, Vec<u8>)> = base
                .entries
                .iter()
                .map(|(n, d)| (n.clone(), if n.ends_with("data.pkl") { mutate(d, m) } else { d.clone() }))
                .collect();
            torch_zip(&entries)
        }
    }
}

#[test]
fn mutated_torch_checkpoints_read_or_fail_without_panics_or_huge_allocations() {
    let dir = tempfile::tempdir().unwrap();
    let target = prop_oneof![1 => Just(Target::File), 1 => Just(Target::PickleBytes), 1 => Just(Target::Directory), 3 => Just(Target::Pickle)];
    check(
        "torch_mutated",
        256,
        &["read", "refused"],
        (0..torch_bases().len(), target, mutations(4)),
        |(base, target, m)| {
            let base = &torch_bases()[base];
            let path = dir.path().join(base.name);
            std::fs::write(&path, torch_damage(base, target, &m)).unwrap();
            checkpoint_readers_survive(&path, base.state_key, 16 * MIB)
        },
    );
}

/// A small safetensors file of three dtypes.
fn safetensors_file() -> Vec<u8> {
    use candle_core::{DType, Device, Tensor};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let tensors: std::collections::HashMap<String, Tensor> = [
        ("a", Tensor::arange(0f32, 6.0, &Device::Cpu).unwrap().reshape((2, 3)).unwrap()),
        ("b", Tensor::new(&[1u8, 2, 3, 4], &Device::Cpu).unwrap()),
        ("c", Tensor::ones(3, DType::F16, &Device::Cpu).unwrap()),
    ]
    .into_iter()
    .map(|(n, t)| (n.to_string(), t))
    .collect();
    candle_core::safetensors::save(&tensors, &path).unwrap();
    std::fs::read(path).unwrap()
}

/// A safetensors header: tensors with any dtype, shape and offsets, over `data` bytes.
fn safetensors_with_header(header: &str, data: usize) -> Vec<u8> {
    [&(header.len() as u64).to_le_bytes()[..], header.as_bytes(), &vec![0u8; data]].concat()
}

/// A header (and the bytes of data after it): tensors of any dtype, shape and offsets,
/// or ones whose offsets add up.
fn safetensors_header() -> impl Strategy<Value = (String, usize)> {
    let dtype = prop_oneof![
        Just("F32"),
        Just("F16"),
        Just("BF16"),
        Just("U8"),
        Just("I64"),
        Just("BOOL"),
        Just("F8_E4M3"),
        Just("X")
    ];
    let number = prop_oneof![0..64u64, Just(1_000_000), Just(u32::MAX as u64), Just(u64::MAX), any::<u64>()];
    let entry = |name: &str, dtype: &str, shape: &[u64], start: u64, end: u64| {
        format!(r#""{name}":{{"dtype":"{dtype}","shape":{shape:?},"data_offsets":[{start},{end}]}}"#)
    };
    let any_tensor = ("[a-c]{1,2}", dtype.clone(), vec(number.clone(), 0..4), (number.clone(), number));
    let any_header = (vec(any_tensor, 0..4), 0..64usize).prop_map(move |(tensors, data)| {
        let fields: Vec<String> =
            tensors.iter().map(|(name, dtype, shape, (start, end))| entry(name, dtype, shape, *start, *end)).collect();
        (format!("{{{}}}", fields.join(",")), data)
    });
    let sound_header = vec((dtype, vec(0..5u64, 0..3)), 1..4).prop_map(move |tensors| {
        let (mut fields, mut at) = (Vec::new(), 0);
        for (i, (dtype, shape)) in tensors.iter().enumerate() {
            let size = match *dtype {
                "F32" => 4,
                "F16" | "BF16" => 2,
                "I64" => 8,
                _ => 1,
            };
            let end = at + shape.iter().product::<u64>() * size;
            fields.push(entry(&format!("t{i}"), dtype, shape, at, end));
            at = end;
        }
        (format!("{{{}}}", fields.join(",")), at as usize)
    });
    prop_oneof![any_header, sound_header]
}

#[test]
fn mutated_safetensors_files_read_or_fail_without_panics_or_huge_allocations() {
    let dir = tempfile::tempdir().unwrap();
    let base = safetensors_file();
    let header_end = 8 + u64::from_le_bytes(base[..8].try_into().unwrap()) as usize;
    let path = dir.path().join("model.safetensors");
    let survives = |bytes: Vec<u8>| {
        std::fs::write(&path, &bytes).unwrap();
        checkpoint_readers_survive(&path, None, 4 * MIB)
    };
    check("safetensors_mutated", 1024, &["read", "refused"], (any::<bool>(), mutations(4)), |(header_only, m)| {
        survives(if header_only { mutate_within(&base, 0..header_end, &m) } else { mutate(&base, &m) })
    });
    check("safetensors_headers", 1024, &["read", "refused"], safetensors_header(), |(header, data)| {
        survives(safetensors_with_header(&header, data))
    });
    // A claimed 10^12-element tensor over 24 bytes of data.
    let huge = r#"{"a":{"dtype":"F32","shape":[1000000,1000000],"data_offsets":[0,24]}}"#;
    std::fs::write(&path, safetensors_with_header(huge, 24)).unwrap();
    let (result, largest) = largest_allocation(|| checkpoint::read_all(&path, None));
    assert!(result.is_err() && largest < MIB, "{largest} bytes");
    assert!(weights::stored_tensor_shapes(&path).is_err());
}

// ---------------------------------------------------------------------------------------
// Training CSVs.

const ARTICLE_CSV: &str = "index,belok,fats,uglevod,kkal,name,path\n\
0,1.1,2.3,5.4,47,Борщ,a.png\n\
1,11,10,33,270.5,\"пицца, маргарита\",b.jpg\n\
2,0.1,0,0.3,1,чай,missing.png\n";
const PAIRS_CSV: &str = "caption,path\n\"Блюдо: щи; ккал: 30;\",a.png\nблюдо: борщ; ккал: 47;,b.jpg\n";

fn csvish() -> impl Strategy<Value = Vec<u8>> {
    const TOKENS: &[&[u8]] = &[
        b",",
        b"\"",
        b"\"\"",
        b"\n",
        b"\r\n",
        b"\r",
        b"a.png",
        b"../b.jpg",
        b"/",
        b"1.5",
        b"1,5",
        b"NaN",
        b"inf",
        b"\xEF\xBB\xBF",
        b"\xFF",
        b"\0",
        "блюдо: борщ".as_bytes(),
    ];
    vec(proptest::sample::select(TOKENS), 0..80).prop_map(|tokens| tokens.concat())
}

#[test]
fn training_csvs_give_valid_samples_or_an_error() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["a.png", "b.jpg"] {
        std::fs::write(dir.path().join(name), b"image").unwrap();
    }
    let csv = dir.path().join("data.csv");
    let reads = |bytes: &[u8]| -> Result<(), TestCaseError> {
        std::fs::write(&csv, bytes).unwrap();
        let (result, largest) = largest_allocation(|| borscht_train::data::read_csv(&csv, dir.path()));
        prop_assert!(largest <= 64 * bytes.len() + MIB, "allocated {} bytes", largest);
        match result {
            Ok(data) => {
                reached("read");
                prop_assert!(!data.samples.is_empty());
                for sample in &data.samples {
                    prop_assert!((11..100).contains(&sample.caption.chars().count()), "{:?}", sample);
                    prop_assert!(sample.image.is_file(), "{:?}", sample);
                }
                let mut lines: Vec<usize> = data.samples.iter().chain([]).map(|s| s.line).collect();
                lines.extend(data.skipped.iter().map(|s| s.line));
                let count = lines.len();
                lines.sort_unstable();
                lines.dedup();
                prop_assert_eq!(lines.len(), count, "a line both used and skipped");
            }
            Err(e) => {
                reached("refused");
                prop_assert!(e.to_string().contains("no usable rows"), "{}", e);
            }
        }
        Ok(())
    };
    assert!(borscht_train::data::read_csv(&csv, dir.path()).is_err(), "no file yet");
    check("csv_mutated", 1024, &["read", "refused"], (any::<bool>(), mutations(6)), |(article, m)| {
        reads(&mutate(if article { ARTICLE_CSV } else { PAIRS_CSV }.as_bytes(), &m))
    });
    check("csv_arbitrary", 1024, &["refused"], prop_oneof![vec(any::<u8>(), 0..512), csvish()], |bytes| reads(&bytes));
}
