//! The HTTP routes for teaching the model: anyone may send an example (when the server
//! keeps a dataset); the admin, with the server's token (`--admin-token`), lists, exports
//! and deletes examples, starts, follows, cancels and resumes fine-tunes, and promotes
//! or rolls back model versions. Without a token the admin routes answer 404.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use borscht_protocol::ErrorCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;

use super::api::{ApiError, ErrorBody};
use super::client::Peer;
use super::dataset::{Dataset, Example, ExampleSource, NewExample, StoreError};
use super::finetune::TeachEvent;
use super::versions::{FinetuneSettings, RunRecord, RunStatus, Versions, BASE};
use super::AppState;

/// How long a promotion waits for every worker to swap.
const SWAP_TIMEOUT: Duration = Duration::from_secs(120);

/// An example as the app sends it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddExample {
    /// The photo as a data URL or base64, as it was sent for recognition.
    pub photo: String,
    pub dish: String,
    pub protein_g: f32,
    pub fat_g: f32,
    pub carbs_g: f32,
    pub kcal: f32,
    #[serde(default = "correction")]
    pub source: ExampleSource,
    /// The consent text the user agreed to, as the app showed it.
    pub consent: String,
}

fn correction() -> ExampleSource {
    ExampleSource::Correction
}

/// A stored example's id and training caption.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExampleStored {
    pub id: String,
    pub caption: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExampleList {
    pub examples: Vec<Example>,
}

/// The fine-tunes and the version serving.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FinetuneList {
    /// The version of the run queued or training.
    pub running: Option<String>,
    pub runs: Vec<RunRecord>,
    pub active: String,
}

/// The versions a server can serve: `base` and every finished fine-tune.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelList {
    pub active: String,
    pub versions: Vec<ModelVersion>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelVersion {
    pub name: String,
    /// The fine-tune that made it (none for `base`).
    pub run: Option<RunRecord>,
}

fn dataset(state: &AppState) -> Result<&Dataset, ApiError> {
    state.teaching.dataset.as_deref().ok_or_else(|| {
        ApiError::new(ErrorCode::NotFound, "this server does not collect examples (start it with --dataset DIR)")
    })
}

fn versions(state: &AppState) -> Result<&Versions, ApiError> {
    state.teaching.versions.as_deref().ok_or_else(|| {
        ApiError::new(ErrorCode::NotFound, "this server keeps no model versions (start it with --models-dir DIR)")
    })
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Internal, e.to_string())
}

/// Runs file work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(internal)?
}

/// `POST /api/v1/examples`: stores a photo and its dish as a training example.
#[utoipa::path(
    post,
    path = "/api/v1/examples",
    tag = "teaching",
    summary = "Store a photo and its dish as a training example (servers started with --dataset)",
    request_body = AddExample,
    responses(
        (status = 201, description = "Stored", body = ExampleStored),
        (status = "4XX", description = "Not a picture, values out of range, no consent, no dataset, the dataset full, too many calls", body = ErrorBody)
    )
)]
pub async fn add_example(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<ExampleStored>), ApiError> {
    dataset(&state)?;
    // Counted among the client's requests in flight, as a recognition is.
    let client = state.client(&headers, peer.as_ref());
    let _slot = state.admit(&client).map_err(|text| {
        let mut e = ApiError::new(ErrorCode::TooManyRequests, text);
        e.retry_after_s = Some(state.limits.retry_after_s);
        e
    })?;
    let add: AddExample = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("not an example: {e}")))?;
    let photo = super::job::base64_bytes(&add.photo, &state.limits)?;
    // Only a photo the model could read is kept; it is decoded within the server's
    // decodes at once, as uploads are.
    let limits = state.limits.clone();
    let photo = state
        .decode(move |side| super::job::decode_picture(&photo, &limits, side).map(|_| photo))
        .await
        .map_err(internal)??;
    let new = NewExample {
        dish: add.dish,
        protein_g: add.protein_g,
        fat_g: add.fat_g,
        carbs_g: add.carbs_g,
        kcal: add.kcal,
        source: add.source,
        consent: add.consent,
        client: client.to_string(),
        photo,
    };
    let stored = blocking(move || {
        let dataset = state.teaching.dataset.as_deref().expect("checked above");
        dataset.add(new).map_err(|e| match e {
            StoreError::Invalid(message) => ApiError::new(ErrorCode::InvalidRequest, message),
            StoreError::Full { examples, bytes } => ApiError::new(
                ErrorCode::Busy,
                format!(
                    "the dataset is full (at most {examples} examples, {} MiB of photos); its operator must export and delete some",
                    bytes >> 20
                ),
            ),
            StoreError::Io(e) => internal(format!("{e:#}")),
        })
    })
    .await?;
    tracing::info!(id = %stored.id, dish = %stored.dish, "example stored");
    Ok((StatusCode::CREATED, Json(ExampleStored { id: stored.id, caption: stored.caption })))
}

/// Refuses an admin route without the server's admin token (404 when it has none).
pub async fn require_admin(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(token) = state.admin_token.as_deref() else {
        return ApiError::new(
            ErrorCode::NotFound,
            "the admin routes are off: start the server with --admin-token (or BORSCHT_ADMIN_TOKEN)",
        )
        .into_response();
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    // Digests compared, so the time taken says nothing of the token.
    if Sha256::digest(given.as_bytes()) != Sha256::digest(token.as_bytes()) {
        state.metrics.rejected_rate.inc();
        let mut response =
            ApiError::new(ErrorCode::Unauthorized, "this route needs the admin token: Authorization: Bearer <token>")
                .into_response();
        response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return response;
    }
    next.run(request).await
}

/// `GET /api/v1/examples`
#[utoipa::path(get, path = "/api/v1/examples", tag = "teaching", summary = "Every stored example (admin)",
    security(("admin_token" = [])),
    responses((status = 200, description = "The examples, oldest first", body = ExampleList), (status = "4XX", description = "No token, or no dataset", body = ErrorBody)))]
pub async fn list_examples(State(state): State<AppState>) -> Result<Json<ExampleList>, ApiError> {
    dataset(&state)?;
    let examples = blocking(move || dataset(&state)?.list().map_err(internal)).await?;
    Ok(Json(ExampleList { examples }))
}

/// `GET /api/v1/examples/export`: `food.csv`, `examples.json` and `images/` as a zip.
#[utoipa::path(get, path = "/api/v1/examples/export", tag = "teaching", summary = "The examples as a training set: food.csv (the article's columns), examples.json and images/ in a zip (admin)",
    security(("admin_token" = [])),
    responses((status = 200, description = "The zip", content_type = "application/zip", body = Vec<u8>), (status = "4XX", description = "No token, or no dataset", body = ErrorBody)))]
pub async fn export_examples(State(state): State<AppState>) -> Result<Response, ApiError> {
    dataset(&state)?;
    let zip = blocking(move || dataset(&state)?.export().map_err(internal)).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/zip"),
            (header::CONTENT_DISPOSITION, "attachment; filename=\"borscht-examples.zip\""),
        ],
        zip,
    )
        .into_response())
}

/// `GET /api/v1/examples/{id}/photo`
#[utoipa::path(get, path = "/api/v1/examples/{id}/photo", tag = "teaching", summary = "An example's photo as it was sent (admin)",
    security(("admin_token" = [])), params(("id" = String, Path, description = "The example's id")),
    responses((status = 200, description = "The picture", content_type = "image/*", body = Vec<u8>), (status = "4XX", description = "No token, or no such example", body = ErrorBody)))]
pub async fn example_photo(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    dataset(&state)?;
    let photo = blocking(move || {
        let dataset = dataset(&state)?;
        let example = dataset.get(&id).map_err(internal)?.ok_or_else(|| not_found_example(&id))?;
        dataset.photo(&example).map_err(internal)
    })
    .await?;
    let kind = image::guess_format(&photo).map(|f| f.to_mime_type()).unwrap_or("application/octet-stream");
    Ok(([(header::CONTENT_TYPE, kind)], photo).into_response())
}

fn not_found_example(id: &str) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("there is no example {}", borscht_protocol::clip(id, 40)))
}

/// `DELETE /api/v1/examples/{id}`
#[utoipa::path(delete, path = "/api/v1/examples/{id}", tag = "teaching", summary = "Delete an example and its photo (admin)",
    security(("admin_token" = [])), params(("id" = String, Path, description = "The example's id")),
    responses((status = 204, description = "Deleted"), (status = "4XX", description = "No token, or no such example", body = ErrorBody)))]
pub async fn delete_example(State(state): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    dataset(&state)?;
    blocking(move || match dataset(&state)?.delete(&id).map_err(internal)? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(not_found_example(&id)),
    })
    .await
}

/// `POST /api/v1/finetune`: starts `borscht train`'s recipe on the examples (and the
/// base data set when asked) from the version serving, as a new version.
#[utoipa::path(post, path = "/api/v1/finetune", tag = "teaching", summary = "Fine-tune the serving version on the examples, as a new version (admin)",
    security(("admin_token" = [])), request_body(content = FinetuneSettings, description = "Settings; an empty body takes every default"),
    responses((status = 202, description = "Queued: a worker trains it between request batches", body = RunRecord), (status = "4XX", description = "No token, no dataset or versions, bad settings, no examples, a run already running", body = ErrorBody)))]
pub async fn start_finetune(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<RunRecord>), ApiError> {
    if let Some(why) = state.teaching.unavailable() {
        return Err(ApiError::new(ErrorCode::NotFound, why));
    }
    let settings: FinetuneSettings = if body.iter().all(u8::is_ascii_whitespace) {
        FinetuneSettings::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("not fine-tune settings: {e}")))?
    };
    settings.check().map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e))?;
    if settings.include_base && state.teaching.base_data.is_none() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "include_base needs the server's --finetune-base-csv, which is not set",
        ));
    }
    // Reserved before any file is written: a second start (a double click) is refused.
    state.teaching.reserve().map_err(|e| ApiError::new(ErrorCode::Conflict, e))?;
    let teaching = state.teaching.clone();
    let record = blocking(move || {
        let teaching = &state.teaching;
        let versions = versions(&state)?;
        let version = versions.next_name().map_err(internal)?;
        // A new folder, or none: a run never writes over another.
        std::fs::create_dir(versions.path(&version)).map_err(internal)?;
        let data = versions.path(&version).join("data");
        let examples =
            dataset(&state)?.snapshot(&data).map_err(|e| ApiError::new(ErrorCode::Conflict, format!("{e:#}")))?;
        let base_rows = match (&teaching.base_data, settings.include_base) {
            (Some((csv, images)), true) => append_base_rows(&data, csv, images).map_err(internal)?,
            _ => 0,
        };
        let started = super::finetune::now();
        let record = RunRecord::new(version, versions.active(), settings, (examples, base_rows), started);
        versions.save_record(&record).map_err(internal)?;
        teaching.queue(teaching.spec_of(&record, false), &record);
        Ok(record)
    })
    .await
    .inspect_err(|_| teaching.release())?;
    tracing::info!(version = %record.version, examples = record.examples, "fine-tune started");
    Ok((StatusCode::ACCEPTED, Json(record)))
}

/// Adds the base data set's rows to a run's CSV, its image paths made absolute.
fn append_base_rows(data: &std::path::Path, csv: &std::path::Path, images: &std::path::Path) -> anyhow::Result<usize> {
    use anyhow::Context;
    let images = std::fs::canonicalize(images).with_context(|| format!("cannot find {}", images.display()))?;
    let mut reader = csv::Reader::from_path(csv).with_context(|| format!("cannot read {}", csv.display()))?;
    let headers = reader.headers()?.clone();
    let path_column = headers.iter().position(|h| h == "path").context("the base CSV has no path column")?;
    let run_csv = data.join("food.csv");
    let mut writer = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(std::fs::OpenOptions::new().append(true).open(&run_csv)?);
    let mut rows = 0;
    for record in reader.records() {
        let record = record?;
        if record.len() != 7 || headers.len() != 7 {
            anyhow::bail!(
                "the base CSV must have the article's 7 columns (index, protein, fat, carbs, kcal, name, path)"
            );
        }
        let mut fields: Vec<String> = record.iter().map(String::from).collect();
        fields[path_column] = images.join(&fields[path_column]).to_string_lossy().into_owned();
        writer.write_record(&fields)?;
        rows += 1;
    }
    writer.flush()?;
    Ok(rows)
}

/// `GET /api/v1/finetune`
#[utoipa::path(get, path = "/api/v1/finetune", tag = "teaching", summary = "Every fine-tune's record (admin)",
    security(("admin_token" = [])),
    responses((status = 200, description = "The runs, oldest first", body = FinetuneList), (status = "4XX", description = "No token, or no versions", body = ErrorBody)))]
pub async fn list_finetunes(State(state): State<AppState>) -> Result<Json<FinetuneList>, ApiError> {
    versions(&state)?;
    let running = state.teaching.busy();
    blocking(move || {
        let versions = versions(&state)?;
        Ok(Json(FinetuneList { running, runs: versions.records().map_err(internal)?, active: versions.active() }))
    })
    .await
}

/// `POST /api/v1/finetune/cancel`: the run stops after its current step, with a
/// checkpoint to resume from.
#[utoipa::path(post, path = "/api/v1/finetune/cancel", tag = "teaching", summary = "Stop the running fine-tune after its current step, with a checkpoint (admin)",
    security(("admin_token" = [])),
    responses((status = 202, description = "It stops after its current step"), (status = "4XX", description = "No token, or nothing running", body = ErrorBody)))]
pub async fn cancel_finetune(State(state): State<AppState>) -> Result<StatusCode, ApiError> {
    match state.teaching.cancel() {
        true => Ok(StatusCode::ACCEPTED),
        false => Err(ApiError::new(ErrorCode::NotFound, "no fine-tune is running")),
    }
}

/// `POST /api/v1/finetune/resume`: continues the last cancelled run from its checkpoint.
#[utoipa::path(post, path = "/api/v1/finetune/resume", tag = "teaching", summary = "Continue the last cancelled fine-tune from its checkpoint (admin)",
    security(("admin_token" = [])),
    responses((status = 202, description = "Queued again", body = RunRecord), (status = "4XX", description = "No token, nothing to resume, a run already running", body = ErrorBody)))]
pub async fn resume_finetune(State(state): State<AppState>) -> Result<(StatusCode, Json<RunRecord>), ApiError> {
    if let Some(why) = state.teaching.unavailable() {
        return Err(ApiError::new(ErrorCode::NotFound, why));
    }
    state.teaching.reserve().map_err(|e| ApiError::new(ErrorCode::Conflict, e))?;
    let teaching = state.teaching.clone();
    blocking(move || {
        let versions = versions(&state)?;
        let records = versions.records().map_err(internal)?;
        let mut record = records
            .into_iter()
            .rev()
            .find(|r| r.status == RunStatus::Cancelled)
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no cancelled fine-tune to resume"))?;
        record.status = RunStatus::Running;
        record.error = None;
        versions.save_record(&record).map_err(internal)?;
        let spec = state.teaching.spec_of(&record, true);
        state.teaching.queue(spec, &record);
        Ok((StatusCode::ACCEPTED, Json(record)))
    })
    .await
    .inspect_err(|_| teaching.release())
}

/// `GET /api/v1/finetune/events`: server-sent events, one per step, epoch and change of
/// state (each a [`TeachEvent`]); the first is a snapshot of the latest run.
#[utoipa::path(get, path = "/api/v1/finetune/events", tag = "teaching", summary = "Fine-tune progress as server-sent events (admin)",
    security(("admin_token" = [])),
    responses((status = 200, description = "text/event-stream: a snapshot, then one event per step, epoch and change", content_type = "text/event-stream", body = TeachEvent), (status = "4XX", description = "No token", body = ErrorBody)))]
pub async fn finetune_events(State(state): State<AppState>) -> Result<Response, ApiError> {
    let versions_ok = versions(&state).is_ok();
    let receiver = state.teaching.subscribe();
    let latest = if versions_ok {
        let state = state.clone();
        blocking(move || Ok(versions(&state)?.records().map_err(internal)?.pop())).await?
    } else {
        None
    };
    let first = TeachEvent {
        kind: "snapshot".into(),
        run: latest,
        active: state.teaching.versions.as_ref().map(|v| v.active()).unwrap_or_default(),
    };
    let stream = futures::stream::unfold((Some(first), receiver), |(first, mut receiver)| async move {
        let event = match first {
            Some(first) => first,
            None => loop {
                match receiver.recv().await {
                    Ok(event) => break event,
                    // A slow reader skips steps; the next event carries the whole record.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            },
        };
        let sse = Event::default().event(event.kind.clone()).json_data(&event).unwrap_or_default();
        Some((Ok::<_, std::convert::Infallible>(sse), (None, receiver)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

/// `GET /api/v1/models`
#[utoipa::path(get, path = "/api/v1/models", tag = "teaching", summary = "The versions that can serve, and the one serving (admin)",
    security(("admin_token" = [])),
    responses((status = 200, description = "base and every finished fine-tune", body = ModelList), (status = "4XX", description = "No token, or no versions", body = ErrorBody)))]
pub async fn list_models(State(state): State<AppState>) -> Result<Json<ModelList>, ApiError> {
    versions(&state)?;
    blocking(move || {
        let versions = versions(&state)?;
        let runs = versions.records().map_err(internal)?;
        let list = std::iter::once(ModelVersion { name: BASE.into(), run: None })
            .chain(
                runs.into_iter()
                    .filter(|r| r.status == RunStatus::Finished)
                    .map(|r| ModelVersion { name: r.version.clone(), run: Some(r) }),
            )
            .collect();
        Ok(Json(ModelList { active: versions.active(), versions: list }))
    })
    .await
}

/// `POST /api/v1/models/{name}/promote`: every worker serves `name` from its next batch
/// on; answers once they all do.
#[utoipa::path(post, path = "/api/v1/models/{name}/promote", tag = "teaching", summary = "Serve a version from the next batch on, without a restart (admin)",
    security(("admin_token" = [])), params(("name" = String, Path, description = "`base` or a finished version, e.g. `v2`")),
    responses((status = 200, description = "Every worker serves it", body = ModelList), (status = "4XX", description = "No token, no such finished version", body = ErrorBody), (status = 500, description = "It could not be loaded; the old one still serves", body = ErrorBody)))]
pub async fn promote_model(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ModelList>, ApiError> {
    versions(&state)?;
    if !super::versions::valid_name(&name) {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("there is no version {}", borscht_protocol::clip(&name, 20)),
        ));
    }
    let change = {
        let state = state.clone();
        blocking(move || {
            versions(&state)?.promote(&name).map_err(|e| ApiError::new(ErrorCode::Conflict, format!("{e:#}")))
        })
        .await?
    };
    swapped(&state, change.generation).await?;
    state.teaching.announce("promoted", None);
    list_models(State(state)).await
}

/// `POST /api/v1/models/rollback`: serves the version promoted before the active one.
#[utoipa::path(post, path = "/api/v1/models/rollback", tag = "teaching", summary = "Serve the version promoted before the active one again (admin)",
    security(("admin_token" = [])),
    responses((status = 200, description = "Every worker serves it", body = ModelList), (status = "4XX", description = "No token, nothing to roll back to", body = ErrorBody)))]
pub async fn rollback_model(State(state): State<AppState>) -> Result<Json<ModelList>, ApiError> {
    versions(&state)?;
    let change = {
        let state = state.clone();
        blocking(move || versions(&state)?.rollback().map_err(|e| ApiError::new(ErrorCode::Conflict, format!("{e:#}"))))
            .await?
    };
    swapped(&state, change.generation).await?;
    state.teaching.announce("promoted", None);
    list_models(State(state)).await
}

/// Waits until every serving worker has swapped to `generation`; a worker that could
/// not load it turns the promotion back and names why.
async fn swapped(state: &AppState, generation: u64) -> Result<(), ApiError> {
    let deadline = tokio::time::Instant::now() + SWAP_TIMEOUT;
    loop {
        let serving: Vec<_> = state
            .worker
            .device_statuses()
            .into_iter()
            .zip(state.worker.loaded())
            .filter(|((_, status), _)| matches!(status, super::worker::ModelStatus::Ready { .. }))
            .map(|(_, loaded)| loaded)
            .collect();
        if let Some((_, why)) = serving.iter().find_map(|l| l.failed.as_ref().filter(|(g, _)| *g == generation)) {
            let why = why.clone();
            let state = state.clone();
            let _ = blocking(move || versions(&state)?.rollback().map_err(internal)).await;
            return Err(ApiError::new(ErrorCode::Internal, format!("the version could not be loaded: {why}")));
        }
        if serving.iter().all(|l| l.generation >= generation) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(ApiError::new(ErrorCode::Unavailable, "the workers did not swap in time; they will when free"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
