//! A small blocking client for the admin API, used by the CLI (`berth region ...`,
//! `berth route --admin`). Errors carry the API's own `{"error": ...}` text.

use std::time::Duration;

use serde_json::Value;

/// The token for changes comes from this environment variable (as the demo server's does).
pub const TOKEN_ENV: &str = "BERTH_ADMIN_TOKEN";

pub struct AdminClient {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl AdminClient {
    pub fn new(base: &str, token: Option<String>) -> AdminClient {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        AdminClient {
            base: base_url(base),
            token: token.filter(|t| !t.is_empty()),
            agent,
        }
    }

    fn finish(
        &self,
        what: &str,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<Value> {
        let mut resp = resp.map_err(|e| {
            anyhow::anyhow!("{what}: cannot reach the admin API at {}: {e}", self.base)
        })?;
        let status = resp.status();
        let body: Value = resp.body_mut().read_json().map_err(|e| {
            anyhow::anyhow!("{what}: the admin API answered {status} with no JSON: {e}")
        })?;
        if !status.is_success() {
            let msg = body
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("(no error text)");
            if status == 401 {
                let hint = if self.token.is_some() {
                    format!("{TOKEN_ENV} holds a token the server does not accept")
                } else {
                    format!("set {TOKEN_ENV} to the server's admin token")
                };
                anyhow::bail!("{what}: {status}: {msg} ({hint})");
            }
            anyhow::bail!("{what}: {status}: {msg}");
        }
        Ok(body)
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        self.finish(&format!("GET {path}"), req.call())
    }

    pub fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let mut req = self.agent.put(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        self.finish(&format!("PUT {path}"), req.send_json(body))
    }

    pub fn post(&self, path: &str) -> anyhow::Result<Value> {
        let mut req = self.agent.post(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        self.finish(&format!("POST {path}"), req.send_empty())
    }
}

/// The admin API's base URL: `host:port` alone means plain HTTP (as the admin listener
/// serves); a trailing slash is dropped.
pub fn base_url(admin: &str) -> String {
    let admin = admin.trim_end_matches('/');
    if admin.contains("://") {
        admin.to_string()
    } else {
        format!("http://{admin}")
    }
}

/// Percent-encode a query value (addresses and names only need a few characters escaped).
pub fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `berth region list` as a table.
pub fn render_regions(v: &Value) -> String {
    let mut out = format!(
        "{:<16} {:<8} {:<8} {:>10} {:>9}  {}\n",
        "REGION", "ENABLED", "HEALTH", "PROBE ms", "ANSWERS", "LAST ERROR"
    );
    for r in v["regions"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<16} {:<8} {:<8} {:>10} {:>9}  {}\n",
            r["name"].as_str().unwrap_or("?"),
            r["endpoint_enabled"]
                .as_bool()
                .map_or("?", |b| if b { "yes" } else { "no" }),
            r["health"].as_str().unwrap_or("?"),
            r["probe_latency_ms"]
                .as_f64()
                .map_or("-".to_string(), |ms| format!("{ms:.1}")),
            r["answers"].as_u64().unwrap_or(0),
            r["last_error"].as_str().unwrap_or("-"),
        ));
    }
    for r in v["regions"].as_array().into_iter().flatten() {
        if let Some(line) = render_flag(r) {
            out.push_str(&line);
        }
    }
    for n in v["routed_names"].as_array().into_iter().flatten() {
        if n["fail_open"].as_bool() == Some(true) {
            out.push_str(&format!(
                "{}: FAILING OPEN (no enabled region is healthy)\n",
                n["name"].as_str().unwrap_or("?")
            ));
        }
    }
    out
}

/// "westus: disabled by ana at 2026-... (unix ms): maintenance; until ..." for a flag with
/// provenance; `None` for a region whose flag was never set.
fn render_flag(r: &Value) -> Option<String> {
    let f = r.get("flag").filter(|f| f.is_object())?;
    let state = if f["endpoint_enabled"].as_bool() == Some(false) {
        "disabled"
    } else {
        "enabled"
    };
    let mut line = format!("{}: {state}", r["name"].as_str().unwrap_or("?"));
    if let Some(by) = f["by"].as_str() {
        line.push_str(&format!(" by {by}"));
    }
    if let Some(at) = f["at_ms"].as_u64() {
        line.push_str(&format!(" at unix ms {at}"));
    }
    if let Some(reason) = f["reason"].as_str() {
        line.push_str(&format!(": {reason}"));
    }
    if let Some(until) = f["until_ms"].as_u64() {
        line.push_str(&format!(" (until unix ms {until})"));
    }
    line.push('\n');
    Some(line)
}

/// `berth cluster status`: connectivity, members and their config hashes, and each
/// instance's verdict per region beside the shared one.
pub fn render_cluster(v: &Value) -> String {
    if v["enabled"].as_bool() != Some(true) {
        return "not clustered: this instance has no [cluster] section (flags live in its state file)\n"
            .to_string();
    }
    let mut out = format!(
        "instance {}: etcd {} ({}), health_quorum {}, revision {}\n",
        v["instance"].as_str().unwrap_or("?"),
        if v["connected"].as_bool() == Some(true) {
            "connected"
        } else {
            "UNREACHABLE: serving the last shared state, changes refused"
        },
        v["etcd"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(|e| e.as_str())
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default(),
        v["health_quorum"].as_str().unwrap_or("?"),
        v["revision"],
    );
    if let Some(e) = v["last_error"].as_str() {
        out.push_str(&format!("last etcd error: {e}\n"));
    }
    out.push_str(&format!(
        "{:<20} {:<10} {:<18} {}\n",
        "MEMBER", "VERSION", "CONFIG HASH", "ADMIN"
    ));
    for m in v["members"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<20} {:<10} {:<18} {}\n",
            m["instance"].as_str().unwrap_or("?"),
            m["version"].as_str().unwrap_or("?"),
            m["config_hash"].as_str().unwrap_or("?"),
            m["admin"].as_str().unwrap_or("-"),
        ));
    }
    if v["config_hashes_differ"].as_bool() == Some(true) {
        out.push_str("WARNING: members run different configs (config hashes differ)\n");
    }
    for r in v["regions"].as_array().into_iter().flatten() {
        let verdicts: Vec<String> = r["verdicts"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(i, ok)| {
                format!(
                    "{i}={}",
                    if ok.as_bool() == Some(true) {
                        "up"
                    } else {
                        "down"
                    }
                )
            })
            .collect();
        out.push_str(&format!(
            "{}: shared {} [{}]\n",
            r["name"].as_str().unwrap_or("?"),
            if r["healthy"].as_bool() == Some(true) {
                "up"
            } else {
                "down"
            },
            verdicts.join(" ")
        ));
    }
    out
}

/// `REPOSITORY[:TAG]` or `REPOSITORY@DIGEST` -> (repository, reference); no tag is `latest`.
pub fn split_image(image: &str) -> (&str, &str) {
    if let Some((repo, digest)) = image.split_once('@') {
        return (repo, digest);
    }
    // A ':' after the last '/' is the tag's (before it, a registry's port).
    match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => (&image[..i], &image[i + 1..]),
        _ => (image, "latest"),
    }
}

fn secs(v: &Value) -> String {
    v.as_f64().map_or("-".to_string(), |s| format!("{s:.2}"))
}

/// `berth replication status` as a table.
pub fn render_replication(v: &Value) -> String {
    let mut out = format!(
        "{:<16} {:>7} {:>8} {:>8} {:>7} {:>10} {:>10}\n",
        "REGION", "QUEUED", "PRESENT", "PENDING", "FAILED", "LAG p50 s", "LAG p99 s"
    );
    for (name, r) in v["regions"].as_object().into_iter().flatten() {
        out.push_str(&format!(
            "{:<16} {:>7} {:>8} {:>8} {:>7} {:>10} {:>10}\n",
            name,
            r["queued_jobs"].as_u64().unwrap_or(0),
            r["present"].as_u64().unwrap_or(0),
            r["pending"].as_u64().unwrap_or(0),
            r["failed"].as_u64().unwrap_or(0),
            secs(&r["lag_p50_seconds"]),
            secs(&r["lag_p99_seconds"]),
        ));
    }
    out.push_str(&format!(
        "copied: {} bytes\n",
        v["copied_bytes"].as_u64().unwrap_or(0)
    ));
    for f in v["failures"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "FAILED {}@{} -> {}: {}\n",
            f["repository"].as_str().unwrap_or("?"),
            f["digest"].as_str().unwrap_or("?"),
            f["region"].as_str().unwrap_or("?"),
            f["error"].as_str().unwrap_or("?"),
        ));
    }
    out
}

/// `berth replication status REPOSITORY[:TAG]` as a table.
pub fn render_image(v: &Value) -> String {
    let mut out = format!(
        "{}:{} = {}\n{:<16} {:<8} {:>8}  {}\n",
        v["repository"].as_str().unwrap_or("?"),
        v["reference"].as_str().unwrap_or("?"),
        v["digest"].as_str().unwrap_or("?"),
        "REGION",
        "STATE",
        "LAG s",
        "LAST ERROR"
    );
    for (name, p) in v["regions"].as_object().into_iter().flatten() {
        out.push_str(&format!(
            "{:<16} {:<8} {:>8}  {}\n",
            name,
            p["state"].as_str().unwrap_or("?"),
            secs(&p["lag_seconds"]),
            p["last_error"].as_str().unwrap_or("-"),
        ));
    }
    out
}
