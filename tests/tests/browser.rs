//! The web app in a real headless Chromium against the real server.

use anyhow::{ensure, Result};
use borscht_e2e::{
    repo_root, screenshot, start_server, still_to_y4m, wait_for, wait_for_state, with_browser, BrowserOptions,
};
use fantoccini::{Client, Locator};
use image::RgbImage;
use std::time::Duration;

/// Relative positions sampled on the canvas: the centre of each quadrant of the test card.
const SAMPLE_POINTS: [(f64, f64); 4] = [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)];
/// Per-channel slack for the camera path (YUV 4:2:0 round trip and scaling).
const TOLERANCE: i32 = 40;

fn test_card() -> RgbImage {
    image::open(repo_root().join("tests/fixtures/camera-test-card.png")).expect("committed test card").to_rgb8()
}

/// Reads the canvas' size and the RGBA values at [`SAMPLE_POINTS`].
async fn canvas_samples(client: &Client) -> Result<(u64, u64, Vec<[i32; 4]>)> {
    let script = r#"
        const c = document.getElementById('photo-canvas');
        const ctx = c.getContext('2d');
        const px = arguments[0].map(([fx, fy]) =>
            Array.from(ctx.getImageData(Math.floor(fx * c.width), Math.floor(fy * c.height), 1, 1).data));
        return [c.width, c.height, px];
    "#;
    let points = serde_json::to_value(SAMPLE_POINTS)?;
    let value = client.execute(script, vec![points]).await?;
    let width = value[0].as_u64().unwrap_or(0);
    let height = value[1].as_u64().unwrap_or(0);
    let pixels = value[2]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|p| {
                    let c = |i: usize| p[i].as_i64().unwrap_or(-1) as i32;
                    [c(0), c(1), c(2), c(3)]
                })
                .collect()
        })
        .unwrap_or_default();
    Ok((width, height, pixels))
}

/// Asserts the canvas shows `expected` (compared at the sample points).
async fn assert_canvas_shows(client: &Client, expected: &RgbImage) -> Result<()> {
    let (width, height, pixels) = canvas_samples(client).await?;
    ensure!(width > 0 && height > 0, "canvas has no size ({width}x{height})");
    ensure!(
        (width * expected.height() as u64).abs_diff(height * expected.width() as u64) <= width.max(height),
        "canvas {width}x{height} does not keep the picture's aspect ratio {}x{}",
        expected.width(),
        expected.height()
    );
    for ((fx, fy), got) in SAMPLE_POINTS.iter().zip(&pixels) {
        let want = expected.get_pixel((fx * expected.width() as f64) as u32, (fy * expected.height() as f64) as u32);
        let close = (0..3).all(|i| (got[i] - want[i] as i32).abs() <= TOLERANCE) && got[3] == 255;
        ensure!(close, "canvas pixel at ({fx}, {fy}) is {got:?}, expected about {:?} (opaque)", want.0);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn take_photo_with_fake_camera_then_upload() {
    let server = start_server().await;
    let clip_dir = tempfile::tempdir().unwrap();
    let clip = clip_dir.path().join("camera.y4m");
    still_to_y4m(&repo_root().join("tests/fixtures/camera-test-card.png"), &clip).unwrap();

    let options = BrowserOptions { fake_camera: Some(clip), ..Default::default() };
    with_browser(options, |client| async move {
        client.goto(&format!("http://{server}/")).await?;

        // The WebSocket handshake (server hello with our protocol version) shows as "connected".
        wait_for_state(&client, "#connection-status", "connected", Duration::from_secs(20)).await?;
        let status = client.find(Locator::Css("#connection-status")).await?.text().await?;
        ensure!(status.contains("Connected"), "connection status reads {status:?}");

        // Before any capture the canvas is blank, so the pixel check below can fail.
        let (_, _, blank) = canvas_samples(&client).await?;
        ensure!(blank.iter().all(|p| p[3] == 0), "canvas should start transparent, got {blank:?}");

        client.find(Locator::Css("#take-photo")).await?.click().await?;
        wait_for_state(&client, "#capture-status", "captured", Duration::from_secs(20)).await?;
        assert_canvas_shows(&client, &test_card()).await?;
        screenshot(&client, "capture-camera").await?;

        // Upload fallback: a mirrored card replaces the camera frame.
        let mirrored = image::imageops::flip_horizontal(&test_card());
        let upload_dir = tempfile::tempdir()?;
        let upload = upload_dir.path().join("meal.png");
        mirrored.save(&upload)?;
        client.find(Locator::Css("#upload-photo")).await?.send_keys(&upload.display().to_string()).await?;
        wait_for(
            &client,
            "the uploaded photo",
            Duration::from_secs(20),
            "const e = document.getElementById('capture-status'); return [e.dataset.state, e.textContent];",
            |v| (v[0] == "captured" && v[1].as_str().is_some_and(|t| t.contains("upload"))).then_some(()),
        )
        .await?;
        assert_canvas_shows(&client, &mirrored).await?;
        screenshot(&client, "capture-upload").await?;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_camera_explains_and_offers_upload() {
    let server = start_server().await;
    let options = BrowserOptions { deny_camera: true, ..Default::default() };
    with_browser(options, |client| async move {
        client.goto(&format!("http://{server}/")).await?;
        client.find(Locator::Css("#take-photo")).await?.click().await?;
        wait_for_state(&client, "#capture-status", "failed", Duration::from_secs(20)).await?;
        let message = client.find(Locator::Css("#capture-status")).await?.text().await?;
        ensure!(message.contains("denied") && message.contains("upload"), "message was {message:?}");
        let (_, _, pixels) = canvas_samples(&client).await?;
        ensure!(pixels.iter().all(|p| p[3] == 0), "nothing may be drawn without a camera, got {pixels:?}");
        screenshot(&client, "capture-denied").await?;
        Ok(())
    })
    .await;
}
