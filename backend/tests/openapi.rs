//! `/api/v1/openapi.json` is a valid OpenAPI 3.1 document (checked by
//! openapi-spec-validator, which scripts/install-tools.sh installs), and the live
//! answers of every path it names, errors included, fit the schemas it gives for them.

mod common;
use common::*;

use serde_json::Value;
use std::collections::BTreeSet;

async fn document(server: &TestServer) -> Value {
    let (status, body) = reqwest_get(server.addr, "/api/v1/openapi.json").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The answers a document gives for `method path` and `status` in `content_type`: the
/// exact status's, else its class's (`4XX`).
fn response_schema(doc: &Value, method: &str, path: &str, status: u16, content_type: &str) -> Value {
    let responses = &doc["paths"][path][method]["responses"];
    let response =
        [status.to_string(), format!("{}XX", status / 100)].iter().map(|key| &responses[key]).find(|r| !r.is_null());
    let response = response.unwrap_or_else(|| panic!("{method} {path} documents no {status}: {responses}"));
    let schema = &response["content"][content_type]["schema"];
    assert!(!schema.is_null(), "{method} {path} {status} documents no {content_type}: {response}");
    schema.clone()
}

/// Checks `body` against the document's schema for the answer, its `$ref`s resolved in
/// the document's components.
fn assert_fits(doc: &Value, method: &str, path: &str, status: u16, content_type: &str, body: &[u8]) {
    let schema = response_schema(doc, method, path, status, content_type);
    if content_type != "application/json" {
        assert!(schema.to_string().contains("binary") || schema["$ref"].is_string(), "{schema}");
        return;
    }
    let mut root = serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": doc["components"],
    });
    for (key, value) in schema.as_object().unwrap() {
        root[key] = value.clone();
    }
    let validator = jsonschema::validator_for(&root).unwrap_or_else(|e| panic!("the schema does not compile: {e}"));
    let instance: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{method} {path} {status} is not JSON ({e}): {}", String::from_utf8_lossy(body)));
    let errors: Vec<String> =
        validator.iter_errors(&instance).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "{method} {path} {status} does not fit its schema: {errors:?}\n{instance:#}");
}

fn content_type(head: &str) -> String {
    head.lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type:").map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

fn validator() -> std::path::PathBuf {
    let tools = std::env::var_os("BORSCHT_TOOLS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(&std::env::var("HOME").unwrap()).join(".cache/borscht-tools"));
    tools.join("deploy-tools/bin/openapi-spec-validator")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_valid_and_names_every_api_route() {
    let server = TestServer::start_demo().await;
    let doc = document(&server).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let checked = std::process::Command::new(validator())
        .arg(&file)
        .output()
        .expect("openapi-spec-validator runs (scripts/install-tools.sh installs it)");
    let said = String::from_utf8_lossy(&checked.stdout).into_owned() + &String::from_utf8_lossy(&checked.stderr);
    assert!(checked.status.success() && said.contains("OK"), "{said}");
    // Every /api/v1 route the server has is documented (the document is not).
    let paths: BTreeSet<&str> = doc["paths"].as_object().unwrap().keys().map(String::as_str).collect();
    let routes = [
        "/api/v1/classify",
        "/api/v1/dishes",
        "/api/v1/examples",
        "/api/v1/examples/export",
        "/api/v1/examples/{id}",
        "/api/v1/examples/{id}/photo",
        "/api/v1/finetune",
        "/api/v1/finetune/cancel",
        "/api/v1/finetune/events",
        "/api/v1/finetune/resume",
        "/api/v1/generate",
        "/api/v1/models",
        "/api/v1/models/rollback",
        "/api/v1/models/{name}/promote",
        "/api/v1/recognize",
    ];
    assert_eq!(paths, routes.into_iter().collect());
    // Each documented method of each path is a route of a server that teaches (the admin
    // routes answer 401 without the token; the web app's fallback would say 404 or 405).
    let dir = tempfile::tempdir().unwrap();
    let teaching = borscht_server::finetune::Teaching::new(
        Some(std::sync::Arc::new(borscht_server::dataset::Dataset::open(&dir.path().join("d"), 10, 1 << 30).unwrap())),
        Some(std::sync::Arc::new(borscht_server::versions::Versions::open(&dir.path().join("m"), dir.path()).unwrap())),
        None,
        None,
    );
    let teaching_server =
        TestServer::start_teaching(|c| c.admin_token = Some("t".into()), std::sync::Arc::new(teaching)).await;
    for (path, methods) in doc["paths"].as_object().unwrap() {
        for method in methods.as_object().unwrap().keys() {
            let route = path.replace("{id}", "1-a").replace("{name}", "v1");
            let (status, _) = http(teaching_server.addr, &method.to_uppercase(), &route, "", &[]).await;
            assert!(![404, 405].contains(&status), "{method} {path}: {status}");
        }
    }
}

/// A document that breaks OpenAPI's rules is refused by the validator the test uses: a
/// check that would pass anything proves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_validator_refuses_a_broken_document() {
    let server = TestServer::start_demo().await;
    let mut doc = document(&server).await;
    doc["paths"]["/api/v1/dishes"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"] =
        "#/components/schemas/NoSuchThing".into();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let checked = std::process::Command::new(validator()).arg(&file).output().unwrap();
    assert!(!checked.status.success());
    assert!(String::from_utf8_lossy(&checked.stdout).contains("NoSuchThing"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_answers_fit_the_openapi_document() {
    let server = TestServer::start_demo().await;
    let doc = document(&server).await;
    let pizza = pizza_icon_png();
    let mut seen = BTreeSet::new();
    let mut check = |method: &str, path: &str, status: u16, head: &str, body: &[u8]| {
        let route = path.split('?').next().unwrap();
        let media = content_type(head);
        let media = media.split(';').next().unwrap().trim().to_string();
        assert_fits(&doc, &method.to_lowercase(), route, status, &media, body);
        seen.insert((route.to_string(), status / 100));
    };

    // recognize: the photo as the body, with a portion.
    let (status, head, body) =
        http_raw(server.addr, "POST", "/api/v1/recognize?n=4&portion_g=250", "image/png", &pizza).await;
    assert_eq!(status, 200);
    let recognition: Value = serde_json::from_slice(&body).unwrap();
    assert!(recognition["best"].is_object() && recognition["portion"].is_object(), "{recognition}");
    check("POST", "/api/v1/recognize", status, &head, &body);
    // ... as a form, and a picture that is none.
    let boundary = "b0undary";
    let form = |fields: &[(&str, &str)], image: &[u8]| {
        let mut form = Vec::new();
        for (name, value) in fields {
            form.extend(
                format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").bytes(),
            );
        }
        form.extend(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"p.png\"\r\nContent-Type: image/png\r\n\r\n")
                .bytes(),
        );
        form.extend(image);
        form.extend(format!("\r\n--{boundary}--\r\n").bytes());
        form
    };
    let multipart = format!("multipart/form-data; boundary={boundary}");
    let (status, head, body) =
        http_raw(server.addr, "POST", "/api/v1/recognize", &multipart, &form(&[("n", "4")], &pizza)).await;
    assert_eq!(status, 200);
    check("POST", "/api/v1/recognize", status, &head, &body);
    let (status, head, body) = http_raw(server.addr, "POST", "/api/v1/recognize", "image/png", b"not a picture").await;
    assert_eq!(status, 415);
    check("POST", "/api/v1/recognize", status, &head, &body);

    // classify: query and form; too many dishes.
    let classes = percent_encoding::utf8_percent_encode("пицца,борщ,рис", percent_encoding::NON_ALPHANUMERIC);
    let path = format!("/api/v1/classify?classes={classes}&method=image_fit");
    let (status, head, body) = http_raw(server.addr, "POST", &path, "image/png", &pizza).await;
    assert_eq!(status, 200);
    check("POST", &path, status, &head, &body);
    let (status, head, body) =
        http_raw(server.addr, "POST", "/api/v1/classify", &multipart, &form(&[("classes", "пицца,суп")], &pizza)).await;
    assert_eq!(status, 200);
    check("POST", "/api/v1/classify", status, &head, &body);
    let many = (0..60).map(|k| format!("блюдо{k}")).collect::<Vec<_>>().join(",");
    let path = format!(
        "/api/v1/classify?classes={}",
        percent_encoding::utf8_percent_encode(&many, percent_encoding::NON_ALPHANUMERIC)
    );
    let (status, head, body) = http_raw(server.addr, "POST", &path, "image/png", &pizza).await;
    assert_eq!(status, 422);
    check("POST", &path, status, &head, &body);

    // generate: one picture is a PNG with its seed; several are JSON; an unknown field is refused.
    let (status, head, body) =
        http_raw(server.addr, "POST", "/api/v1/generate", "application/json", r#"{"text":"борщ","n":1}"#.as_bytes())
            .await;
    assert_eq!(status, 200);
    assert!(body.starts_with(b"\x89PNG"));
    assert!(head.to_lowercase().contains("x-borscht-seed: "), "{head}");
    check("POST", "/api/v1/generate", status, &head, &body);
    let (status, head, body) = http_raw(
        server.addr,
        "POST",
        "/api/v1/generate",
        "application/json",
        r#"{"text":"борщ","n":2,"seed":7}"#.as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    check("POST", "/api/v1/generate", status, &head, &body);
    let (status, head, body) =
        http_raw(server.addr, "POST", "/api/v1/generate", "application/json", r#"{"text":"борщ","size":9}"#.as_bytes())
            .await;
    assert_eq!(status, 400);
    check("POST", "/api/v1/generate", status, &head, &body);

    // dishes
    let (status, head, body) = http_raw(server.addr, "GET", "/api/v1/dishes", "", &[]).await;
    assert_eq!(status, 200);
    check("GET", "/api/v1/dishes", status, &head, &body);

    let expected: BTreeSet<(String, u16)> = ["/api/v1/recognize", "/api/v1/classify", "/api/v1/generate"]
        .iter()
        .flat_map(|p| [(p.to_string(), 2), (p.to_string(), 4)])
        .chain([("/api/v1/dishes".to_string(), 2)])
        .collect();
    assert_eq!(seen, expected);
}

/// An answer that breaks its schema is caught: the check compares, not merely parses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recognition_that_breaks_its_schema_is_caught() {
    let server = TestServer::start_demo().await;
    let doc = document(&server).await;
    let (_, _, body) = http_raw(server.addr, "POST", "/api/v1/recognize?n=4", "image/png", &pizza_icon_png()).await;
    let mut recognition: Value = serde_json::from_slice(&body).unwrap();
    recognition["verdict"] = "probably".into();
    let broken = serde_json::to_vec(&recognition).unwrap();
    let caught = std::panic::catch_unwind(|| {
        assert_fits(&doc, "post", "/api/v1/recognize", 200, "application/json", &broken);
    });
    assert!(caught.is_err(), "a verdict outside the enum passed");
}
