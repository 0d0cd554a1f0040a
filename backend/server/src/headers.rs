//! Response headers that keep the app's pages to themselves and caches honest:
//! - a Content-Security-Policy on every response: scripts only from this server (plus the
//!   hashes of the web app's own inline scripts, which Trunk writes into `index.html`),
//!   no plugins, no `<base>`, and `frame-ancestors` letting only `/embed` (exactly) be
//!   framed, by the sites named in `--embed-ancestors`;
//!   Browsers report what it blocks to `/csp-report` (counted in `/metrics`);
//! - `Permissions-Policy: camera=(self)`;
//! - `Cache-Control`: never stored for the API, long-lived for Trunk's content-hashed
//!   files, revalidated for everything else (`index.html` names the hashed files);
//! - static files that are symbolic links leading out of the web app's folder are not
//!   served.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The policies, made once when the router is built.
#[derive(Debug, Clone)]
pub struct SecurityHeaders {
    /// The CSP of every page but the widget.
    page: HeaderValue,
    /// The CSP of `/embed`.
    embed: HeaderValue,
    /// The web app's folder, resolved, for the symbolic-link check.
    web_root: Option<PathBuf>,
}

impl SecurityHeaders {
    pub fn new(web_dir: &Path, embed_ancestors: &[String]) -> Self {
        let hashes = inline_script_hashes(web_dir);
        let policy = |ancestors: &str| {
            let scripts: String = hashes.iter().map(|h| format!(" 'sha256-{h}'")).collect();
            let value = format!(
                "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'{scripts}; style-src 'self' 'unsafe-inline'; \
                 img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
                 form-action 'self'; report-uri /csp-report; frame-ancestors {ancestors}"
            );
            HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("default-src 'self'"))
        };
        SecurityHeaders {
            page: policy("'self'"),
            embed: policy(&embed_ancestors.join(" ")),
            web_root: web_dir.canonicalize().ok(),
        }
    }
}

/// SHA-256 (base64) of every inline `<script>` of the HTML pages at the top of `web_dir`.
fn inline_script_hashes(web_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(web_dir) else { return Vec::new() };
    let mut hashes = Vec::new();
    for path in entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "html")) {
        let Ok(html) = std::fs::read_to_string(&path) else { continue };
        let mut rest = html.as_str();
        while let Some(open) = rest.find("<script") {
            let after = &rest[open..];
            let Some(tag_end) = after.find('>') else { break };
            let tag = &after[..tag_end];
            let body = &after[tag_end + 1..];
            let Some(close) = body.find("</script>") else { break };
            if !tag.contains(" src=") {
                let digest = Sha256::digest(&body.as_bytes()[..close]);
                hashes.push(base64::engine::general_purpose::STANDARD.encode(digest));
            }
            rest = &body[close..];
        }
    }
    hashes.sort();
    hashes.dedup();
    hashes
}

/// Trunk names built files `name-<16 hex digits>.ext`: their content never changes.
fn is_content_hashed(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    let stem = name.split('.').next().unwrap_or(name);
    let stem = stem.strip_suffix("_bg").unwrap_or(stem);
    stem.rsplit_once('-').is_some_and(|(_, hash)| hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Whether the file a path names lies outside the web app's folder once symbolic links
/// are followed.
fn escapes(root: &Path, path: &str) -> bool {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    let relative: PathBuf = decoded.split('/').filter(|c| !c.is_empty() && *c != "." && *c != "..").collect();
    let candidate = root.join(relative);
    match candidate.canonicalize() {
        Ok(real) => !real.starts_with(root),
        Err(_) => false,
    }
}

/// Adds the headers above; refuses (404) a static file that leads out of the web folder.
pub async fn apply(State(policy): State<Arc<SecurityHeaders>>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    if let Some(root) = &policy.web_root {
        if escapes(root, &path) {
            return (StatusCode::NOT_FOUND, "not found").into_response();
        }
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let csp = if path == "/embed" { &policy.embed } else { &policy.page };
    headers.insert(header::CONTENT_SECURITY_POLICY, csp.clone());
    headers.insert(header::HeaderName::from_static("permissions-policy"), HeaderValue::from_static("camera=(self)"));
    let cache = if path.starts_with("/api/") || path == "/metrics" || path == "/readyz" || path == "/healthz" {
        "no-store"
    } else if is_content_hashed(&path) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trunks_hashed_files_are_told_apart() {
        assert!(is_content_hashed("/borscht-frontend-61834882f68e9e8c.js"));
        assert!(is_content_hashed("/borscht-frontend-61834882f68e9e8c_bg.wasm"));
        assert!(is_content_hashed("/style-8ac6f7d679207878.css"));
        assert!(!is_content_hashed("/widget.js"));
        assert!(!is_content_hashed("/index.html"));
        assert!(!is_content_hashed("/embed"));
    }

    #[test]
    fn inline_scripts_are_hashed_and_external_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("index.html"),
            "<script type=\"module\">run()</script><script src=\"/a.js\"></script>",
        )
        .unwrap();
        let expected = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(b"run()"));
        assert_eq!(inline_script_hashes(dir.path()), vec![expected]);
    }
}
