//! `herald workflows apply|export|list|run` through the real binary, on the local data dir:
//! apply creates, then leaves an unchanged file alone, then versions a changed one with a diff;
//! export writes files that apply back unchanged; a bad file names its problem's path.

mod common;

use std::path::Path;

fn run(dir: &Path, args: &[&str], stdin: &str) -> (i32, String, String) {
    common::run_cli(dir, args, stdin)
}

const AMPFLOW: &str = r##"name: AmpFlow
description: New uploads to the community
steps:
  - type: filter
    when: {field: video.title, op: not_contains, value: "#private"}
  - type: template
    template: "New video: {{video_title}} {{video_url}}"
  - type: publish
    targets:
      - platform: discord
      - platform: telegram
"##;

#[test]
fn apply_export_and_run_workflows_from_yaml() {
    let dir = herald_store::testing::scratch_dir("herald-workflows-cli");
    let (code, out, err) = run(&dir, &["user", "create", "--email", "o@example.com"], "pw-123456789\n");
    assert_eq!(code, 0, "{out}{err}");
    let team = out.split("with team ").nth(1).unwrap().trim().to_string();
    let defs = dir.join("workflows");
    std::fs::create_dir_all(&defs).unwrap();
    std::fs::write(defs.join("ampflow.yaml"), AMPFLOW).unwrap();
    let apply = ["workflows", "apply", "-f", "workflows", "--team", &team];

    let (code, out, err) = run(&dir, &apply, "");
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "created AmpFlow v1");
    // The same files again change nothing.
    let (code, out, err) = run(&dir, &apply, "");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "unchanged AmpFlow v1");
    // A changed template is a new version, and the diff shows the line.
    std::fs::write(defs.join("ampflow.yaml"), AMPFLOW.replace("New video:", "Just out:")).unwrap();
    let (code, out, err) = run(&dir, &apply, "");
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("updated AmpFlow v1 -> v2"), "{out}");
    assert!(
        out.contains("+ ") && out.contains("Just out:") && out.contains("- ") && out.contains("New video:"),
        "{out}"
    );

    // Export writes a file per workflow; applying the export changes nothing.
    let (code, out, err) = run(&dir, &["workflows", "export", "-o", "exported", "--team", &team], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.trim().ends_with("exported/ampflow.yaml"), "{out}");
    let exported = std::fs::read_to_string(dir.join("exported/ampflow.yaml")).unwrap();
    assert!(exported.contains("id: publish") && exported.contains("Just out:"), "{exported}");
    let (code, out, err) = run(&dir, &["workflows", "apply", "-f", "exported", "--team", &team], "");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "unchanged AmpFlow v2");

    // A bad file: every problem with its path, and a failing exit.
    std::fs::write(
        defs.join("bad.yaml"),
        "name: Bad\nsteps:\n  - type: template\n    template: \"{{ oops\"\n  - type: approval\n    timeout: 1h\n",
    )
    .unwrap();
    let (code, _, err) = run(&dir, &apply, "");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("bad.yaml"), "{err}");
    assert!(
        err.contains("\n  steps[0].template: ") && err.contains("\n  steps[1]: "),
        "each problem on its line: {err}"
    );

    // The list, and a dry run that shows what would be posted.
    let (code, out, _) = run(&dir, &["workflows", "list", "--team", &team], "");
    assert_eq!(code, 0);
    assert!(out.contains("v2") && out.contains("\"AmpFlow\""), "{out}");
    let id = out.split_whitespace().next().unwrap().to_string();
    let payload = r#"{"video": {"title": "Demo", "url": "https://youtu.be/d"}}"#;
    let (code, out, err) =
        run(&dir, &["workflows", "run", &id, "--payload", payload, "--dry-run", "--team", &team], "");
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["steps"][1]["output"]["text"], "Just out: Demo https://youtu.be/d", "{v:#}");
    // The team has no Discord or Telegram connection yet: the dry run says so before any event.
    assert_eq!((v["status"].as_str(), v["error_code"].as_str()), (Some("failed"), Some("no_targets")), "{v:#}");
}
