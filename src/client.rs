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
