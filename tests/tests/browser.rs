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

        // The WebSocket handshake (server hello with our protocol version) shows as a plain
        // "online"; the server's version only on hover.
        wait_for_state(&client, "#connection-status", "connected", Duration::from_secs(20)).await?;
        let status = client.find(Locator::Css("#connection-status")).await?;
        let (text, title) = (status.text().await?, status.attr("title").await?.unwrap_or_default());
        ensure!(text == "Online" && title.starts_with("borscht/"), "connection status {text:?}, title {title:?}");

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
        // Counts the candidates shown before the answer is done, however quickly it comes.
        client
            .execute(
                "window.streamedBeforeDone = 0; new MutationObserver(() => { \
                   const r = document.getElementById('recognition'); \
                   if (r && r.dataset.phase !== 'done') window.streamedBeforeDone = Math.max(window.streamedBeforeDone, \
                     document.querySelectorAll('#candidates li').length); \
                 }).observe(document.body, { subtree: true, childList: true, attributes: true });",
                vec![],
            )
            .await?;
        client.find(Locator::Css("#take-photo")).await?.click().await?;
        let dish = result_dish(&client).await?;
        // Candidates streamed in before the card.
        let streamed = client.execute("return window.streamedBeforeDone;", vec![]).await?.as_u64().unwrap_or(0);
        ensure!(streamed > 0, "no candidate was shown before the answer");
        screenshot(&client, "snap-result").await?;
        ensure!(dish == truth.dish, "the app says {dish:?}, the table {:?}", truth.dish);
        let kcal: f64 = client
            .execute("return document.querySelector('.value-input[data-field=kcal]').value;", vec![])
            .await?
            .as_str()
            .unwrap_or("")
            .parse()?;
        ensure!((kcal - truth.kcal).abs() <= 0.15 * truth.kcal, "kcal {kcal} vs the table's {}", truth.kcal);

        // The calorie check reads the card's own numbers as 4P + 9F + 4C.
        let values = client
            .execute(
                "return ['protein', 'fat', 'carbs', 'kcal'].map(f => \
                   parseFloat(document.querySelector(`.value-input[data-field=${f}]`).value));",
                vec![],
            )
            .await?;
        let number = |i: usize| values[i].as_f64().unwrap_or(f64::NAN);
        let expected = 4.0 * number(0) + 9.0 * number(1) + 4.0 * number(2);
        let line = client.find(Locator::Css("#atwater")).await?.text().await?;
        ensure!(line.contains(&format!("= {expected:.0} ккал")), "the check {line:?} for {expected:.0} kcal");
        let consistent = (number(3) - expected).abs() <= (0.15 * expected).max(10.0);
        let shown = client.find(Locator::Css("#atwater")).await?.attr("data-consistent").await?;
        ensure!(shown.as_deref() == Some(&consistent.to_string()), "consistent {consistent}, the card {shown:?}");
        // Numbers that cannot be right are called so.
        let kcal_input = client.find(Locator::Css(".value-input[data-field=kcal]")).await?;
        kcal_input.clear().await?;
        kcal_input.send_keys(&format!("{:.0}", expected * 2.0 + 50.0)).await?;
        wait_for(
            &client,
            "the failed calorie check",
            Duration::from_secs(10),
            "const a = document.getElementById('atwater'); return [a.dataset.consistent, a.textContent];",
            |v| (v[0] == "false" && v[1].as_str().is_some_and(|t| t.contains("не сходится"))).then_some(()),
        )
        .await?;
        kcal_input.clear().await?;
        kcal_input.send_keys(&format!("{kcal}")).await?;

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
                "return [...document.querySelectorAll('.ranking li')].map(li => [li.dataset.dish, li.dataset.fit]);",
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

/// The card's verdict once it is there.
async fn result_verdict(client: &Client) -> Result<String> {
    wait_for(
        client,
        "the result card's verdict",
        Duration::from_secs(90),
        "const c = document.getElementById('result-card'); return c ? c.dataset.verdict : null;",
        |v| v.as_str().map(str::to_string),
    )
    .await
}

/// On a phone: a photo of a cat is "not food" (nothing to save); a picture the browser
/// cannot read clears the old card; grams are checked (1 to 5000); the dish shows its
/// English name and the answer its probability; the page's title follows the language.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_answers_on_a_phone() {
    let server = start_server().await;
    with_browser(BrowserOptions { window: Some((390, 844)), ..Default::default() }, |client| async move {
        let truth = truth();
        client.goto(&format!("http://{server}/?lang=en")).await?;
        wait_for_state(&client, "#connection-status", "connected", Duration::from_secs(20)).await?;
        ensure!(client.title().await? == "Borscht — what's on your plate?", "title {:?}", client.title().await?);

        // A cat (kept apart from the calibration's photos): not food, nothing to save.
        upload(&client, &repo_root().join("data/non-food/test/chelsea.jpg")).await?;
        ensure!(result_verdict(&client).await? == "not_food", "a cat is not food");
        let card = client.find(Locator::Css("#result-card")).await?.text().await?;
        ensure!(card.contains("not look like food"), "the card says {card:?}");
        ensure!(client.find_all(Locator::Css("#save-meal")).await?.is_empty(), "nothing to save for a cat");
        screenshot(&client, "not-food").await?;

        // A dish: its English name, the probability it is right, the card in view.
        upload(&client, &icon_path()).await?;
        ensure!(result_dish(&client).await? == truth.dish);
        ensure!(result_verdict(&client).await? == "dish");
        let heading = client.find(Locator::Css("#result-dish")).await?.text().await?;
        ensure!(heading.to_lowercase() == "pizza", "the dish in English: {heading:?}");
        let confidence = client.find(Locator::Css("#result-confidence")).await?.text().await?;
        ensure!(confidence.starts_with("probability it is right:"), "{confidence:?}");
        let in_view = wait_for(
            &client,
            "the card scrolled into view",
            Duration::from_secs(5),
            "const r = document.getElementById('result-card').getBoundingClientRect(); return r.top >= -1 && r.top < innerHeight ? true : null;",
            |v| v.as_bool(),
        )
        .await?;
        ensure!(in_view);

        // Grams out of range are refused, with a reason, and the meal cannot be saved then.
        let grams = client.find(Locator::Css("#portion-grams")).await?;
        for (typed, reason) in [("6000", "at most 5000"), ("0", "at least 1"), ("", "Enter the portion")] {
            grams.clear().await?;
            if !typed.is_empty() {
                grams.send_keys(typed).await?;
            } else {
                // Clearing a number field fires no input event: type and delete.
                grams.send_keys("5\u{E003}").await?;
            }
            let error = wait_for(
                &client,
                "the grams message",
                Duration::from_secs(5),
                "const e = document.getElementById('portion-error'); return e.classList.contains('hidden') ? null : e.textContent;",
                |v| v.as_str().map(str::to_string),
            )
            .await?;
            ensure!(error.contains(reason), "{typed:?} gives {error:?}");
            ensure!(!client.find(Locator::Css("#save-meal")).await?.is_enabled().await?, "saving {typed:?} g");
        }
        grams.clear().await?;
        grams.send_keys("250").await?;
        ensure!(client.find(Locator::Css("#save-meal")).await?.is_enabled().await?);
        ensure!(client.find(Locator::Css("#portion-error")).await?.attr("class").await?.unwrap_or_default().contains("hidden"));

        // A file the browser cannot read: the old dish goes with it.
        let dir = tempfile::tempdir()?;
        let not_a_picture = dir.path().join("notes.txt");
        std::fs::write(&not_a_picture, "not a picture")?;
        upload(&client, &not_a_picture).await?;
        wait_for_state(&client, "#capture-status", "failed", Duration::from_secs(10)).await?;
        ensure!(client.find_all(Locator::Css("#result-card")).await?.is_empty(), "the old card stayed");
        screenshot(&client, "phone-after-bad-file").await?;

        // In Russian, the title follows.
        client.find(Locator::Css("#lang-switch")).await?.click().await?;
        ensure!(client.title().await? == "Borscht — что у вас на тарелке?", "title {:?}", client.title().await?);
        Ok(())
    })
    .await;
    assert_no_csp_violations(server);
}

/// Tabs by keyboard (arrow keys, Home, End, WAI-ARIA's roles), the known dishes in Which
/// dish? (its photo shown, "none of these" for a photo none fits), a server error in the
/// page's language, and drawings that can be drawn again from their number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tabs_by_keyboard_known_dishes_and_repeatable_drawings() {
    let server = start_server().await;
    with_browser(BrowserOptions { window: Some((1280, 900)), ..Default::default() }, |client| async move {
        client.goto(&format!("http://{server}/")).await?;
        wait_for_state(&client, "#connection-status", "connected", Duration::from_secs(20)).await?;
        let roles = client
            .execute(
                "return [document.querySelector('.tabs').getAttribute('role'),
                         [...document.querySelectorAll('[role=tab]')].map(t => [t.id, t.getAttribute('aria-controls'), document.getElementById(t.getAttribute('aria-controls')).getAttribute('role')])];",
                vec![],
            )
            .await?;
        ensure!(roles[0] == "tablist" && roles[1].as_array().map(Vec::len) == Some(4), "{roles}");
        ensure!(roles[1].as_array().unwrap().iter().all(|t| t[2] == "tabpanel"), "{roles}");
        let focused_tab = "return [document.activeElement.id, document.querySelector('[aria-selected=true]').id];";
        client.find(Locator::Css("#tab-snap")).await?.send_keys("\u{E014}").await?; // ArrowRight
        ensure!(client.execute(focused_tab, vec![]).await? == serde_json::json!(["tab-which", "tab-which"]));
        client.find(Locator::Css("#tab-which")).await?.send_keys("\u{E010}").await?; // End
        ensure!(client.execute(focused_tab, vec![]).await? == serde_json::json!(["tab-history", "tab-history"]));
        client.find(Locator::Css("#tab-history")).await?.send_keys("\u{E014}").await?; // ArrowRight wraps
        ensure!(client.execute(focused_tab, vec![]).await? == serde_json::json!(["tab-snap", "tab-snap"]));
        client.find(Locator::Css("#tab-snap")).await?.send_keys("\u{E012}").await?; // ArrowLeft
        ensure!(client.execute(focused_tab, vec![]).await? == serde_json::json!(["tab-history", "tab-history"]));

        // Which dish?: the list starts with dishes the model knows, all of them offered.
        client.find(Locator::Css("#tab-which")).await?.click().await?;
        let (listed, known) = {
            let v = client
                .execute(
                    "return [document.getElementById('dish-list').value, [...document.querySelectorAll('#known-dishes option')].map(o => o.value)];",
                    vec![],
                )
                .await?;
            (v[0].as_str().unwrap_or_default().to_string(), serde_json::from_value::<Vec<String>>(v[1].clone())?)
        };
        ensure!(known.len() == 62, "{} dishes offered", known.len());
        let listed: Vec<&str> = listed.split(',').map(str::trim).collect();
        ensure!(listed.len() == 4 && listed.iter().all(|d| known.iter().any(|k| k == d)), "{listed:?}");
        // A rocket: the photo is shown, and none of the dishes fits it.
        client.find(Locator::Css("#tab-snap")).await?.click().await?;
        upload(&client, &repo_root().join("data/non-food/test/rocket.jpg")).await?;
        result_verdict(&client).await?;
        client.find(Locator::Css("#tab-which")).await?.click().await?;
        ensure!(client.find(Locator::Css("#which-photo")).await?.is_displayed().await?, "the photo compared is shown");
        client.find(Locator::Css("#classify")).await?.click().await?;
        let none = wait_for(
            &client,
            "the choice",
            Duration::from_secs(60),
            "const a = document.getElementById('classification'); return a ? a.dataset.none : null;",
            |v| v.as_str().map(str::to_string),
        )
        .await?;
        ensure!(none == "true", "a rocket is none of these dishes");
        screenshot(&client, "none-of-these").await?;
        // One dish only: the server refuses, and says so in Russian here.
        let list = client.find(Locator::Css("#dish-list")).await?;
        list.clear().await?;
        list.send_keys("пицца").await?;
        client.find(Locator::Css("#classify")).await?.click().await?;
        wait_for(
            &client,
            "the refusal in Russian",
            Duration::from_secs(30),
            "return document.querySelector('.which-dish .status-line').textContent;",
            |v| v.as_str().is_some_and(|t| t.contains("Сервер не принял запрос")).then_some(()),
        )
        .await?;

        // Draw: each press draws anew; the number shown draws the same pictures again.
        client.find(Locator::Css("#tab-draw")).await?.click().await?;
        client.find(Locator::XPath("//button[contains(@class, 'variants') and normalize-space() = '1']")).await?.click().await?;
        let drawing = |client: Client| async move {
            wait_for(
                &client,
                "a drawing",
                Duration::from_secs(90),
                "const i = document.querySelector('.drawn-image'); const s = document.getElementById('draw-seed').dataset.seed;
                 return i && i.dataset.done === 'true' && s ? [i.src, s] : null;",
                |v| serde_json::from_value::<(String, String)>(v.clone()).ok(),
            )
            .await
        };
        client.find(Locator::Css("#draw-button")).await?.click().await?;
        let (first, seed) = drawing(client.clone()).await?;
        client.find(Locator::Css("#draw-again")).await?.click().await?;
        let (again, same_seed) = drawing(client.clone()).await?;
        ensure!(again == first && same_seed == seed, "drawing {seed} again");
        client.find(Locator::Css("#draw-button")).await?.click().await?;
        let (_, other_seed) = drawing(client.clone()).await?;
        ensure!(other_seed != seed, "a new press draws from a new number");
        let shown_width = client.execute("return document.querySelector('.drawn-image').getBoundingClientRect().width;", vec![]).await?;
        ensure!(shown_width.as_f64() == Some(192.0), "a 64 px drawing shown at 3x: {shown_width}");
        Ok(())
    })
    .await;
    assert_no_csp_violations(server);
}

/// A recipe site on another origin: the example page with the widget's two lines pointing
/// at the Borscht server, served by a plain HTTP server of its own.
async fn host_page_on_another_origin(borscht: std::net::SocketAddr) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let page = include_str!("../../static/embed-example.html")
        .replace(r#"src="/widget.js""#, &format!(r#"src="http://{borscht}/widget.js""#));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let page = page.clone();
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = stream.read(&mut head).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

/// The widget on a site of another origin: its frame takes the height of its content,
/// and what it saves goes to the host page (with numbers rounded), not to a history the
/// widget's user cannot see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_widget_grows_with_its_card_and_hands_saved_meals_to_the_site() {
    let server = start_server().await;
    let site = host_page_on_another_origin(server).await;
    with_browser(BrowserOptions::default(), |client| async move {
        client.goto(&format!("http://{site}/")).await?;
        client
            .execute(
                "window.saved = null; document.addEventListener('borscht:saved', e => { window.saved = e.detail; });",
                vec![],
            )
            .await?;
        let frame_height = "return document.querySelector('#widget iframe').getBoundingClientRect().height;";
        let frame = client.wait().for_element(Locator::Css("#widget iframe")).await?;
        frame.clone().enter_frame().await?;
        wait_for_state(&client, "#connection-status", "connected", Duration::from_secs(20)).await?;
        upload(&client, &icon_path()).await?;
        result_dish(&client).await?;
        let content = client.execute("return document.body.scrollHeight;", vec![]).await?.as_f64().unwrap_or(0.0);
        client.find(Locator::Css("#save-meal")).await?.click().await?;
        let label = client.find(Locator::Css("#save-meal")).await?.text().await?;
        ensure!(label.contains("Передано сайту"), "the button says {label:?}");
        ensure!(
            client.execute("return localStorage.getItem('borscht.history');", vec![]).await? == serde_json::Value::Null,
            "the widget kept a history"
        );
        client.clone().enter_parent_frame().await?;
        let height = wait_for(&client, "the frame's height", Duration::from_secs(10), frame_height, |v| {
            v.as_f64().filter(|h| (h - content).abs() <= 2.0)
        })
        .await?;
        ensure!(height > 640.0, "the card made the frame taller than its first 640 px: {height}");
        let saved = wait_for(&client, "the saved meal", Duration::from_secs(10), "return window.saved;", |v| {
            (!v.is_null()).then(|| v.clone())
        })
        .await?;
        let kcal = saved["kcal"].as_f64().unwrap_or(f64::NAN);
        ensure!((kcal * 10.0 - (kcal * 10.0).round()).abs() < 1e-9, "rounded to one decimal: {saved}");
        screenshot(&client, "widget-grown").await?;
        Ok(())
    })
    .await;
    assert_no_csp_violations(server);
}

/// The app comes back by itself when the server drops its connection (here: the server
/// closes connections idle for 2 s, as it would a phone that lost the network), and the
/// new connection serves the next photo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_reconnects_when_the_connection_drops() {
    let server = borscht_e2e::start_server_with(|config| config.limits.idle_timeout_s = 2).await;
    with_browser(BrowserOptions::default(), |client| async move {
        client.goto(&format!("http://{server}/")).await?;
        wait_for_state(&client, "#connection-status", "connected", Duration::from_secs(20)).await?;
        // Every state the status line shows from now on.
        client
            .execute(
                "window.states = []; const s = document.getElementById('connection-status'); \
                 new MutationObserver(() => window.states.push(s.dataset.state)) \
                   .observe(s, { attributes: true, attributeFilter: ['data-state'] });",
                vec![],
            )
            .await?;
        let states =
            wait_for(&client, "a drop and a reconnect", Duration::from_secs(30), "return window.states;", |v| {
                let states: Vec<&str> = v.as_array()?.iter().filter_map(|s| s.as_str()).collect();
                let dropped = states.iter().position(|s| *s != "connected")?;
                states[dropped..].contains(&"connected").then(|| v.clone())
            })
            .await?;
        ensure!(states.as_array().is_some_and(|s| !s.is_empty()), "{states}");
        wait_for_state(&client, "#connection-status", "connected", Duration::from_secs(20)).await?;
        upload(&client, &icon_path()).await?;
        let dish = result_dish(&client).await?;
        ensure!(dish == truth().dish, "after reconnecting the app says {dish:?}");
        Ok(())
    })
    .await;
    assert_no_csp_violations(server);
}

/// Waits until the recognition's `data-phase` is `phase`.
async fn wait_for_phase(client: &Client, phase: &str, timeout: Duration) -> Result<()> {
    let script = "return document.getElementById('recognition').dataset.phase;";
    wait_for(client, &format!("the recognition to be {phase:?}"), timeout, script, |v| (v == phase).then_some(())).await
}

/// Records every value the retry notice beside the recognition shows (`window.notices`).
async fn record_retry_notices(client: &Client) -> Result<()> {
    client
        .execute(
            "window.notices = []; const n = document.querySelector('#recognition .retry-notice'); \
             const note = () => window.notices.push([n.dataset.retry, n.textContent]); \
             new MutationObserver(note).observe(n, { attributes: true, childList: true, characterData: true, subtree: true });",
            vec![],
        )
        .await?;
    Ok(())
}

async fn retry_notices(client: &Client) -> Result<Vec<(String, String)>> {
    let value = client.execute("return window.notices;", vec![]).await?;
    Ok(value
        .as_array()
        .map(|list| {
            list.iter()
                .map(|n| (n[0].as_str().unwrap_or("").to_string(), n[1].as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default())
}

/// A replica dies while it holds the photo (its model still loading, the request queued):
/// the app says it is reconnecting, sends the photo again through the balancer to a
/// replica that lives, and shows the answer; the user does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_whose_replica_dies_is_sent_again_and_answered() {
    let (doomed, _held) = borscht_e2e::start_held_server(|_| {});
    let survivor = start_server().await;
    let balancer = borscht_e2e::Failover::start(doomed).await;
    with_browser(BrowserOptions::default(), |client| async move {
        client.goto(&format!("http://{}/?lang=en", balancer.addr)).await?;
        wait_for_state(&client, "#connection-status", "connected", Duration::from_secs(20)).await?;
        record_retry_notices(&client).await?;
        upload(&client, &icon_path()).await?;
        wait_for_phase(&client, "queued", Duration::from_secs(20)).await?;
        balancer.kill_current(survivor);
        let dish = result_dish(&client).await?;
        ensure!(dish == truth().dish, "after the replica died the app says {dish:?}");
        let notices = retry_notices(&client).await?;
        ensure!(
            notices.iter().any(|(kind, text)| kind == "reconnecting" && text.contains("Reconnecting")),
            "{notices:?}"
        );
        Ok(())
    })
    .await;
    assert_no_csp_violations(survivor);
}

/// A full queue answers "busy": the app counts down the server's `retry_after_s` on
/// screen and sends the photo again by itself, up to its bound; once the queue moves,
/// the answer comes without the user pressing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_answer_is_retried_after_a_countdown_up_to_a_bound() {
    use borscht_protocol::{encode, ClientMessage};
    use futures::SinkExt;
    let (server, gate) = borscht_e2e::start_held_server(|config| {
        config.limits.queue_capacity = 1;
        config.limits.retry_after_s = 2;
    });
    // Another user's request fills the queue while the model loads.
    let (mut other, _) = tokio_tungstenite::connect_async(format!("ws://{server}/ws")).await.unwrap();
    let image = base64_png(&icon_path());
    let request = ClientMessage::Recognize { id: 1, image, template: None, n: Some(4), portion_g: None };
    other.send(tokio_tungstenite::tungstenite::Message::Text(encode(&request).into())).await.unwrap();
    with_browser(BrowserOptions::default(), |client| async move {
        client.goto(&format!("http://{server}/?lang=en")).await?;
        wait_for_state(&client, "#connection-status", "connected", Duration::from_secs(20)).await?;
        record_retry_notices(&client).await?;
        // First the bound: the page tries five times, counting down each wait, then says
        // the server is busy.
        upload(&client, &icon_path()).await?;
        wait_for_phase(&client, "failed", Duration::from_secs(40)).await?;
        let notices = retry_notices(&client).await?;
        for (seconds, attempt) in [(2, 1), (1, 1), (2, 5), (1, 5)] {
            let shown = format!("trying again in {seconds} s (try {attempt} of 5)");
            ensure!(notices.iter().any(|(_, text)| text.contains(&shown)), "no {shown:?} in {notices:?}");
        }
        ensure!(!notices.iter().any(|(_, text)| text.contains("try 6")), "{notices:?}");
        let status = client.find(Locator::Css("#recognition-status")).await?.text().await?;
        ensure!(status.to_lowercase().contains("busy"), "after the last try the page says {status:?}");
        // Then the queue moves while the page waits: its retry gets the answer.
        record_retry_notices(&client).await?;
        upload(&client, &icon_path()).await?;
        wait_for(&client, "a busy countdown", Duration::from_secs(20), "return window.notices.length;", |v| {
            (v.as_u64()? > 0).then_some(())
        })
        .await?;
        gate.send(()).unwrap();
        let dish = result_dish(&client).await?;
        ensure!(dish == truth().dish, "after the wait the app says {dish:?}");
        Ok(())
    })
    .await;
    assert_no_csp_violations(server);
}

fn base64_png(path: &std::path::Path) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap())
}

/// Types `text` into the field `selector` in place of what it holds.
async fn retype(client: &Client, selector: &str, text: &str) -> Result<()> {
    let field = client.find(Locator::Css(selector)).await?;
    field.clear().await?;
    field.send_keys(text).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_answers_teach_the_model_and_the_admin_fine_tunes_and_promotes() {
    let dir = tempfile::tempdir().unwrap();
    let server = borscht_e2e::start_teaching_server(dir.path()).await;
    with_browser(BrowserOptions::default(), |client| async move {
        // A user corrects an answer: "Wrong? Tell us" → the right dish and values → send.
        client.goto(&format!("http://{server}/?lang=en")).await?;
        wait_for_state(&client, "#connection-status", "connected", Duration::from_secs(20)).await?;
        upload(&client, &icon_path()).await?;
        ensure!(result_dish(&client).await? == truth().dish);
        client.find(Locator::Css("#correction-open")).await?.click().await?;
        retype(&client, "#correction-dish", "ватрушка").await?;
        for (field, value) in [("protein", "11"), ("fat", "8"), ("carbs", "40"), ("kcal", "280")] {
            retype(&client, &format!("[data-correction={field}]"), value).await?;
        }
        let save = client.find(Locator::Css("#correction-save")).await?;
        ensure!(save.attr("disabled").await?.is_some(), "sent without consent");
        client.find(Locator::Css("#correction-consent")).await?.click().await?;
        save.click().await?;
        wait_for_state(&client, "#correction", "sent", Duration::from_secs(20)).await?;
        let status = client.find(Locator::Css("#correction-status")).await?.text().await?;
        ensure!(
            status.contains("блюдо: ватрушка; белков: 11; жиров: 8; углеводов: 40; ккал: 280;"),
            "the stored caption: {status:?}"
        );
        screenshot(&client, "teach-correction").await?;
        let stored = std::fs::read_dir(dir.path().join("dataset"))?.count();
        ensure!(stored == 2, "the example's photo and record on the server: {stored} files");

        // The admin signs in, fine-tunes on it, watches the run finish, and promotes it.
        client.goto(&format!("http://{server}/admin?lang=en")).await?;
        wait_for(&client, "the admin page", Duration::from_secs(20),
            "return document.getElementById('admin-token') !== null;",
            |v| (v.as_bool() == Some(true)).then_some(())).await?;
        retype(&client, "#admin-token", borscht_e2e::ADMIN_TOKEN).await?;
        client.find(Locator::Css("#admin-sign-in")).await?.click().await?;
        wait_for(&client, "one example listed", Duration::from_secs(20),
            "const c = document.getElementById('examples-count'); return c ? c.textContent : null;",
            |v| (v.as_str() == Some("1")).then_some(())).await?;
        retype(&client, "#finetune-epochs", "4").await?;
        retype(&client, "#finetune-lr", "0.001").await?;
        client.find(Locator::Css("#finetune-freeze option[value=none]")).await?.click().await?;
        client.find(Locator::Css("#finetune-start")).await?.click().await?;
        wait_for(&client, "the run to finish", Duration::from_secs(120),
            "const s = document.getElementById('finetune-status'); return s ? [s.dataset.status, s.dataset.version] : null;",
            |v| (v[0].as_str() == Some("finished") && v[1].as_str() == Some("v1")).then_some(())).await?;
        let step = client.find(Locator::Css("#finetune-step")).await?.text().await?;
        ensure!(step == "4 / 4", "the run's steps as shown: {step:?}");
        screenshot(&client, "admin-finetune-finished").await?;
        // The versions list loads again once the run has finished.
        wait_for(&client, "v1 among the versions", Duration::from_secs(20),
            "return document.querySelector('.promote[data-version=v1]') !== null;",
            |v| (v.as_bool() == Some(true)).then_some(())).await?;
        client.find(Locator::Css(".promote[data-version=v1]")).await?.click().await?;
        wait_for(&client, "v1 serving", Duration::from_secs(60),
            "return document.getElementById('active-version').textContent;",
            |v| (v.as_str() == Some("v1")).then_some(())).await?;
        Ok(())
    })
    .await;
    assert_no_csp_violations(server);
}
