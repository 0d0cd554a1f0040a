//! The web app in a real headless Chromium against the real server.

use anyhow::{ensure, Result};
use borscht_e2e::{
    assert_no_csp_violations, repo_root, screenshot, start_server, still_to_y4m, wait_for, wait_for_state,
    with_browser, BrowserOptions,
};
use fantoccini::{Client, Locator};
use image::RgbImage;
use std::path::PathBuf;
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
        client.goto(&format!("http://{server}/?lang=en")).await?;

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
        client.goto(&format!("http://{server}/?lang=en")).await?;
        // The page loads before the app has drawn its buttons.
        client.wait().for_element(Locator::Css("#take-photo")).await?.click().await?;
        wait_for_state(&client, "#capture-status", "failed", Duration::from_secs(20)).await?;
        let message = client.find(Locator::Css("#capture-status")).await?.text().await?;
        ensure!(message.contains("denied") && message.contains("upload"), "message was {message:?}");
        // The same message in Russian, the default language.
        client.find(Locator::Css("#lang-switch")).await?.click().await?;
        client.find(Locator::Css("#take-photo")).await?.click().await?;
        wait_for(
            &client,
            "the Russian message",
            Duration::from_secs(20),
            "return document.getElementById('capture-status').textContent;",
            |v| v.as_str().is_some_and(|t| t.contains("запрещён") && t.contains("загрузите")).then_some(()),
        )
        .await?;
        let (_, _, pixels) = canvas_samples(&client).await?;
        ensure!(pixels.iter().all(|p| p[3] == 0), "nothing may be drawn without a camera, got {pixels:?}");
        // The empty frame says what it is for instead of staying a black box.
        let hint = client.find(Locator::Css("#viewfinder-hint")).await?;
        ensure!(hint.is_displayed().await?, "the viewfinder's hint shows again after the failure");
        ensure!(!client.find(Locator::Css("#camera-preview")).await?.is_displayed().await?, "no dead preview");
        screenshot(&client, "capture-denied").await?;
        Ok(())
    })
    .await;
}

/// The committed food icon the tests show the app, and its row in the demo table.
const ICON: &str = "images/twemoji/1f355-0.png";

struct Truth {
    dish: String,
    kcal: f64,
}

fn icon_path() -> PathBuf {
    repo_root().join("data/demo").join(ICON)
}

/// The icon's dish and kcal from data/demo/food.csv (never typed into the test).
fn truth() -> Truth {
    let table = std::fs::read_to_string(repo_root().join("data/demo/food.csv")).unwrap();
    let row: Vec<&str> =
        table.lines().find(|l| l.ends_with(ICON)).expect("the icon is in the table").split(',').collect();
    Truth { dish: row[5].to_string(), kcal: row[4].parse().unwrap() }
}

/// Waits for the result card and returns the dish it names.
async fn result_dish(client: &Client) -> Result<String> {
    wait_for(
        client,
        "the result card",
        Duration::from_secs(90),
        "const c = document.getElementById('result-card'); return c ? c.dataset.dish : null;",
        |v| v.as_str().filter(|d| !d.is_empty()).map(str::to_string),
    )
    .await
}

/// Waits until `script` returns a number (as text) and gives it.
async fn wait_for_number(client: &Client, what: &str, script: &str) -> Result<f64> {
    wait_for(client, what, Duration::from_secs(10), script, |v| v.as_str().and_then(|s| s.parse::<f64>().ok())).await
}

async fn upload(client: &Client, path: &std::path::Path) -> Result<()> {
    client.find(Locator::Css("#upload-photo")).await?.send_keys(&path.display().to_string()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snap_a_food_icon_then_scale_the_portion_and_save() {
    let server = start_server().await;
    let clip_dir = tempfile::tempdir().unwrap();
    let clip = clip_dir.path().join("icon.y4m");
    still_to_y4m(&icon_path(), &clip).unwrap();
    let options = BrowserOptions { fake_camera: Some(clip), ..Default::default() };
    with_browser(options, |client| async move {
        let truth = truth();
        client.goto(&format!("http://{server}/")).await?;
        wait_for_state(&client, "#connection-status", "connected", Duration::from_secs(20)).await?;
        client.find(Locator::Css("#take-photo")).await?.click().await?;
        // Candidates stream in before the card.
        wait_for(
            &client,
            "streamed candidates",
            Duration::from_secs(90),
            "const r = document.getElementById('recognition'); return [r.dataset.phase, document.querySelectorAll('#candidates li').length];",
            |v| (v[0] == "done" || v[1].as_u64().unwrap_or(0) > 0).then_some(()),
        )
        .await?;
        let dish = result_dish(&client).await?;
        screenshot(&client, "snap-result").await?;
        ensure!(dish == truth.dish, "the app says {dish:?}, the table {:?}", truth.dish);
        let kcal: f64 = client
            .execute("return document.querySelector('.value-input[data-field=kcal]').value;", vec![])
            .await?
            .as_str()
            .unwrap_or("")
            .parse()?;
        ensure!((kcal - truth.kcal).abs() <= 0.15 * truth.kcal, "kcal {kcal} vs the table's {}", truth.kcal);

        // Portion: the 250 g preset scales the numbers shown.
        client.find(Locator::XPath("//div[@class='presets']/button[3]")).await?.click().await?;
        let shown =
            wait_for_number(&client, "the 250 g portion", "return document.getElementById('portion-values').dataset.kcal;")
                .await?;
        ensure!((shown - kcal * 2.5).abs() < 0.6, "250 g shows {shown} kcal for {kcal} per 100 g");
        screenshot(&client, "result-portion").await?;

        // Save, and the history shows today's total.
        client.find(Locator::Css("#save-meal")).await?.click().await?;
        client.find(Locator::Css("#tab-history")).await?.click().await?;
        let total = wait_for_number(
            &client,
            "the daily total",
            "const t = document.querySelector('.day-total'); return t ? t.dataset.kcal : null;",
        )
        .await?;
        ensure!((total - shown).abs() < 1.0, "today's total {total} vs the saved {shown}");
        screenshot(&client, "history").await?;
        // A meal saved by mistake goes on its own, and stays gone after a reload.
        client.find(Locator::Css(".remove-meal")).await?.click().await?;
        client.refresh().await?;
        client.wait().for_element(Locator::Css("#tab-history")).await?.click().await?;
        let left = client
            .execute(
                "return [document.querySelectorAll('.day').length, getComputedStyle(document.getElementById('history-empty')).display];",
                vec![],
            )
            .await?;
        ensure!(left == serde_json::json!([0, "block"]), "after removing the one meal: {left}");
        Ok(())
    })
    .await;
    // Everything above ran under the server's Content-Security-Policy.
    assert_no_csp_violations(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_then_ask_which_dish_then_draw_one() {
    let server = start_server().await;
    with_browser(BrowserOptions { window: Some((1280, 900)), ..Default::default() }, |client| async move {
        let truth = truth();
        client.goto(&format!("http://{server}/?lang=en")).await?;
        wait_for_state(&client, "#connection-status", "connected", Duration::from_secs(20)).await?;
        upload(&client, &icon_path()).await?;
        let dish = result_dish(&client).await?;
        ensure!(dish == truth.dish, "upload: the app says {dish:?}, the table {:?}", truth.dish);
        screenshot(&client, "upload-result").await?;

        // Zero-shot among dishes the person lists.
        client.find(Locator::Css("#tab-which")).await?.click().await?;
        let list = client.find(Locator::Css("#dish-list")).await?;
        list.clear().await?;
        list.send_keys(&format!("банан, {}, рис, огурец", truth.dish)).await?;
        client.find(Locator::Css("#classify")).await?.click().await?;
        let label = wait_for(
            &client,
            "the zero-shot answer",
            Duration::from_secs(60),
            "const a = document.getElementById('classification'); return a ? a.dataset.label : null;",
            |v| v.as_str().map(str::to_string),
        )
        .await?;
        ensure!(label == truth.dish, "zero-shot chose {label:?}, not {:?}", truth.dish);
        // The ranking: the answer first at full fit, down to the worst dish at none.
        let ranking = client
            .execute(
                "return [...document.querySelectorAll('.ranking li')].map(li => [li.querySelector('span').textContent, li.dataset.fit]);",
                vec![],
            )
            .await?;
        let ranking: Vec<(String, String)> = serde_json::from_value(ranking)?;
        ensure!(ranking.len() == 4, "four dishes ranked: {ranking:?}");
        ensure!(ranking[0] == (truth.dish.clone(), "1.000".into()), "the answer leads: {ranking:?}");
        ensure!(ranking[3].1 == "0.000", "the worst fit last: {ranking:?}");
        screenshot(&client, "which-dish").await?;

        // Text to dish. A name in Latin letters, which the model cannot spell, is refused
        // with the characters named.
        client.find(Locator::Css("#tab-draw")).await?.click().await?;
        let text = client.find(Locator::Css("#draw-text")).await?;
        text.clear().await?;
        text.send_keys("pizza").await?;
        client.find(Locator::Css("#draw-button")).await?.click().await?;
        wait_for(
            &client,
            "the unknown-characters message",
            Duration::from_secs(30),
            "return document.querySelector('.draw .status-line').textContent;",
            |v| v.as_str().is_some_and(|t| t.contains("Russian") && t.contains("p i z a")).then_some(()),
        )
        .await?;
        // Two variants chosen, previews, then the final pictures.
        text.clear().await?;
        text.send_keys(&truth.dish).await?;
        client.find(Locator::XPath("//button[contains(@class, 'variants') and normalize-space() = '2']")).await?.click().await?;
        client.find(Locator::Css("#draw-button")).await?.click().await?;
        let widths = wait_for(
            &client,
            "the drawn pictures",
            Duration::from_secs(90),
            "const all = [...document.querySelectorAll('.drawn-image')];
             return all.length && all.every(i => i.dataset.done === 'true' && i.complete) ? all.map(i => i.naturalWidth) : null;",
            |v| serde_json::from_value::<Vec<u64>>(v.clone()).ok(),
        )
        .await?;
        ensure!(widths == [64, 64], "two pictures of 64 px, got widths {widths:?}");
        let downloads = client
            .execute("return [...document.querySelectorAll('.drawing a')].map(a => a.getAttribute('download'));", vec![])
            .await?;
        ensure!(downloads == serde_json::json!(["borscht-dish-1.png", "borscht-dish-2.png"]), "{downloads}");
        screenshot(&client, "draw").await?;
        Ok(())
    })
    .await;
    // Everything above ran under the server's Content-Security-Policy.
    assert_no_csp_violations(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_widget_on_a_host_page_posts_its_result() {
    let server = start_server().await;
    with_browser(BrowserOptions::default(), |client| async move {
        let truth = truth();
        client.goto(&format!("http://{server}/embed-example.html")).await?;
        let frame = client.wait().for_element(Locator::Css("#widget iframe")).await?;
        frame.enter_frame().await?;
        wait_for_state(&client, "#connection-status", "connected", Duration::from_secs(20)).await?;
        upload(&client, &icon_path()).await?;
        result_dish(&client).await?;
        client.clone().enter_parent_frame().await?;
        let posted = wait_for(
            &client,
            "the host page to hear the result",
            Duration::from_secs(30),
            "return document.getElementById('last-result').dataset.dish || null;",
            |v| v.as_str().map(str::to_string),
        )
        .await?;
        ensure!(posted == truth.dish, "the host page got {posted:?}");
        screenshot(&client, "widget-host-page").await?;
        Ok(())
    })
    .await;
    // Everything above ran under the server's Content-Security-Policy.
    assert_no_csp_violations(server);
}
