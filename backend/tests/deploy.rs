//! The deployment packaging (deploy/: the Dockerfile and the Kubernetes manifests), checked
//! offline by scripts/check-deploy.sh against this binary's `serve --help`: the manifests
//! render and validate, agree with each other and with the image, and what the Dockerfile's
//! steps name exists. The images themselves are not built here (no registry can be reached
//! from the build machines; docs/deploy.md). Each failing case breaks a copy of deploy/.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("backend/ is in the repository").to_path_buf()
}

/// Runs the check on `deploy_dir` (the repository's deploy/ when None): whether it passed,
/// and what it printed.
fn check_deploy(deploy_dir: Option<&Path>) -> (bool, String) {
    let mut command = Command::new(repo_root().join("scripts/check-deploy.sh"));
    command.arg(env!("CARGO_BIN_EXE_borscht"));
    match deploy_dir {
        Some(dir) => command.env("BORSCHT_DEPLOY_DIR", dir),
        None => command.env_remove("BORSCHT_DEPLOY_DIR"),
    };
    let output = command.output().expect("cannot run scripts/check-deploy.sh");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// A copy of deploy/ with `file` (relative to deploy/) broken by `edit`.
fn broken_copy(file: &str, edit: impl FnOnce(&str) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&repo_root().join("deploy"), dir.path());
    let path = dir.path().join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let broken = edit(&text);
    assert_ne!(broken, text, "the edit changed nothing in {file}");
    std::fs::write(&path, broken).unwrap();
    dir
}

/// Checks a broken copy and asserts that it fails with a FAIL line holding every `expected` part.
fn assert_fails(dir: &tempfile::TempDir, expected: &[&str]) {
    let (passed, output) = check_deploy(Some(dir.path()));
    assert!(!passed, "the check passed a broken deploy/:\n{output}");
    assert!(
        output.lines().any(|line| line.starts_with("FAIL: ") && expected.iter().all(|part| line.contains(part))),
        "no FAIL line with {expected:?}:\n{output}"
    );
}

#[test]
fn the_packaging_passes_its_checks() {
    let (passed, output) = check_deploy(None);
    assert!(passed, "scripts/check-deploy.sh failed:\n{output}");
    assert!(output.contains("check-deploy: all checks passed"), "{output}");
    assert!(output.contains("ok: deploy/Dockerfile passes hadolint"), "{output}");
    // The GPU overlay asks for the GPU its BORSCHT_DEVICE uses.
    assert!(output.contains("ok: overlays/gpu: BORSCHT_DEVICE=cuda on nvidia.com/gpu: 1 (limits)"), "{output}");
    // In both, the grace period covers the preStop sleep and the drain timeout.
    for target in ["base", "overlays/gpu"] {
        assert!(
            output.lines().any(|line| line.starts_with(&format!("ok: {target}: terminationGracePeriodSeconds"))
                && line.contains("BORSCHT_DRAIN_TIMEOUT_S")),
            "no drain line for {target}:\n{output}"
        );
        assert!(output.contains(&format!("ok: {target}: the autoscaler scales on borscht_queue_depth")), "{output}");
    }
}

#[test]
fn a_probe_on_no_container_port_fails_naming_its_file() {
    let dir = broken_copy("kubernetes/base/deployment.yaml", |text| {
        let probe = text.find("readinessProbe:").expect("a readiness probe");
        let port = probe + text[probe..].find("port: http").expect("its port");
        format!("{}port: garbage{}", &text[..port], &text[port + "port: http".len()..])
    });
    assert_fails(&dir, &["deploy/kubernetes/base/deployment.yaml", "readinessProbe port 'garbage'"]);
}

#[test]
fn a_field_of_the_wrong_type_fails_schema_validation_naming_its_file() {
    let dir = broken_copy("kubernetes/base/hpa.yaml", |text| text.replacen("minReplicas: 2", "minReplicas: two", 1));
    assert_fails(&dir, &["deploy/kubernetes/base/hpa.yaml", "not valid for Kubernetes", "'two' is not of type"]);
}

#[test]
fn the_gpu_overlay_must_request_a_gpu() {
    let dir = broken_copy("kubernetes/overlays/gpu/deployment-gpu.yaml", |text| {
        text.lines().filter(|line| !line.contains("nvidia.com/gpu: 1")).map(|line| format!("{line}\n")).collect()
    });
    assert_fails(&dir, &["deploy/kubernetes/overlays/gpu/deployment-gpu.yaml", "needs nvidia.com/gpu: 1"]);
}

#[test]
fn the_grace_period_must_cover_the_drain_timeout() {
    let dir = broken_copy("kubernetes/base/deployment.yaml", |text| {
        let drain = "- name: BORSCHT_DRAIN_TIMEOUT_S\n              value: \"60\"";
        text.replacen(drain, &drain.replace("60", "120"), 1)
    });
    assert_fails(&dir, &["deploy/kubernetes/base/deployment.yaml", "does not fit", "BORSCHT_DRAIN_TIMEOUT_S 120 s"]);
}

#[test]
fn the_dockerfile_must_copy_what_exists() {
    let dir = broken_copy("Dockerfile", |text| text.replace("COPY models/demo ", "COPY models/no-such-model "));
    assert_fails(&dir, &["deploy/Dockerfile, stage runtime-cpu", "COPY models/no-such-model: not in the repository"]);
}
