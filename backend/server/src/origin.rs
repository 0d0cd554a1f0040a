//! Which web pages may open `/ws`. A browser sends the page's `Origin` with the upgrade
//! request, so without a check any site could spend this server's model through its
//! visitors' browsers (including a server on a home network they can reach). Allowed:
//! the server's own pages (the Origin's host is the request's Host, as behind a proxy
//! that passes Host on), the origins named by `--ws-origins`, and the sites named by
//! `--embed-ancestors` (not its `*`). Clients that send no Origin are not browsers and
//! may connect; the opaque origin `null` may not, unless named.

use axum::http::HeaderMap;

#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    allowed: Vec<String>,
    any: bool,
}

impl OriginPolicy {
    pub fn new(ws_origins: &[String], embed_ancestors: &[String]) -> Self {
        let any = ws_origins.iter().any(|o| o.trim() == "*");
        let allowed = ws_origins
            .iter()
            .chain(embed_ancestors)
            .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|o| !o.is_empty() && o != "*" && !o.starts_with('\''))
            .collect();
        OriginPolicy { allowed, any }
    }

    /// Why the request's origin may not open a WebSocket, if it may not.
    pub fn refusal(&self, headers: &HeaderMap) -> Option<String> {
        let origin = headers.get(axum::http::header::ORIGIN)?;
        let origin = origin.to_str().unwrap_or("").trim().to_ascii_lowercase();
        if self.allowed.contains(&origin) || (self.any && origin != "null") {
            return None;
        }
        let host = headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_ascii_lowercase);
        let origin_host = origin.split_once("://").map(|(_, rest)| rest.trim_end_matches('/'));
        if origin_host.is_some() && origin_host == host.as_deref() {
            return None;
        }
        let shown: String = origin.chars().take(100).collect();
        Some(format!(
            "pages from {shown} may not use this server's WebSocket; its operator can allow them with --ws-origins"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("host", host.parse().unwrap());
        if let Some(o) = origin {
            h.insert("origin", o.parse().unwrap());
        }
        h
    }

    #[test]
    fn own_pages_named_sites_and_non_browsers_may_connect() {
        let policy =
            OriginPolicy::new(&["https://recipes.example".into()], &["*".into(), "https://shop.example".into()]);
        assert!(policy.refusal(&headers(Some("http://127.0.0.1:8080"), "127.0.0.1:8080")).is_none());
        assert!(policy.refusal(&headers(Some("https://recipes.example"), "borscht.example")).is_none());
        assert!(policy.refusal(&headers(Some("https://shop.example"), "borscht.example")).is_none());
        assert!(policy.refusal(&headers(None, "borscht.example")).is_none());
        assert!(policy.refusal(&headers(Some("https://evil.example"), "borscht.example")).is_some());
        assert!(policy.refusal(&headers(Some("null"), "borscht.example")).is_some());
        // Another port of the same host is another origin.
        assert!(policy.refusal(&headers(Some("http://127.0.0.1:9999"), "127.0.0.1:8080")).is_some());
        let any = OriginPolicy::new(&["*".into()], &[]);
        assert!(any.refusal(&headers(Some("https://evil.example"), "borscht.example")).is_none());
        assert!(any.refusal(&headers(Some("null"), "borscht.example")).is_some());
    }
}
