//! `keyward scan`: finds keyward keys — any prefix, checksum valid, so no guesswork — in files
//! or in every commit of a git history, and says where; never the keys themselves. With
//! `--report` it also sends them to a server's `POST /v1/leaks`, which shuts them off.

use crate::cli::{ScanArgs, ScanFormat};
use anyhow::{bail, Context as _};
use keyward_core::digest::fingerprint;
use keyward_core::{keyfmt, KeyMaterial};
use serde::Serialize;
use serde_json::json;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

/// Files larger than this are skipped (with a warning): keys live in text, and reading a
/// disk image whole would not end well.
const MAX_FILE_BYTES: u64 = 256 << 20;

/// One key found.
#[derive(Debug, Serialize)]
struct Finding {
    path: String,
    line: usize,
    column: usize,
    /// `key` or `root_key`.
    kind: &'static str,
    /// The displayable start: prefix and the first 6 characters of the secret.
    start: String,
    /// SHA-256 of the key, hex: names it without revealing it.
    sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    commit: Option<String>,
    /// Kept only to `--report` it.
    #[serde(skip)]
    key: KeyMaterial,
}

/// What a scan went through.
#[derive(Debug, Default)]
struct Scan {
    findings: Vec<Finding>,
    /// Files (or, with `--git`, commits) read.
    read: usize,
    /// Files that could not be read (each warned about).
    unreadable: usize,
}

impl Scan {
    /// Records the keys in `text`, whose first line is line `first_line` of `path`.
    fn look(&mut self, text: &[u8], path: &str, first_line: usize, commit: Option<&str>) {
        let (mut line, mut line_start, mut seen) = (first_line, 0, 0);
        for range in keyfmt::find(text) {
            for (i, &b) in text.iter().enumerate().take(range.start).skip(seen) {
                if b == b'\n' {
                    line += 1;
                    line_start = i + 1;
                }
            }
            seen = range.start;
            let Some(key) = text
                .get(range.clone())
                .and_then(|b| std::str::from_utf8(b).ok())
            else {
                continue;
            };
            let Ok(parsed) = keyfmt::parse(key) else {
                continue;
            };
            self.findings.push(Finding {
                path: path.to_owned(),
                line,
                column: range.start - line_start + 1,
                kind: if parsed.prefix == keyfmt::ROOT_PREFIX {
                    "root_key"
                } else {
                    "key"
                },
                start: keyfmt::start(&parsed),
                sha256: fingerprint(key),
                commit: commit.map(str::to_owned),
                key: KeyMaterial::new(key.to_owned()),
            });
        }
    }
}

pub fn run(args: ScanArgs) -> anyhow::Result<ExitCode> {
    let paths = if args.paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        args.paths.clone()
    };
    let mut scan = Scan::default();
    for path in &paths {
        if args.git {
            scan_git(path, &mut scan)?;
        } else {
            let meta = std::fs::symlink_metadata(path)
                .with_context(|| format!("cannot scan {}", path.display()))?;
            scan_path(path, &meta, &mut scan);
        }
    }

    let mut out = std::io::stdout().lock();
    match args.format {
        ScanFormat::Text => {
            for f in &scan.findings {
                let commit = f
                    .commit
                    .as_deref()
                    .map(|c| format!(" in commit {}", c.get(..12).unwrap_or(c)))
                    .unwrap_or_default();
                let kind = if f.kind == "root_key" {
                    "root key"
                } else {
                    "key"
                };
                writeln!(
                    out,
                    "{}:{}:{}: keyward {kind} {}… (sha256 {}){commit}",
                    f.path,
                    f.line,
                    f.column,
                    f.start,
                    f.sha256.get(..16).unwrap_or(&f.sha256)
                )?;
            }
        }
        ScanFormat::Json => {
            serde_json::to_writer_pretty(&mut out, &scan.findings)?;
            writeln!(out)?;
        }
        ScanFormat::Sarif => {
            serde_json::to_writer_pretty(&mut out, &sarif(&scan.findings))?;
            writeln!(out)?;
        }
    }
    out.flush()?;
    drop(out);

    let what = if args.git { "commit(s)" } else { "file(s)" };
    if scan.findings.is_empty() {
        eprintln!("keyward scan: no keyward keys in {} {what}", scan.read);
    } else {
        let roots = scan
            .findings
            .iter()
            .filter(|f| f.kind == "root_key")
            .count();
        eprintln!(
            "keyward scan: {} keyward key(s) ({roots} root key(s)) in {} {what}",
            scan.findings.len(),
            scan.read
        );
    }
    if args.report {
        report(&args.url, &scan.findings)?;
    } else if !scan.findings.is_empty() {
        eprintln!(
            "keyward scan: to shut them off, run again with --report (sends them to the server's POST /v1/leaks)"
        );
    }
    if scan.unreadable > 0 {
        eprintln!(
            "keyward scan: {} file(s) could not be read",
            scan.unreadable
        );
    }
    Ok(if scan.findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Scans a file, or a directory and everything under it except `.git`; symbolic links are
/// not followed (what they point to is scanned where it lives, if asked).
fn scan_path(path: &Path, meta: &std::fs::Metadata, scan: &mut Scan) {
    let shown = path.to_string_lossy().trim_start_matches("./").to_owned();
    if meta.is_dir() {
        let entries = match std::fs::read_dir(path) {
            Ok(entries) => entries,
            Err(e) => {
                eprintln!("keyward scan: cannot read directory {shown}: {e}");
                scan.unreadable += 1;
                return;
            }
        };
        let mut children: Vec<_> = entries.filter_map(Result::ok).collect();
        children.sort_by_key(std::fs::DirEntry::file_name);
        for child in children {
            if child.file_name() == ".git" {
                continue;
            }
            if let Ok(meta) = child.path().symlink_metadata() {
                scan_path(&child.path(), &meta, scan);
            }
        }
        return;
    }
    if !meta.is_file() {
        return;
    }
    if meta.len() > MAX_FILE_BYTES {
        eprintln!(
            "keyward scan: skipping {shown}: larger than {} MiB",
            MAX_FILE_BYTES >> 20
        );
        scan.unreadable += 1;
        return;
    }
    match std::fs::read(path) {
        Ok(bytes) => {
            scan.read += 1;
            scan.look(&bytes, &shown, 1, None);
        }
        Err(e) => {
            eprintln!("keyward scan: cannot read {shown}: {e}");
            scan.unreadable += 1;
        }
    }
}

/// Scans every line ever added in the repository at `repo`, on every branch and tag
/// (`git log --all -p`): a key deleted since is still in the history, and still leaked.
fn scan_git(repo: &Path, scan: &mut Scan) -> anyhow::Result<()> {
    let mut child = Command::new("git")
        .args(["-c", "core.quotePath=false", "-C"])
        .arg(repo)
        .args([
            "log",
            "--all",
            "-p",
            "--text",
            "--no-color",
            "--no-ext-diff",
            "--no-renames",
            "--unified=0",
            "--format=format:commit %H",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run git (is it installed?)")?;
    let stdout = child.stdout.take().context("git's output")?;
    let mut reader = BufReader::new(stdout);
    let (mut commit, mut path): (Option<String>, Option<String>) = (None, None);
    let (mut line_no, mut in_hunk) = (0_usize, false);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if let Some(sha) = text.strip_prefix(b"commit ") {
            commit = Some(String::from_utf8_lossy(sha).into_owned());
            scan.read += 1;
            (path, in_hunk) = (None, false);
        } else if text.starts_with(b"diff --git ") {
            (path, in_hunk) = (None, false);
        } else if let (false, Some(name)) = (in_hunk, text.strip_prefix(b"+++ ")) {
            let name = String::from_utf8_lossy(name);
            let name = name.trim_matches('"');
            path = name.strip_prefix("b/").map(str::to_owned);
        } else if let Some(hunk) = text.strip_prefix(b"@@ ") {
            // `@@ -a,b +c,d @@`: the added lines are numbered from c.
            line_no = String::from_utf8_lossy(hunk)
                .split_whitespace()
                .find_map(|part| part.strip_prefix('+'))
                .and_then(|c| c.split(',').next()?.parse().ok())
                .unwrap_or(1);
            in_hunk = true;
        } else if let (true, Some(added)) = (in_hunk, text.strip_prefix(b"+")) {
            if let Some(path) = &path {
                scan.look(added, path, line_no, commit.as_deref());
            }
            line_no += 1;
        } else if in_hunk && text.starts_with(b" ") {
            line_no += 1;
        }
    }
    let output = child.wait_with_output().context("waiting for git")?;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        bail!(
            "git log in {} failed: {}",
            repo.display(),
            err.lines().next().unwrap_or("no reason given")
        );
    }
    Ok(())
}

/// SARIF 2.1.0, for code-scanning dashboards (GitHub uploads it as is).
fn sarif(findings: &[Finding]) -> serde_json::Value {
    let results: Vec<serde_json::Value> = findings
        .iter()
        .map(|f| {
            let kind = if f.kind == "root_key" { "root key" } else { "key" };
            let mut result = json!({
                "ruleId": "keyward/leaked-key",
                "level": "error",
                "message": {"text": format!(
                    "A keyward {kind} ({}…) is in this file. Anyone who reads it can use it: report it (keyward scan --report) to shut it off, then remove it.",
                    f.start
                )},
                "locations": [{"physicalLocation": {
                    "artifactLocation": {"uri": f.path},
                    "region": {"startLine": f.line, "startColumn": f.column},
                }}],
                "partialFingerprints": {"keywardKeySha256/v1": f.sha256},
            });
            if let Some(commit) = &f.commit {
                result["properties"] = json!({"commit": commit});
            }
            result
        })
        .collect();
    json!({
        "version": "2.1.0",
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "runs": [{
            "tool": {"driver": {
                "name": "keyward",
                "version": env!("CARGO_PKG_VERSION"),
                "informationUri": "https://github.com/keyward/keyward",
                "rules": [{
                    "id": "keyward/leaked-key",
                    "name": "LeakedKeywardKey",
                    "shortDescription": {"text": "A keyward API key in a file"},
                    "fullDescription": {"text": "A string with a keyward key's format and a valid checksum: a live-format key, usable by whoever reads it."},
                    "defaultConfiguration": {"level": "error"},
                }],
            }},
            "results": results,
        }],
    })
}

/// Keys per report (the server takes at most 100).
const REPORT_BATCH: usize = 100;

/// Sends every key found to `{url}/v1/leaks`, one report per file (of at most
/// [`REPORT_BATCH`] keys), naming the file (and commit) as the source.
fn report(url: &str, findings: &[Finding]) -> anyhow::Result<()> {
    if findings.is_empty() {
        return Ok(());
    }
    let client = keyward_client::Client::anonymous(url)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut sent = 0;
    for group in findings.chunk_by(|a, b| a.path == b.path && a.commit == b.commit) {
        for batch in group.chunks(REPORT_BATCH) {
            let keys: Vec<keyward_client::Secret> = batch
                .iter()
                .map(|f| keyward_client::Secret::new(f.key.expose().to_owned()))
                .collect();
            let first = &batch[0];
            let source = match &first.commit {
                Some(commit) => format!("keyward scan: {} in commit {commit}", first.path),
                None => format!("keyward scan: {}", first.path),
            };
            sent += runtime
                .block_on(client.report_leaks(&keys, Some(&source)))
                .with_context(|| format!("cannot report to {url}"))?;
        }
    }
    eprintln!(
        "keyward scan: reported {sent} key(s) to {url}; live ones are shut off as each api's leak policy says"
    );
    Ok(())
}
