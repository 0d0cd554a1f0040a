//! The HTTP API as an OpenAPI 3.1 document (`GET /api/v1/openapi.json`), generated from
//! the handlers' own types and annotations, so operators can generate clients and
//! configure gateways from it. The server's tests check live answers against it.
//! The schemas of the bodies live beside their handlers in [`api`].

use utoipa::OpenApi;

use super::{api, teach_api};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Borscht",
        description = "Recognises the dish in a photo of a meal, with its nutrition per 100 g (protein, \
                       fat, carbohydrate, kcal), chooses among given dishes, and draws a dish from its \
                       name. Every request is idempotent: one that failed for a closed connection or a \
                       busy server (429 with Retry-After) may be sent again as it was."
    ),
    paths(
        api::recognize,
        api::classify,
        api::generate,
        api::dishes,
        teach_api::add_example,
        teach_api::list_examples,
        teach_api::export_examples,
        teach_api::example_photo,
        teach_api::delete_example,
        teach_api::start_finetune,
        teach_api::list_finetunes,
        teach_api::cancel_finetune,
        teach_api::resume_finetune,
        teach_api::finetune_events,
        teach_api::list_models,
        teach_api::promote_model,
        teach_api::rollback_model,
    ),
    modifiers(&AdminToken),
    // Named by a query parameter only, which utoipa does not collect by itself.
    components(schemas(borscht_protocol::ClassifyMethod)),
    tags(
        (name = "dishes", description = "What a photo shows"),
        (name = "drawing", description = "Pictures of a dish"),
        (name = "teaching", description = "Examples users send, fine-tunes and model versions; the admin's routes ask for the server's --admin-token")
    )
)]
pub struct ApiDoc;

/// The admin routes' bearer token.
struct AdminToken;

impl utoipa::Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `GET /api/v1/openapi.json` (made once).
pub async fn document() -> impl axum::response::IntoResponse {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let json = DOCUMENT.get_or_init(|| ApiDoc::openapi().to_pretty_json().expect("the document serialises"));
    ([(axum::http::header::CONTENT_TYPE, "application/json")], json.as_str())
}
