//! `keyward scan`: finds keys (and only keys with a valid checksum) in files and in a git
//! history, reports where without printing them, speaks text, JSON and SARIF, exits 1 when it
//! finds one, and with `--report` has the server shut them off.

mod support;

use keyward_core::digest::fingerprint;
use keyward_core::keyfmt;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Output};
use support::http::{str_of, Http};
use support::{keyward, spawn_app, stderr_text, stdout_text};

fn scan(dir: &Path, args: &[&str]) -> Output {
    keyward(dir)
        .arg("scan")
        .args(args)
        .output()
        .expect("run keyward scan")
}

fn write(dir: &Path, name: &str, contents: &[u8]) {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(path, contents).expect("write");
}

/// Asserts no full key appears in what the command printed.
fn assert_no_key_in(out: &Output, keys: &[&str]) {
    let all = format!("{}{}", stdout_text(out), stderr_text(out));
    for key in keys {
        assert!(!all.contains(key), "the output holds a key:\n{all}");
    }
}

#[test]
fn keys_in_files_are_found_where_they_are_and_never_printed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keyfmt::generate("orders");
    let key = key.expose();
    let root = keyfmt::generate(keyfmt::ROOT_PREFIX);
    let root = root.expose();
    // A character changed: the checksum fails, so it is no key.
    let typo = format!(
        "{}{}",
        &key[..20],
        if &key[20..21] == "Q" { "R" } else { "Q" }
    ) + &key[21..];
    write(
        dir.path(),
        "config.env",
        format!("DEBUG=1\nAPI_KEY={key}\n").as_bytes(),
    );
    write(
        dir.path(),
        "src/app.js",
        format!("const a = 1;\n\n  fetch(url, {{ headers: {{ 'x-api-key': \"{root}\" }} }});\n")
            .as_bytes(),
    );
    let mut binary = vec![0xff_u8, 0, 1, 2];
    binary.extend_from_slice(key.as_bytes());
    binary.extend_from_slice(&[0, 0xfe]);
    write(dir.path(), "assets/blob.bin", &binary);
    write(
        dir.path(),
        "notes.txt",
        format!("typo: {typo}\n").as_bytes(),
    );
    write(dir.path(), ".git/config", format!("{key}\n").as_bytes());

    let out = scan(dir.path(), &["."]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_text(&out));
    let text = stdout_text(&out);
    let lines: Vec<&str> = text.lines().collect();
    let start = keyfmt::start(&keyfmt::parse(key).expect("key"));
    let root_start = keyfmt::start(&keyfmt::parse(root).expect("root"));
    assert_eq!(
        lines,
        [
            format!(
                "assets/blob.bin:1:5: keyward key {start}… (sha256 {})",
                &fingerprint(key)[..16]
            ),
            format!(
                "config.env:2:9: keyward key {start}… (sha256 {})",
                &fingerprint(key)[..16]
            ),
            format!(
                "src/app.js:3:41: keyward root key {root_start}… (sha256 {})",
                &fingerprint(root)[..16]
            ),
        ]
    );
    assert!(stderr_text(&out).contains("3 keyward key(s) (1 root key(s)) in 4 file(s)"));
    assert_no_key_in(&out, &[key, root]);

    let out = scan(dir.path(), &["--format", "json", "config.env", "src"]);
    assert_eq!(out.status.code(), Some(1));
    let found: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        found,
        json!([
            {"path": "config.env", "line": 2, "column": 9, "kind": "key", "start": start, "sha256": fingerprint(key)},
            {"path": "src/app.js", "line": 3, "column": 41, "kind": "root_key", "start": root_start, "sha256": fingerprint(root)},
        ])
    );
    assert_no_key_in(&out, &[key, root]);

    let out = scan(dir.path(), &["--format", "sarif", "config.env"]);
    let sarif: Value = serde_json::from_slice(&out.stdout).expect("sarif");
    assert_eq!(sarif["version"], "2.1.0");
    let result = &sarif["runs"][0]["results"][0];
    assert_eq!(result["ruleId"], "keyward/leaked-key");
    let location = &result["locations"][0]["physicalLocation"];
    assert_eq!(location["artifactLocation"]["uri"], "config.env");
    assert_eq!(
        location["region"],
        json!({"startLine": 2, "startColumn": 9})
    );
    assert_eq!(
        result["partialFingerprints"]["keywardKeySha256/v1"],
        fingerprint(key)
    );
    assert_no_key_in(&out, &[key, root]);
}

#[test]
fn a_clean_tree_exits_0_and_a_missing_path_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "README.md",
        b"orders_ is a prefix; kw_abc is not a key\n",
    );
    let out = scan(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_text(&out));
    assert_eq!(stdout_text(&out), "");
    assert!(stderr_text(&out).contains("no keyward keys in 1 file(s)"));

    let out = scan(dir.path(), &["no/such/dir"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_text(&out).contains("no/such/dir"),
        "{}",
        stderr_text(&out)
    );

    let out = scan(dir.path(), &["--format", "yaml"]);
    assert_eq!(out.status.code(), Some(2));
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "-c",
            "commit.gpgsign=false",
        ])
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .expect("git is installed");
    assert!(out.status.success(), "git {args:?}: {}", stderr_text(&out));
    stdout_text(&out).trim().to_owned()
}

#[test]
fn a_key_deleted_from_the_tree_is_still_found_in_the_git_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keyfmt::generate("orders");
    let key = key.expose();
    git(dir.path(), &["init", "-q", "-b", "main"]);
    write(dir.path(), "app.py", b"import os\n");
    git(dir.path(), &["add", "."]);
    git(dir.path(), &["commit", "-q", "-m", "start"]);
    write(
        dir.path(),
        "app.py",
        format!("import os\nKEY = '{key}'\n").as_bytes(),
    );
    git(dir.path(), &["commit", "-q", "-am", "oops"]);
    let leaked_in = git(dir.path(), &["rev-parse", "HEAD"]);
    write(
        dir.path(),
        "app.py",
        b"import os\nKEY = os.environ['KEY']\n",
    );
    git(dir.path(), &["commit", "-q", "-am", "fix"]);

    // The files are clean now…
    let out = scan(dir.path(), &["."]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout_text(&out));
    // …the history is not.
    let out = scan(dir.path(), &["--git", "--format", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_text(&out));
    let found: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(found.as_array().map(Vec::len), Some(1), "{found}");
    assert_eq!(found[0]["path"], "app.py");
    assert_eq!(found[0]["line"], 2);
    assert_eq!(found[0]["column"], 8);
    assert_eq!(found[0]["commit"], leaked_in.as_str());
    assert!(stderr_text(&out).contains("in 3 commit(s)"));
    assert_no_key_in(&out, &[key]);

    let out = scan(dir.path(), &["--git", "no/such/repo"]);
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn scan_report_has_the_server_shut_the_keys_off() {
    let app = spawn_app();
    let http = Http::new(&app);
    let api = http.create_api("orders", "orders").await;
    let created = http
        .create_key(&json!({"api_id": api["id"], "name": "k"}))
        .await;
    let key = str_of(&created, "key").to_owned();
    assert_eq!(http.verify_code(&key).await, "VALID");

    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "deploy/values.yaml",
        format!("apiKey: {key}\n").as_bytes(),
    );
    let out = keyward(dir.path())
        .args(["scan", "--report", "--url", &app.url()])
        .output()
        .expect("run keyward scan --report");
    assert_eq!(out.status.code(), Some(1), "{}", stderr_text(&out));
    assert!(
        stderr_text(&out).contains("reported 1 key(s)"),
        "{}",
        stderr_text(&out)
    );
    assert_no_key_in(&out, &[&key]);

    assert_eq!(http.verify_code(&key).await, "DISABLED");
    let got = http
        .get(&format!("/v1/keys/{}", str_of(&created, "id")))
        .await
        .expect(200);
    assert!(got["state_reason"]
        .as_str()
        .is_some_and(|r| r.contains("keyward scan: deploy/values.yaml")));
}
