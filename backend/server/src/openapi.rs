//! The HTTP API as an OpenAPI 3.1 document (`GET /api/v1/openapi.json`), generated from
//! the handlers' own types and annotations, so operators can generate clients and
//! configure gateways from it. The server's tests check live answers against it.
//! The schemas of the bodies live beside their handlers in [`api`].

use utoipa::OpenApi;

use super::api;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Borscht",
        description = "Recognises the dish in a photo of a meal, with its nutrition per 100 g (protein, \
                       fat, carbohydrate, kcal), chooses among given dishes, and draws a dish from its \
                       name. Every request is idempotent: one that failed for a closed connection or a \
                       busy server (429 with Retry-After) may be sent again as it was."
    ),
    paths(api::recognize, api::classify, api::generate, api::dishes),
    // Named by a query parameter only, which utoipa does not collect by itself.
    components(schemas(borscht_protocol::ClassifyMethod)),
    tags(
        (name = "dishes", description = "What a photo shows"),
        (name = "drawing", description = "Pictures of a dish")
    )
)]
pub struct ApiDoc;

/// `GET /api/v1/openapi.json` (made once).
pub async fn document() -> impl axum::response::IntoResponse {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let json = DOCUMENT.get_or_init(|| ApiDoc::openapi().to_pretty_json().expect("the document serialises"));
    ([(axum::http::header::CONTENT_TYPE, "application/json")], json.as_str())
}
