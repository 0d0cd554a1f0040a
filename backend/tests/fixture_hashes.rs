//! The reference fixtures are the files their scripts wrote: every file under
//! backend/tests/fixtures/ is listed in scripts/fixtures/FIXTURES.sha256 with its hash
//! (the same list `sha256sum -c scripts/fixtures/FIXTURES.sha256` checks).

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const LIST: &str = "scripts/fixtures/FIXTURES.sha256";
const FIXTURES: &str = "backend/tests/fixtures";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// `sha256sum` lines: hash, then two spaces (text mode) or " *" (binary mode), then the path.
fn listed() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(repo_root().join(LIST)).unwrap();
    let mut list = BTreeMap::new();
    for (number, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let parsed = line.split_once(' ').and_then(|(hash, rest)| {
            let path = rest.strip_prefix(' ').or_else(|| rest.strip_prefix('*'))?;
            (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())).then(|| (hash.to_ascii_lowercase(), path))
        });
        let (hash, path) = parsed.unwrap_or_else(|| panic!("{LIST}:{}: not a sha256sum line: {line:?}", number + 1));
        assert!(list.insert(path.to_string(), hash).is_none(), "{LIST}: {path} listed twice");
    }
    list
}

/// Every file under `dir`, as a path relative to the repository root with `/` separators.
fn files_under(dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            let relative = path.strip_prefix(repo_root()).unwrap();
            out.push(relative.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/"));
        }
    }
}

fn sha256_hex(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn every_listed_fixture_has_its_recorded_hash() {
    let list = listed();
    assert!(!list.is_empty(), "{LIST} lists nothing");
    let wrong: Vec<String> = list
        .iter()
        .filter_map(|(path, hash)| {
            let file = repo_root().join(path);
            if !file.is_file() {
                return Some(format!("{path}: missing"));
            }
            let found = sha256_hex(&file);
            (&found != hash).then(|| format!("{path}: sha256 {found}, listed {hash}"))
        })
        .collect();
    assert!(wrong.is_empty(), "fixtures differ from {LIST} (regenerate them or the list):\n{}", wrong.join("\n"));
}

#[test]
fn every_fixture_file_is_listed() {
    let list = listed();
    let mut files = Vec::new();
    files_under(&repo_root().join(FIXTURES), &mut files);
    files.sort();
    assert!(!files.is_empty(), "no files under {FIXTURES}");
    let unlisted: Vec<&String> = files.iter().filter(|f| !list.contains_key(*f)).collect();
    assert!(unlisted.is_empty(), "files under {FIXTURES} missing from {LIST}: {unlisted:?}");
}
