//! The capture screen: a live camera preview (rear camera preferred), "Take photo"
//! drawing the current frame into a canvas, and an upload button as the fallback
//! for browsers without a camera or when permission is denied (also drag and drop).
//! Every photo is drawn downscaled into the canvas and handed on as a data URL (JPEG,
//! or PNG for small pictures).

use leptos::html;
use leptos::prelude::*;
use leptos::task::spawn_local;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{CanvasRenderingContext2d, HtmlCanvasElement, HtmlImageElement, HtmlVideoElement, MediaStream};

use crate::i18n::{tr, use_lang, Lang};

/// Longest side of the picture sent; the model needs far less, phones give far more.
const MAX_SIDE: u32 = 512;
/// How long to wait for the first camera frame before giving up.
const FIRST_FRAME_TIMEOUT_MS: i32 = 8_000;

#[derive(Debug, Clone, PartialEq)]
enum CaptureState {
    Idle,
    StartingCamera,
    /// The browser decodes and scales a chosen picture (a large one takes a moment).
    Processing,
    Captured {
        width: u32,
        height: u32,
        source: &'static str,
    },
    Failed(String),
}

/// Pictures up to this side go as PNG: JPEG's 8x8 blocks blur a small picture (an icon)
/// enough to change what the model sees, and PNG costs little at that size.
const LOSSLESS_MAX_SIDE: u32 = 256;

/// The canvas as a data URL for sending: PNG for small pictures, JPEG for photos.
fn photo_data_url(canvas: &HtmlCanvasElement) -> Option<String> {
    let small = canvas.width().max(canvas.height()) <= LOSSLESS_MAX_SIDE;
    canvas.to_data_url_with_type(if small { "image/png" } else { "image/jpeg" }).ok()
}

#[component]
pub fn Camera(
    /// Gets each photo, as a data URL.
    #[prop(into)]
    on_photo: Callback<String>,
    /// Told when a new photo is being taken or read, before it is there (or fails), so
    /// the old photo's answer goes.
    #[prop(into)]
    on_attempt: Callback<()>,
) -> impl IntoView {
    let lang = use_lang();
    let video_ref = NodeRef::<html::Video>::new();
    let canvas_ref = NodeRef::<html::Canvas>::new();
    let (state, set_state) = signal(CaptureState::Idle);
    let (camera_on, set_camera_on) = signal(false);
    let rear = RwSignal::new(true);

    let take_photo = move |_| {
        let (Some(video), Some(canvas)) = (video_ref.get(), canvas_ref.get()) else { return };
        on_attempt.run(());
        set_state.set(CaptureState::StartingCamera);
        set_camera_on.set(true);
        let lang = lang.get_untracked();
        spawn_local(async move {
            match capture_from_camera(&video, &canvas, rear.get_untracked(), lang).await {
                Ok((width, height)) => {
                    set_camera_on.set(true);
                    set_state.set(CaptureState::Captured { width, height, source: "camera" });
                    if let Some(url) = photo_data_url(&canvas) {
                        on_photo.run(url);
                    }
                }
                Err(message) => {
                    // No picture came: release the camera (a hidden stream would keep its
                    // light on) and show the frame's hint again, not a black box.
                    stop_camera(&video);
                    set_camera_on.set(false);
                    set_state.set(CaptureState::Failed(message));
                }
            }
        });
    };

    let switch_camera = move |_| {
        rear.update(|r| *r = !*r);
        if let Some(video) = video_ref.get() {
            stop_camera(&video);
        }
        set_camera_on.set(false);
    };

    let show_file = move |file: web_sys::File| {
        let Some(canvas) = canvas_ref.get() else { return };
        let lang = lang.get_untracked();
        on_attempt.run(());
        set_state.set(CaptureState::Processing);
        spawn_local(async move {
            match draw_file(&file, &canvas, lang).await {
                Ok((width, height)) => {
                    set_state.set(CaptureState::Captured { width, height, source: "upload" });
                    if let Some(url) = photo_data_url(&canvas) {
                        on_photo.run(url);
                    }
                }
                Err(message) => set_state.set(CaptureState::Failed(message)),
            }
        });
    };

    let upload = move |event: web_sys::Event| {
        let input: web_sys::HtmlInputElement = event_target(&event);
        if let Some(file) = input.files().and_then(|files| files.get(0)) {
            show_file(file);
        }
        // Choosing the same file again must fire `change` again.
        input.set_value("");
    };
    let drop_file = move |event: web_sys::DragEvent| {
        event.prevent_default();
        if let Some(file) = event.data_transfer().and_then(|d| d.files()).and_then(|f| f.get(0)) {
            show_file(file);
        }
    };

    view! {
        <section class="capture" aria-labelledby="capture-title">
            <h2 id="capture-title">{move || tr(lang.get(), "Что у вас на тарелке?", "What's on your plate?")}</h2>
            <div
                class="viewfinder"
                class:idle=move || !camera_on.get() && !matches!(state.get(), CaptureState::Captured { .. })
                on:dragover=|e: web_sys::DragEvent| e.prevent_default()
                on:drop=drop_file
            >
                // Before the camera starts: what this empty frame is for, not a black box.
                <p id="viewfinder-hint" class="viewfinder-hint">
                    <img class="plate" src="/icon.svg" alt="" width="64" height="64" />
                    {move || tr(lang.get(), "Здесь появятся камера и ваш снимок.", "Your camera and photo will show here.")}
                </p>
                <video
                    id="camera-preview"
                    node_ref=video_ref
                    autoplay=true
                    muted=true
                    playsinline=true
                    aria-label=move || tr(lang.get(), "Видоискатель камеры", "Camera preview")
                    class:hidden=move || !camera_on.get() || matches!(state.get(), CaptureState::Captured { .. })
                ></video>
                <canvas
                    id="photo-canvas"
                    node_ref=canvas_ref
                    aria-label=move || tr(lang.get(), "Снимок блюда", "Captured photo")
                    class:hidden=move || !matches!(state.get(), CaptureState::Captured { .. })
                ></canvas>
            </div>
            <div class="capture-actions">
                <button
                    id="take-photo"
                    class="primary"
                    on:click=take_photo
                    disabled=move || matches!(state.get(), CaptureState::StartingCamera | CaptureState::Processing)
                >
                    {move || tr(lang.get(), "Сфотографировать", "Take photo")}
                </button>
                <button
                    id="switch-camera"
                    class="secondary"
                    on:click=switch_camera
                    aria-label=move || tr(lang.get(), "Переключить камеру", "Switch camera")
                >
                    {move || tr(lang.get(), "⟲ Камера", "⟲ Camera")}
                </button>
                <input
                    id="upload-photo"
                    class="visually-hidden"
                    type="file"
                    accept="image/*"
                    capture="environment"
                    on:change=upload
                />
                <label class="button secondary" for="upload-photo">
                    {move || tr(lang.get(), "Загрузить фото", "Upload a photo")}
                </label>
            </div>
            <p id="capture-status" class="capture-status" role="status" aria-live="polite" data-state=move || match state.get() {
                CaptureState::Idle => "idle",
                CaptureState::StartingCamera => "starting",
                CaptureState::Processing => "processing",
                CaptureState::Captured { .. } => "captured",
                CaptureState::Failed(_) => "failed",
            }>
                {move || match (state.get(), lang.get()) {
                    (CaptureState::Idle, lang) => tr(lang, "Сфотографируйте блюдо или загрузите снимок (можно перетащить).", "Take a photo of your meal or upload one (drag and drop works too).").to_string(),
                    (CaptureState::StartingCamera, lang) => tr(lang, "Включаем камеру…", "Starting the camera…").to_string(),
                    (CaptureState::Processing, lang) => tr(lang, "Обрабатываем снимок…", "Processing the photo…").to_string(),
                    (CaptureState::Captured { width, height, source }, Lang::Ru) => format!("Снимок готов ({width}×{height}, {}).", if source == "camera" { "камера" } else { "файл" }),
                    (CaptureState::Captured { width, height, source }, Lang::En) => format!("Photo ready ({width}×{height}, from {source})."),
                    (CaptureState::Failed(message), _) => message,
                }}
            </p>
        </section>
    }
}

/// Starts the camera if needed, waits for a frame and draws it into `canvas`.
async fn capture_from_camera(
    video: &HtmlVideoElement,
    canvas: &HtmlCanvasElement,
    rear: bool,
    lang: Lang,
) -> Result<(u32, u32), String> {
    if video.src_object().is_none() {
        let stream = open_camera(rear, lang).await?;
        video.set_src_object(Some(&stream));
    }
    // play() may reject if the element is already playing; the frame wait below decides.
    if let Ok(promise) = video.play() {
        let _ = JsFuture::from(promise).await;
    }
    let mut waited = 0;
    while video.video_width() == 0 || video.ready_state() < 2 {
        if waited >= FIRST_FRAME_TIMEOUT_MS {
            return Err(tr(
                lang,
                "Камера не прислала изображение. Попробуйте ещё раз или загрузите фото.",
                "The camera sent no picture. Try again, or upload a photo instead.",
            )
            .into());
        }
        sleep_ms(50).await;
        waited += 50;
    }
    let (width, height) = fit(video.video_width(), video.video_height());
    canvas.set_width(width);
    canvas.set_height(height);
    context_2d(canvas)?
        .draw_image_with_html_video_element_and_dw_and_dh(video, 0.0, 0.0, width as f64, height as f64)
        .map_err(|e| format!("Could not draw the camera frame: {}", js_error(&e)))?;
    Ok((width, height))
}

/// Stops the preview's camera (so another one can be opened).
fn stop_camera(video: &HtmlVideoElement) {
    if let Some(stream) = video.src_object().and_then(|s| s.dyn_into::<MediaStream>().ok()) {
        for track in stream.get_tracks().iter() {
            if let Ok(track) = track.dyn_into::<web_sys::MediaStreamTrack>() {
                track.stop();
            }
        }
    }
    video.set_src_object(None);
}

async fn open_camera(rear: bool, lang: Lang) -> Result<MediaStream, String> {
    let devices = web_sys::window().and_then(|w| w.navigator().media_devices().ok()).ok_or(tr(
        lang,
        "Этот браузер не даёт доступа к камере — загрузите фото.",
        "This browser offers no camera access; upload a photo instead.",
    ))?;
    // {video: {facingMode: {ideal: "environment"}}, audio: false}: prefer the rear camera
    // but accept any (laptops only have a front one).
    let facing = js_sys::Object::new();
    let mode = if rear { "environment" } else { "user" };
    js_sys::Reflect::set(&facing, &"ideal".into(), &mode.into()).map_err(|e| js_error(&e))?;
    let video = js_sys::Object::new();
    js_sys::Reflect::set(&video, &"facingMode".into(), &facing).map_err(|e| js_error(&e))?;
    let constraints = web_sys::MediaStreamConstraints::new();
    constraints.set_video(&video);
    constraints.set_audio(&false.into());
    let promise = devices.get_user_media_with_constraints(&constraints).map_err(|e| js_error(&e))?;
    match JsFuture::from(promise).await {
        Ok(stream) => Ok(stream.unchecked_into()),
        Err(e) => Err(camera_error_message(&e, lang)),
    }
}

fn camera_error_message(error: &JsValue, lang: Lang) -> String {
    let name = error.dyn_ref::<web_sys::DomException>().map(|e| e.name()).unwrap_or_default();
    match name.as_str() {
        "NotAllowedError" | "SecurityError" => tr(
            lang,
            "Доступ к камере запрещён. Разрешите камеру в настройках браузера или загрузите фото.",
            "Camera access was denied. Allow the camera in your browser settings, or upload a photo instead.",
        )
        .into(),
        "NotFoundError" | "OverconstrainedError" => {
            tr(lang, "Камера не найдена — загрузите фото.", "No camera was found; upload a photo instead.").into()
        }
        "NotReadableError" => tr(
            lang,
            "Камера занята другим приложением — закройте его или загрузите фото.",
            "The camera is busy in another app; close it or upload a photo instead.",
        )
        .into(),
        _ => format!(
            "{} ({})",
            tr(lang, "Камера не включилась — загрузите фото", "The camera could not start; upload a photo instead"),
            js_error(error)
        ),
    }
}

/// Decodes an uploaded file with the browser's decoder and draws it into `canvas`.
async fn draw_file(file: &web_sys::File, canvas: &HtmlCanvasElement, lang: Lang) -> Result<(u32, u32), String> {
    if !file.type_().starts_with("image/") {
        return Err(format!(
            "“{}” {}",
            file.name(),
            tr(
                lang,
                "— не картинка; выберите фото (JPEG, PNG, WebP…).",
                "is not an image; choose a photo (JPEG, PNG, WebP…)."
            )
        ));
    }
    let url = web_sys::Url::create_object_url_with_blob(file).map_err(|e| js_error(&e))?;
    let image = HtmlImageElement::new().map_err(|e| js_error(&e))?;
    image.set_src(&url);
    let decoded = JsFuture::from(image.decode()).await;
    let _ = web_sys::Url::revoke_object_url(&url);
    decoded.map_err(|_| {
        format!("“{}” {}", file.name(), tr(lang, "не читается как картинка.", "could not be read as an image."))
    })?;
    let (width, height) = fit(image.natural_width(), image.natural_height());
    canvas.set_width(width);
    canvas.set_height(height);
    context_2d(canvas)?
        .draw_image_with_html_image_element_and_dw_and_dh(&image, 0.0, 0.0, width as f64, height as f64)
        .map_err(|e| format!("Could not draw the photo: {}", js_error(&e)))?;
    Ok((width, height))
}

/// Scales (w, h) down so the longer side is at most [`MAX_SIDE`], keeping the aspect ratio.
fn fit(width: u32, height: u32) -> (u32, u32) {
    let longest = width.max(height).max(1);
    if longest <= MAX_SIDE {
        return (width, height);
    }
    let scale = MAX_SIDE as f64 / longest as f64;
    (((width as f64 * scale).round() as u32).max(1), ((height as f64 * scale).round() as u32).max(1))
}

fn context_2d(canvas: &HtmlCanvasElement) -> Result<CanvasRenderingContext2d, String> {
    canvas
        .get_context("2d")
        .ok()
        .flatten()
        .and_then(|c| c.dyn_into().ok())
        .ok_or_else(|| "This browser cannot draw on a canvas.".to_string())
}

async fn sleep_ms(ms: i32) {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        if let Some(window) = web_sys::window() {
            let _ = window.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
        }
    });
    let _ = JsFuture::from(promise).await;
}

fn js_error(error: &JsValue) -> String {
    error
        .dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| error.as_string())
        .unwrap_or_else(|| format!("{error:?}"))
}
