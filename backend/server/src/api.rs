//! The HTTP API for sites and scripts (`/api/v1/*`): the same jobs as the WebSocket,
//! answered in one response. Every error, a malformed query string included, is JSON
//! `{"error": {"code", "message"}}` with a fitting status; a full queue is `429` with
//! `Retry-After`, as is a client past its cap of requests in flight. A body that does not
//! arrive within the body timeout is `408`. A client that hangs up cancels its request.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, FromRequest, Multipart, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use borscht_protocol::{ErrorCode, ServerMessage};
use serde::Deserialize;
use std::sync::atomic::Ordering;

use super::client::{ClientKey, ClientSlot, Peer};
use super::job::{
    classify_task, decode_picture, generate_image_task, recognize_task, CancelFlag, Job, Rejection, Task,
};
use super::queue::SubmitError;
use super::AppState;

/// An API failure: status, code and message, as JSON.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after_s: Option<u32>,
    /// A status other than the code's own (408 for a body that came too slowly).
    pub status: Option<StatusCode>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), retry_after_s: None, status: None }
    }

    /// A request body that could not be read: too large, too slow, or cut off.
    fn body(error: &(dyn std::error::Error + 'static), status: StatusCode, what: &str) -> Self {
        let timed_out = {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
            let mut found = false;
            while let Some(e) = source {
                found |= e.is::<tower_http::timeout::TimeoutError>();
                source = e.source();
            }
            found
        };
        if timed_out {
            let mut e = ApiError::new(ErrorCode::InvalidMessage, format!("the {what} did not arrive in time"));
            e.status = Some(StatusCode::REQUEST_TIMEOUT);
            return e;
        }
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(ErrorCode::ImageTooLarge, format!("the {what} is over the size limit: {error}"));
        }
        ApiError::new(ErrorCode::InvalidMessage, format!("cannot read the {what}: {error}"))
    }

    fn status(&self) -> StatusCode {
        if let Some(status) = self.status {
            return status;
        }
        match self.code {
            ErrorCode::InvalidImage => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::ImageTooLarge | ErrorCode::FrameTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::InvalidRequest | ErrorCode::UnknownCharacters => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::Busy | ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::new(ErrorCode::InvalidRequest, format!("bad query string: {}", r.body_text()))
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        ApiError::new(r.code, r.message)
    }
}

/// Every API error's body: `{"error": {"code", "message"}}`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// What went wrong, for programs.
    pub code: ErrorCode,
    /// What went wrong, for people (English).
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = Json(ErrorBody { error: ErrorDetail { code: self.code, message: self.message } });
        let mut response = (status, body).into_response();
        if let Some(seconds) = self.retry_after_s {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Refuses an API call beyond the client's rate ([`super::caps`]) with 429 and the
/// seconds to wait, before its body is read.
pub async fn rate_limit(
    State(state): State<AppState>,
    Peer(peer): Peer,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let client = state.client(request.headers(), peer.as_ref());
    match state.caps.api_call(&client) {
        Ok(()) => next.run(request).await,
        Err(wait_s) => {
            state.metrics.rejected_rate.inc();
            let mut e = ApiError::new(
                ErrorCode::TooManyRequests,
                format!("too many requests from your address; try again in {wait_s} s"),
            );
            e.retry_after_s = Some(wait_s);
            e.into_response()
        }
    }
}

/// Cancels the job if the handler is dropped (the client hung up) before it ends.
struct CancelOnDrop(CancelFlag);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Who is asking and their place among its requests in flight.
struct Caller {
    client: ClientKey,
    slot: ClientSlot,
}

impl Caller {
    fn admit(state: &AppState, request: &Request) -> Result<Caller, ApiError> {
        let peer = request.extensions().get::<ConnectInfo<std::net::SocketAddr>>();
        let client = state.client(request.headers(), peer);
        let slot = state.admit(&client).map_err(|text| {
            let mut e = ApiError::new(ErrorCode::TooManyRequests, text);
            e.retry_after_s = Some(state.limits.retry_after_s);
            e
        })?;
        Ok(Caller { client, slot })
    }
}

/// Queues `task` and waits for its final frame.
async fn run(state: &AppState, caller: Caller, task: Task) -> Result<ServerMessage, ApiError> {
    if let Some(reason) = state.unavailable() {
        return Err(ApiError::new(ErrorCode::Unavailable, reason));
    }
    let (job, mut events) = Job::for_client(0, task, caller.client, Some(caller.slot));
    let guard = CancelOnDrop(job.cancel.clone());
    match state.submit(job) {
        Ok(_) => {}
        Err(SubmitError::Busy(_)) => {
            let retry = state.limits.retry_after_s;
            return Err(ApiError {
                code: ErrorCode::Busy,
                message: format!("the server is busy; try again in {retry} s"),
                retry_after_s: Some(retry),
                status: None,
            });
        }
        Err(SubmitError::Closed(_)) => {
            return Err(ApiError::new(ErrorCode::Unavailable, "the server is shutting down"))
        }
    }
    while let Some(message) = events.recv().await {
        if message.is_final() {
            std::mem::forget(guard);
            return match message {
                ServerMessage::Error { code, message, .. } => Err(ApiError::new(code, message)),
                done => Ok(done),
            };
        }
    }
    Err(ApiError::new(ErrorCode::Internal, "the model worker stopped"))
}

/// The picture of a request: a multipart field `image`, or the raw body.
struct Upload {
    image: Bytes,
    fields: Vec<(String, String)>,
}

impl Upload {
    /// A text field of the form.
    fn field(&self, name: &str) -> Option<String> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    }

    /// A number from the form, else from the query.
    fn number<T: std::str::FromStr>(&self, name: &str, query: Option<T>) -> Result<Option<T>, ApiError> {
        match self.field(name) {
            Some(text) => text
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| ApiError::new(ErrorCode::InvalidRequest, format!("{name} must be a number"))),
            None => Ok(query),
        }
    }
}

async fn read_upload(state: &AppState, request: Request) -> Result<Upload, ApiError> {
    // Media types are case-insensitive (RFC 9110).
    let is_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("multipart/form-data"));
    if !is_multipart {
        let bytes = Bytes::from_request(request, state).await.map_err(|e| ApiError::body(&e, e.status(), "body"))?;
        return Ok(Upload { image: bytes, fields: Vec::new() });
    }
    let mut multipart = Multipart::from_request(request, state)
        .await
        .map_err(|e| ApiError::new(ErrorCode::InvalidMessage, format!("bad multipart body: {}", e.body_text())))?;
    let (mut image, mut fields) = (None, Vec::new());
    let part = |e: axum::extract::multipart::MultipartError| ApiError::body(&e, e.status(), "form");
    while let Some(field) = multipart.next_field().await.map_err(part)? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "image" {
            image = Some(field.bytes().await.map_err(part)?);
        } else {
            fields.push((name, field.text().await.map_err(part)?));
        }
    }
    let image = image.ok_or_else(|| ApiError::new(ErrorCode::InvalidImage, "the form has no `image` field"))?;
    Ok(Upload { image, fields })
}

async fn decode(state: &AppState, bytes: Bytes) -> Result<image::DynamicImage, ApiError> {
    let limits = state.limits.clone();
    Ok(state
        .decode(move |side| decode_picture(&bytes, &limits, side))
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))??)
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RecognizeQuery {
    /// Captions to sample (up to `--max-captions`).
    pub n: Option<u32>,
    /// The caption's beginning the model continues (`блюдо:` by default).
    pub template: Option<String>,
    /// Also give the values for a portion of this many grams.
    pub portion_g: Option<f32>,
}

/// `POST /api/v1/recognize[?n=16&portion_g=250]`: the photo as the body or a form field `image`.
#[utoipa::path(
    post,
    path = "/api/v1/recognize",
    tag = "dishes",
    summary = "Recognise the dish in a photo, with its nutrition per 100 g",
    params(RecognizeQuery),
    request_body(
        description = "The photo (JPEG, PNG, WebP…) as the body, or a form with the photo as `image` (fields override the query)",
        content(
            (Photo = "application/octet-stream"),
            (Photo = "image/jpeg"),
            (Photo = "image/png"),
            (RecognizeForm = "multipart/form-data")
        )
    ),
    responses(
        (status = 200, description = "What the model makes of the photo", body = borscht_protocol::Recognition),
        (status = "4XX", description = "The request cannot be served as sent (see `code`); 429 with Retry-After when busy", body = ErrorBody),
        (status = 503, description = "Shutting down, or no model loaded", body = ErrorBody)
    )
)]
pub async fn recognize(
    State(state): State<AppState>,
    query: Result<Query<RecognizeQuery>, QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let caller = Caller::admit(&state, &request)?;
    let upload = read_upload(&state, request).await?;
    let n = upload.number("n", query.n)?;
    let portion_g = upload.number("portion_g", query.portion_g)?;
    let template = upload.field("template").or(query.template);
    let image = decode(&state, upload.image).await?;
    let task = recognize_task(image, template.as_deref(), n, portion_g, &state.limits)?;
    match run(&state, caller, task).await? {
        ServerMessage::Result { recognition, .. } => Ok(Json(recognition).into_response()),
        other => Err(ApiError::new(ErrorCode::Internal, format!("unexpected answer {other:?}"))),
    }
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ClassifyQuery {
    /// Comma-separated dishes.
    pub classes: Option<String>,
    /// The caption's beginning each dish follows (`блюдо:` by default).
    pub template: Option<String>,
    /// `caption_fit` (default), `image_fit` or `zero_shot`.
    pub method: Option<borscht_protocol::ClassifyMethod>,
}

/// `POST /api/v1/classify?classes=борщ,шаурма`: the photo as the body or a form field
/// `image` (with `classes` as a form field).
#[utoipa::path(
    post,
    path = "/api/v1/classify",
    tag = "dishes",
    summary = "Which of the given dishes the photo shows",
    params(ClassifyQuery),
    request_body(
        description = "The photo as the body, or a form with the photo as `image` and `classes`",
        content(
            (Photo = "application/octet-stream"),
            (Photo = "image/jpeg"),
            (Photo = "image/png"),
            (ClassifyForm = "multipart/form-data")
        )
    ),
    responses(
        (status = 200, description = "The scores of the dishes and the chosen one", body = borscht_protocol::Classification),
        (status = "4XX", description = "The request cannot be served as sent (see `code`); 429 with Retry-After when busy", body = ErrorBody),
        (status = 503, description = "Shutting down, or no model loaded", body = ErrorBody)
    )
)]
pub async fn classify(
    State(state): State<AppState>,
    query: Result<Query<ClassifyQuery>, QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let caller = Caller::admit(&state, &request)?;
    let upload = read_upload(&state, request).await?;
    let classes: Vec<String> = upload
        .field("classes")
        .or(query.classes)
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, "give the dishes as `classes` (comma-separated)"))?
        .split(',')
        .map(str::to_string)
        .collect();
    let template = upload.field("template").or(query.template);
    let image = decode(&state, upload.image).await?;
    let task = classify_task(image, &classes, template.as_deref(), query.method.unwrap_or_default(), &state.limits)?;
    match run(&state, caller, task).await? {
        ServerMessage::Classification { classification, .. } => Ok(Json(classification).into_response()),
        other => Err(ApiError::new(ErrorCode::Internal, format!("unexpected answer {other:?}"))),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateBody {
    /// What to draw (the model reads Russian).
    pub text: String,
    /// Pictures to draw (up to `--max-images`).
    pub n: Option<u32>,
    /// Draws an earlier answer's pictures again (its `X-Borscht-Seed`).
    pub seed: Option<u64>,
}

/// The header holding the seed that draws a picture again.
const SEED_HEADER: header::HeaderName = header::HeaderName::from_static("x-borscht-seed");

/// The dishes a model knows.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Dishes {
    pub model: String,
    pub dishes: Vec<borscht_protocol::Dish>,
}

/// Several drawings.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Images {
    /// PNG pictures, base64.
    pub images: Vec<String>,
    /// Draws these pictures again (as `seed` of a later request).
    pub seed: Option<u64>,
}

/// `GET /api/v1/dishes`: the dishes the model knows (its training captions name them).
#[utoipa::path(
    get,
    path = "/api/v1/dishes",
    tag = "dishes",
    summary = "The dishes the model knows",
    responses(
        (status = 200, description = "The model and its dishes", body = Dishes),
        (status = "4XX", description = "Too many calls from this client", body = ErrorBody),
        (status = 503, description = "The model is not loaded yet", body = ErrorBody)
    )
)]
pub async fn dishes(State(state): State<AppState>) -> Result<Response, ApiError> {
    match state.worker.status() {
        super::worker::ModelStatus::Ready { name, dishes } => {
            Ok(Json(Dishes { model: name, dishes: dishes.to_vec() }).into_response())
        }
        _ => Err(ApiError::new(ErrorCode::Unavailable, "the model is not loaded yet")),
    }
}

/// `POST /api/v1/generate` with `{"text": "борщ", "n": 1, "seed": 7}` (`seed` repeats an
/// earlier drawing): one picture comes back as `image/png` with its seed in
/// `X-Borscht-Seed`; several as JSON `{"images": [base64 PNG, ...], "seed": 7}`.
#[utoipa::path(
    post,
    path = "/api/v1/generate",
    tag = "drawing",
    summary = "Draw a dish from its name",
    request_body(content = GenerateBody, content_type = "application/json"),
    responses(
        (status = 200, description = "One picture as PNG (its seed in X-Borscht-Seed), or several as JSON",
            content(
                (Png = "image/png"),
                (Images = "application/json")
            ),
            headers(("X-Borscht-Seed" = u64, description = "Draws this picture again (as `seed`)"))
        ),
        (status = "4XX", description = "The request cannot be served as sent (see `code`); 429 with Retry-After when busy", body = ErrorBody),
        (status = 503, description = "Shutting down, or no model loaded", body = ErrorBody)
    )
)]
pub async fn generate(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let caller = Caller::admit(&state, &request)?;
    let body = Bytes::from_request(request, &state).await.map_err(|e| ApiError::body(&e, e.status(), "body"))?;
    let request: GenerateBody = serde_json::from_slice(&body).map_err(|e| {
        let text = borscht_protocol::clip(&e.to_string(), 200);
        ApiError::new(ErrorCode::InvalidMessage, format!("expected {{\"text\": ..., \"n\": ...}}: {text}"))
    })?;
    let task = generate_image_task(&request.text, request.n, request.seed, &state.limits)?;
    match run(&state, caller, task).await? {
        ServerMessage::Images { images, seed, .. } if images.len() == 1 => {
            let png = base64::engine::general_purpose::STANDARD
                .decode(&images[0])
                .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
            let seed = seed.map(HeaderValue::from).unwrap_or(HeaderValue::from_static(""));
            Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("image/png")), (SEED_HEADER, seed)], png)
                .into_response())
        }
        ServerMessage::Images { images, seed, .. } => Ok(Json(Images { images, seed }).into_response()),
        other => Err(ApiError::new(ErrorCode::Internal, format!("unexpected answer {other:?}"))),
    }
}

// The request and answer bodies that only the OpenAPI document names (the handlers read
// and write them as bytes and forms).

/// A picture's bytes, as sent.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct Photo(#[allow(dead_code)] Vec<u8>);

/// A PNG picture's bytes.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct Png(#[allow(dead_code)] Vec<u8>);

/// `recognize` as a form.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct RecognizeForm {
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
    n: Option<u32>,
    template: Option<String>,
    portion_g: Option<f32>,
}

/// `classify` as a form.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ClassifyForm {
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
    /// Comma-separated dishes.
    classes: String,
    template: Option<String>,
}
