//! Black-box tests of the `keyward` binary: bootstrap, serve, the HTTP commands, shutdown.

mod support;

use serde_json::Value;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Output, Stdio};
use support::{
    assert_success, keyward, spawn_app, spawn_app_pg, stderr_text, stdout_text, TestApp,
};

/// Runs `cmd` with `input` on stdin.
fn run_with_stdin(mut cmd: Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keyward");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait keyward")
}

/// Runs an HTTP command with `--json` and parses its stdout.
fn json(app: &TestApp, args: &[&str]) -> (Value, Output) {
    let out = app
        .cli()
        .args(args)
        .arg("--json")
        .output()
        .expect("run keyward");
    assert_success(&out, &args.join(" "));
    let value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{} printed invalid JSON ({e}):\n{}",
            args.join(" "),
            stdout_text(&out)
        )
    });
    (value, out)
}

fn str_field<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("no string {field:?} in {v}"))
}

#[test]
fn root_keys_create_prints_only_the_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = keyward(tmp.path())
        .args(["root-keys", "create", "--workspace", "acme", "--name", "ci"])
        .args(["--permissions", "keys.read,keys.verify", "--data-dir"])
        .arg(tmp.path().join("data"))
        .output()
        .expect("run keyward");
    assert_success(&out, "root-keys create");

    let stdout = stdout_text(&out);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stdout: {stdout:?}");
    assert!(stdout.ends_with('\n'));
    let parsed = keyward_core::keyfmt::parse(lines[0]).expect("a well-formed key");
    assert_eq!(parsed.prefix, "kwroot");
    assert!(
        !stderr_text(&out).contains(lines[0]),
        "the key is not repeated on stderr"
    );
}

#[test]
fn serve_creates_data_dir_and_pepper_with_mode_0600() {
    let app = spawn_app();
    let dir_mode = std::fs::metadata(&app.data_dir)
        .expect("data dir exists")
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700, "data dir mode {dir_mode:o}");
    let pepper_mode = std::fs::metadata(app.data_dir.join("pepper"))
        .expect("pepper exists")
        .permissions()
        .mode();
    assert_eq!(pepper_mode & 0o777, 0o600, "pepper mode {pepper_mode:o}");
    assert!(
        app.data_dir.join("keyward.db").exists(),
        "default SQLite database"
    );
}

fn drive_apis_projects_keys(app: &TestApp) {
    let (api, _) = json(
        app,
        &[
            "apis",
            "create",
            "--name",
            "orders",
            "--prefix",
            "orders",
            "--permissions",
            "orders.read,orders.write",
        ],
    );
    let api_id = str_field(&api, "id");
    assert_eq!(str_field(&api, "prefix"), "orders");

    let (project, _) = json(
        app,
        &[
            "projects",
            "create",
            "--name",
            "acme",
            "--external-id",
            "cus_42",
        ],
    );
    let project_id = str_field(&project, "id");
    assert_eq!(str_field(&project, "external_id"), "cus_42");

    let (created, out) = json(
        app,
        &[
            "keys",
            "create",
            "--api",
            api_id,
            "--project",
            project_id,
            "--name",
            "backend",
            "--permissions",
            "orders.read",
            "--expires-in",
            "30d",
            "--meta",
            r#"{"plan":"pro"}"#,
        ],
    );
    let key = str_field(&created, "key").to_owned();
    let key_id = str_field(&created, "id");
    assert!(key.starts_with("orders_"), "key has the api's prefix");
    assert_eq!(created["meta"]["plan"], "pro");
    assert!(
        stderr_text(&out).contains("only time"),
        "warns the key is shown once"
    );

    // Valid key, via stdin as the help recommends: exit 0.
    let mut verify = app.cli();
    verify.args([
        "keys",
        "verify",
        "-",
        "--api",
        api_id,
        "--permissions",
        "orders.read",
    ]);
    let out = run_with_stdin(verify, &format!("{key}\n"));
    assert_success(&out, "keys verify");
    assert!(stdout_text(&out).contains("VALID"), "{}", stdout_text(&out));

    // Missing permission: exit 1.
    let mut verify = app.cli();
    verify.args([
        "keys",
        "verify",
        "-",
        "--permissions",
        "orders.write",
        "--json",
    ]);
    let out = run_with_stdin(verify, &key);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_text(&out));
    let verdict: Value = serde_json::from_slice(&out.stdout).expect("verdict JSON");
    assert_eq!(verdict["code"], "INSUFFICIENT_PERMISSIONS");

    // Listings and reads: JSON parses, tables show the key, neither shows the plaintext.
    let (listing, _) = json(app, &["keys", "list", "--api", api_id]);
    let items = listing["items"].as_array().expect("items");
    assert!(items.iter().any(|k| k["id"] == key_id), "{listing}");
    assert!(!listing.to_string().contains(&key));
    for args in [
        vec!["keys", "list"],
        vec!["keys", "get", key_id],
        vec!["apis", "list"],
        vec!["projects", "list"],
    ] {
        let out = app.cli().args(&args).output().expect("run keyward");
        assert_success(&out, &args.join(" "));
        let text = stdout_text(&out);
        assert!(
            !text.contains(&key),
            "{} printed the plaintext",
            args.join(" ")
        );
        assert!(text.starts_with("ID ") || text.starts_with("id "), "{text}");
    }
    let (fetched, _) = json(app, &["apis", "get", api_id]);
    assert_eq!(fetched["id"], api["id"]);

    // Disable, then revoke: the key stops verifying.
    let (updated, _) = json(app, &["keys", "update", key_id, "--enabled", "false"]);
    assert_eq!(updated["state"], "disabled");
    let out = app
        .cli()
        .args(["keys", "revoke", key_id])
        .output()
        .expect("run keyward");
    assert_success(&out, "keys revoke");
    let mut verify = app.cli();
    verify.args(["keys", "verify", "-"]);
    let out = run_with_stdin(verify, &key);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout_text(&out).contains("REVOKED"),
        "{}",
        stdout_text(&out)
    );

    // Security: neither the api key nor the root key reaches the server's logs.
    let logs = app.logs();
    assert!(!logs.contains(&key), "api key in server logs");
    assert!(!logs.contains(&app.root_key), "root key in server logs");
}

#[test]
fn cli_drives_apis_projects_keys_over_http() {
    let app = spawn_app();
    drive_apis_projects_keys(&app);
}

#[test]
fn cli_drives_apis_projects_keys_over_http_on_postgres() {
    let Some(app) = spawn_app_pg() else {
        return;
    };
    drive_apis_projects_keys(&app);
}

#[test]
fn keys_rotate_prints_a_new_key_and_the_old_one_keeps_its_grace_period() {
    let app = spawn_app();
    let (api, _) = json(&app, &["apis", "create", "--name", "billing"]);
    let (created, _) = json(
        &app,
        &[
            "keys",
            "create",
            "--api",
            str_field(&api, "id"),
            "--name",
            "k",
        ],
    );
    let old = str_field(&created, "key");
    let (rotated, out) = json(
        &app,
        &[
            "keys",
            "rotate",
            str_field(&created, "id"),
            "--grace-period",
            "1h",
        ],
    );
    let new = str_field(&rotated, "key");
    assert_ne!(old, new);
    assert!(stderr_text(&out).contains("only time"));
    for key in [old, new] {
        let mut verify = app.cli();
        verify.args(["keys", "verify", "-"]);
        let out = run_with_stdin(verify, key);
        assert_success(&out, "verify during the grace period");
    }
}

#[test]
fn bad_config_file_names_the_unknown_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("keyward.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\n\nlisten_adress = \"x\"\n",
    )
    .expect("write");

    // Picked up from the working directory, and named explicitly.
    let implicit = keyward(tmp.path())
        .arg("serve")
        .output()
        .expect("run keyward");
    let explicit = keyward(tmp.path())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run keyward");
    for out in [implicit, explicit] {
        assert_eq!(out.status.code(), Some(2));
        let err = stderr_text(&out);
        assert!(
            err.contains("keyward.toml:3:1"),
            "names the file and line: {err}"
        );
        assert!(err.contains("listen_adress"), "names the key: {err}");
    }
    assert!(
        !tmp.path().join("keyward-data").exists(),
        "nothing created on bad config"
    );
}

#[test]
fn keys_verify_of_garbage_exits_1() {
    let app = spawn_app();
    let out = app
        .cli()
        .args(["keys", "verify", "not-a-key"])
        .output()
        .expect("run keyward");
    assert_eq!(out.status.code(), Some(1), "{}", stderr_text(&out));
    assert!(
        stdout_text(&out).contains("MALFORMED"),
        "{}",
        stdout_text(&out)
    );
}

#[test]
fn http_errors_show_the_code_and_exit_2() {
    let app = spawn_app();
    let out = app
        .cli()
        .args(["keys", "get", "key_doesnotexist"])
        .output()
        .expect("run keyward");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_text(&out).contains("key_not_found"),
        "{}",
        stderr_text(&out)
    );

    let out = app
        .cli()
        .env("KEYWARD_ROOT_KEY", "kwroot_wrong")
        .args(["apis", "list"])
        .output()
        .expect("run keyward");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        !stderr_text(&out).contains("kwroot_wrong"),
        "root key echoed"
    );

    let out = keyward(&app.data_dir)
        .env("KEYWARD_URL", app.url())
        .args(["apis", "list"])
        .output()
        .expect("run keyward");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_text(&out).contains("KEYWARD_ROOT_KEY"),
        "says what is missing"
    );
}

#[test]
fn sigterm_shuts_down_gracefully() {
    let mut app = spawn_app();
    let status = app.terminate();
    assert!(status.success(), "exit status {status}\n{}", app.logs());
}
