//! The deployment files under config/deploy, checked with what this machine
//! has: the Kubernetes manifests and the ECS task definition parsed and
//! held to what pgmux needs (health paths, grace periods), the ConfigMap's
//! configuration through `pgmux check`, the systemd unit through
//! `systemd-analyze verify`, and the Docker image built where a Docker
//! daemon answers.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::run;

fn deploy(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("config/deploy")
        .join(file)
}

/// The Kubernetes documents as JSON (PyYAML, installed by the test command).
fn kubernetes() -> Vec<serde_json::Value> {
    let script =
        "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let (ok, out) = run(Command::new("python3")
        .args(["-c", script])
        .arg(deploy("kubernetes.yaml")));
    assert!(ok, "kubernetes.yaml parses: {out}");
    serde_json::from_str(&out).expect("json")
}

#[test]
fn kubernetes_manifests_probe_health_and_carry_a_valid_config() {
    let docs = kubernetes();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        ["ConfigMap", "Deployment", "Service", "PodDisruptionBudget"]
    );
    let pod = &docs[1]["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/health/ready");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/health/live");
    // The ConfigMap's file is one pgmux accepts.
    let toml = docs[0]["data"]["pgmux.toml"].as_str().unwrap();
    let dir = pgmux::cluster::scratch_dir("deploy").unwrap();
    let path = dir.join("pgmux.toml");
    std::fs::write(&path, toml).unwrap();
    let (ok, out) = run(Command::new(env!("CARGO_BIN_EXE_pgmux"))
        .args(["check", "--config"])
        .arg(&path)
        .env("DB_HOST", "db.example")
        .env("PGMUX_ADMIN_PASSWORD", "x")
        .env("APP_PASSWORD", "y"));
    assert!(ok, "{out}");
    let cfg = pgmux::config::Config::parse(
        &toml
            .replace("${DB_HOST}", "db.example")
            .replace("${PGMUX_ADMIN_PASSWORD}", "x")
            .replace("${APP_PASSWORD}", "y"),
    )
    .unwrap();
    // The pod outlives preStop plus the drain.
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap();
    assert!(grace > pre_stop + cfg.pgmux.shutdown_timeout.as_secs());
}

#[test]
fn ecs_task_definition_checks_readiness_and_waits_for_the_drain() {
    let text = std::fs::read_to_string(deploy("ecs-task-definition.json")).unwrap();
    let task: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let c = &task["containerDefinitions"][0];
    let check = c["healthCheck"]["command"][1].as_str().unwrap();
    assert!(check.contains("/health/ready"), "{check}");
    assert!(
        c["stopTimeout"].as_u64().unwrap() > 30,
        "above shutdown_timeout"
    );
}

#[test]
fn systemd_unit_verifies() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    // The unit names the installed binary: point it at this build.
    let text = std::fs::read_to_string(deploy("pgmux.service"))
        .unwrap()
        .replace("/usr/local/bin/pgmux", env!("CARGO_BIN_EXE_pgmux"));
    let dir = pgmux::cluster::scratch_dir("unit").unwrap();
    let unit = dir.join("pgmux.service");
    std::fs::write(&unit, text).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

#[test]
fn dockerfile_is_multi_stage_non_root_and_builds_where_docker_runs() {
    let text = std::fs::read_to_string(deploy("Dockerfile")).unwrap();
    let froms = text.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(froms >= 2, "multi-stage");
    let user = text
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .expect("a USER line");
    assert!(
        user.trim() != "0" && user.trim() != "root",
        "runs as non-root"
    );
    assert!(text.contains("ENTRYPOINT [\"/usr/local/bin/pgmux\", \"run\"]"));
    let daemon = Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success());
    if !daemon {
        eprintln!("no Docker daemon here: the image build is skipped");
        return;
    }
    let (ok, out) = run(Command::new("docker")
        .args(["build", "-q", "-f"])
        .arg(deploy("Dockerfile"))
        .args(["-t", "pgmux-ci", env!("CARGO_MANIFEST_DIR")]));
    assert!(ok, "{out}");
}
