//! The dashboard in a real browser: Debian's headless Chromium, driven over WebDriver
//! (thirtyfour, through a chromedriver each test starts on a free loopback port), against a
//! Berth with four real `docker-registry` replicas. The page is read the way an operator reads
//! it (rows, markers, banners) and changed the way an operator changes it (clicks and typing);
//! the effects are checked in the admin API and in DNS answers (`dig`).
//!
//! Artifacts: `target/dashboard-screenshot.png` (laptop width) and
//! `target/dashboard-screenshot-phone.png` (phone width, whole page).

use std::future::Future;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use thirtyfour::prelude::*;

mod support;
use support::{bed, bed_with, free_port, routed_a, Berth, POLL, TOKEN};

const TOKYO: &str = "198.51.100.0/24";
/// Probes run every 200 ms and a region goes down after 2 failures; the page polls every 2 s
/// and Chromium may be slow on a loaded machine: this bounds every wait for the page.
const DEADLINE: Duration = Duration::from_secs(30);
const LAPTOP: (u32, u32) = (1400, 1000);
const PHONE_WIDTH: u32 = 390;

/// One browser at a time: each test runs four replicas, Berth and Chromium, and the probes'
/// 150 ms timeout must not starve on a small machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where cargo keeps build output; artifacts go beside `target/debug`.
fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is target/tmp")
        .to_path_buf()
}

/// `chromedriver` on a free loopback port, in its own process group: killing the group on
/// drop also ends the Chromium processes it started (killing the driver alone leaves them).
struct ChromeDriver {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl ChromeDriver {
    /// Start it on a free port; if another process took that port first (chromedriver then
    /// exits, or the port is found taken before it starts), on another one.
    fn start() -> ChromeDriver {
        for _ in 0..5 {
            if let Some(driver) = ChromeDriver::try_start() {
                return driver;
            }
        }
        panic!("chromedriver: five free ports in a row were taken before it could bind one");
    }

    fn try_start() -> Option<ChromeDriver> {
        let bin = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            eprintln!("chromedriver: port {port} was taken after free_port() chose it");
            return None;
        }
        let log = std::fs::File::create(dir.path().join("chromedriver.log")).expect("log file");
        let child = Command::new(&bin)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {bin} (apt-get install -y chromium chromium-driver): {e}")
            });
        let mut driver = ChromeDriver { child, port, dir };
        // Its log, not a connection, says it listens: a process that took the port would
        // accept the connection too.
        let end = Instant::now() + DEADLINE;
        loop {
            let log = driver.log();
            if log.contains("started successfully") {
                break;
            }
            let exited = driver.child.try_wait().expect("try_wait");
            if exited.is_some() && log.contains("port not available") {
                eprintln!("chromedriver: port {port} was taken before it bound it");
                return None;
            }
            assert!(
                exited.is_none() && Instant::now() < end,
                "chromedriver on port {port} did not come up ({exited:?}); log:\n{log}"
            );
            std::thread::sleep(POLL);
        }
        Some(driver)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default()
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let group = i32::try_from(self.child.id()).expect("pid fits in pid_t");
        // SAFETY: kill(2) with a negative pid signals the group this process leads; no memory
        // is shared with it.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// A headless Chromium session on the dashboard, with its own runtime so the test body stays
/// synchronous (Berth's test harness starts and stops runtimes of its own). The session is quit
/// on drop, also when the test fails, before chromedriver's process group is killed.
struct Browser {
    rt: tokio::runtime::Runtime,
    driver: Option<WebDriver>,
    _profile: tempfile::TempDir,
    chromedriver: ChromeDriver,
}

impl Browser {
    fn open(url: &str) -> Browser {
        let chromedriver = ChromeDriver::start();
        let profile = tempfile::tempdir().expect("tempdir");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut caps = DesiredCapabilities::chrome();
        caps.set_binary("/usr/bin/chromium").expect("binary");
        for arg in [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            &format!("--window-size={},{}", LAPTOP.0, LAPTOP.1),
            &format!("--user-data-dir={}", profile.path().display()),
        ] {
            caps.add_arg(arg).expect("arg");
        }
        let server = format!("http://127.0.0.1:{}", chromedriver.port);
        let driver = rt
            .block_on(WebDriver::new(server, caps))
            .unwrap_or_else(|e| {
                panic!(
                    "no Chromium session: {e}; chromedriver log:\n{}",
                    chromedriver.log()
                )
            });
        let browser = Browser {
            rt,
            driver: Some(driver),
            _profile: profile,
            chromedriver,
        };
        browser.run(|d| async move { d.goto(url).await });
        browser
    }

    /// Run one WebDriver step; a WebDriver error fails the test.
    fn run<T, F, Fut>(&self, step: F) -> T
    where
        F: FnOnce(WebDriver) -> Fut,
        Fut: Future<Output = WebDriverResult<T>>,
    {
        let d = self.driver.clone().expect("session open");
        self.rt.block_on(step(d)).expect("webdriver step")
    }

    /// What the page shows, as JSON (see `PAGE`).
    fn page(&self) -> Value {
        self.run(|d| async move { d.execute(PAGE, vec![]).await })
            .json()
            .clone()
    }

    /// Wait until the page satisfies `check`; on timeout fail with what it showed last.
    fn wait_for(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + DEADLINE;
        loop {
            let page = self.page();
            if check(&page) {
                return page;
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for the page to show {what}; it shows:\n{page:#}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn click(&self, css: &'static str) {
        self.run(|d| async move { d.find(By::Css(css)).await?.click().await });
    }

    fn type_into(&self, css: &'static str, text: &str) {
        let text = text.to_string();
        self.run(|d| async move {
            let e = d.find(By::Css(css)).await?;
            e.clear().await?;
            e.send_keys(text).await
        });
    }

    /// Make the window `width` wide and as tall as the page, so a screenshot shows all of it.
    fn whole_page(&self, width: u32) {
        self.run(|d| async move { d.set_window_rect(0, 0, width, LAPTOP.1).await });
        let page = self.wait_for("the page laid out again", |p| p["width"] == width);
        let height =
            page["height"].as_u64().expect("height") + page["chrome"].as_u64().expect("chrome");
        let height = u32::try_from(height).expect("fits").max(LAPTOP.1);
        self.run(|d| async move { d.set_window_rect(0, 0, width, height).await });
    }

    /// A screenshot of the window, scrolled to the top, saved beside `target/debug`.
    fn screenshot(&self, name: &str) -> PathBuf {
        self.run(|d| async move { d.execute("window.scrollTo(0, 0)", vec![]).await });
        let path = target_dir().join(name);
        let p = path.clone();
        self.run(|d| async move { d.screenshot(&p).await });
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(d) = self.driver.take() {
            let quit = async { tokio::time::timeout(Duration::from_secs(10), d.quit()).await };
            if self.rt.block_on(quit).is_err() {
                eprintln!("chromium did not quit; log:\n{}", self.chromedriver.log());
            }
        }
    }
}

/// The page as an operator sees it: one entry per table row with its marker's state, and the
/// banners, totals, "why" answer and events.
const PAGE: &str = r#"
const text = (sel) => { const e = document.querySelector(sel); return e ? e.textContent.trim() : null; };
const shown = (id) => { const e = document.getElementById(id); return !!e && !e.hidden; };
return {
  rows: [...document.querySelectorAll('#region-rows tr')].map((tr) => {
    const m = document.querySelector(`#markers .marker[data-region="${tr.dataset.region}"]`);
    return {
      name: tr.dataset.region,
      state: tr.dataset.state || null,
      badge: tr.querySelector('.badge').textContent,
      health: tr.querySelector('.health').textContent,
      enabled: tr.querySelector('input.switch').checked,
      switch_label: tr.querySelector('input.switch').getAttribute('aria-label'),
      error: tr.querySelector('.error').textContent,
      answers: tr.querySelector('.answers').textContent,
      proxy: tr.querySelector('.proxy-requests').textContent,
      proxy_total: tr.querySelector('.proxy-requests').title,
      proxy_bytes: tr.querySelector('.proxy-bytes').textContent,
      sessions: tr.querySelector('.sessions').textContent,
      spark_points: [...tr.querySelectorAll('.trend polyline')].map((p) => p.getAttribute('points').split(' ').length),
      marker: m ? m.getAttribute('data-state') : null,
      marker_label: m ? m.getAttribute('aria-label') : null,
    };
  }),
  stale: shown('stale'),
  stale_text: text('#stale'),
  stale_body: document.body.classList.contains('is-stale'),
  workers: shown('workers') ? text('#workers') : null,
  freshness: text('#freshness'),
  message: shown('message') ? text('#message-text') : null,
  dialog_open: document.getElementById('token-dialog').open,
  generation: text('#generation'),
  sticky: text('#sticky'),
  affinity: text('#affinity'),
  instance: text('#instance'),
  fail_open: text('#fail-open'),
  reload: text('#reload'),
  rcodes: [...document.querySelectorAll('#rcodes tr')].map((r) => r.dataset.rcode),
  why_region: text('.why-region'),
  why_explanation: text('#why-result .explanation'),
  presence: [...document.querySelectorAll('#why-result .presence li')].map((li) => ({
    region: li.dataset.region,
    state: li.dataset.state,
    text: li.textContent,
  })),
  events: [...document.querySelectorAll('#events li')].map((li) => ({
    kind: li.dataset.kind,
    region: li.querySelector('.region') ? li.querySelector('.region').textContent : null,
    time: li.querySelector('time').textContent,
    instance: li.querySelector('.instance') ? li.querySelector('.instance').textContent : null,
  })),
  cluster: shown('cluster') ? text('#cluster') : null,
  flag_notes: Object.fromEntries([...document.querySelectorAll('#region-rows tr')].map((tr) => [tr.dataset.region, tr.querySelector('.flag-note').textContent])),
  replication: shown('replication-card')
    ? [...document.querySelectorAll('#replication-rows tr')].map((tr) => ({
        region: tr.dataset.region,
        queued: tr.querySelector('.queued').textContent,
        present: tr.querySelector('.present').textContent,
        lag_p50: tr.querySelector('.lag-p50').textContent,
      }))
    : null,
  overflow_x: document.documentElement.scrollWidth > window.innerWidth,
  height: document.documentElement.scrollHeight,
  width: window.innerWidth,
  chrome: Math.max(0, window.outerHeight - window.innerHeight),
};
"#;

fn row<'a>(page: &'a Value, name: &str) -> &'a Value {
    page["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no row for {name}: {page:#}"))
}

fn all_healthy(page: &Value) -> bool {
    let rows = page["rows"].as_array().expect("rows");
    rows.len() == 4
        && rows
            .iter()
            .all(|r| r["state"] == "healthy" && r["marker"] == "healthy")
}

/// The admin API's view of one region (reads are open on loopback).
fn api_region(admin: &str, name: &str) -> Value {
    let mut resp = ureq::get(&format!("{admin}/api/v1/regions/{name}"))
        .call()
        .expect("admin API answers");
    serde_json::from_str(&resp.body_mut().read_to_string().expect("body")).expect("JSON")
}

/// Wait until the probes have found every region up: before that, a probe that timed out
/// on a loaded machine (150 ms) can leave a region down, and a client's first answer (which
/// sticks) would go elsewhere.
fn probed_up(admin: &str) {
    support::wait_until("every region probed up", Duration::from_secs(15), || {
        ["westus", "eastus", "westeurope", "southeastasia"]
            .iter()
            .all(|r| api_region(admin, r)["health"] == "up")
    });
}

#[test]
fn the_page_shows_every_region_and_turns_a_stopped_replica_down() {
    let _one = serial();
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let mut bed = bed(&rt);
    let berth = Berth::start(&bed.config);
    let admin = berth.admin();
    probed_up(&admin);
    // Some traffic, so answers and queries are not all zero.
    assert_eq!(routed_a(berth.dns, TOKYO), ["192.0.2.40"]);

    let browser = Browser::open(&format!("{admin}/"));
    let page = browser.wait_for("four healthy regions", all_healthy);
    let names: Vec<&str> = page["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["westus", "eastus", "westeurope", "southeastasia"]);
    for r in page["rows"].as_array().expect("rows") {
        assert_eq!(r["enabled"], true, "{r}");
        assert_eq!(r["health"], "up", "{r}");
        // The proxy runs: its figures are numbers (no request yet), not a dash.
        assert_ne!(r["proxy"], "–", "{r}");
        assert_ne!(r["sessions"], "–", "{r}");
        assert_eq!(
            r["switch_label"],
            format!("{}: endpoint enabled", r["name"].as_str().expect("name"))
        );
    }
    assert_eq!(page["generation"], "1");
    assert_eq!(page["fail_open"], "no");
    assert_eq!(page["affinity"], "0 entries");
    // Which Berth this is: its host name and version.
    let instance = page["instance"].as_str().expect("instance");
    assert!(
        instance.contains(&format!("berth {}", env!("CARGO_PKG_VERSION"))),
        "{instance}"
    );
    assert!(!instance.starts_with(' '), "a host name first: {instance}");

    // A blob pushed through the proxy: requests, bytes, the affinity and the history show.
    let proxy = berth.running().proxy_addr.expect("proxy listener");
    let _ = push_blob(proxy);
    let page = browser.wait_for("proxy figures after a push", |p| {
        row(p, "westus")["proxy_total"]
            .as_str()
            .is_some_and(|t| t.starts_with("3 proxied"))
            && p["affinity"] == "1 entries"
            // A few polls of history (one sample per poll after the first).
            && row(p, "westus")["spark_points"][0].as_u64() >= Some(3)
    });
    let w = row(&page, "westus");
    for field in ["proxy", "proxy_bytes", "sessions"] {
        assert!(
            !["–", "", "…"].contains(&w[field].as_str().unwrap_or("")),
            "{field}: {w}"
        );
    }
    assert!(
        w["spark_points"]
            .as_array()
            .is_some_and(|a| a.len() == 2 && a.iter().all(|n| n.as_u64() >= Some(3))),
        "two sparklines with history: {w}"
    );
    assert_eq!(page["reload"], "none since start");
    assert_eq!(
        page["rcodes"],
        json!(["NOERROR", "NXDOMAIN", "REFUSED", "SERVFAIL", "FORMERR", "NOTIMP"])
    );
    browser.wait_for("the Tokyo client in the sticky table", |p| {
        p["sticky"] == "1 client"
    });
    assert_eq!(page["stale"], false);

    // The "why" box: the same decision and explanation as `berth route`.
    browser.type_into("#why-client", "198.51.100.7");
    browser.click("#why-form button[type=submit]");
    let page = browser.wait_for("the why answer", |p| !p["why_region"].is_null());
    assert_eq!(page["why_region"], "southeastasia");
    let explanation = page["why_explanation"].as_str().expect("explanation");
    assert!(
        explanation.contains("chosen southeastasia"),
        "{explanation}"
    );

    // westeurope's replica stops: its row and marker turn down, the event is listed.
    bed.regs[2].stop();
    let page = browser.wait_for("westeurope down", |p| {
        let r = row(p, "westeurope");
        r["state"] == "down" && r["marker"] == "down"
    });
    let we = row(&page, "westeurope");
    assert_eq!(we["health"], "down");
    assert_eq!(we["badge"], "down");
    assert_eq!(we["marker_label"], "westeurope: down");
    assert!(
        we["error"]
            .as_str()
            .expect("error")
            .contains("Connection refused"),
        "{we}"
    );
    assert_eq!(row(&page, "westus")["state"], "healthy");
    let page = browser.wait_for("the region-down event", |p| {
        p["events"]
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["kind"] == "region-down" && e["region"] == "westeurope")
    });
    assert_eq!(page["overflow_x"], false, "laptop width scrolls sideways");

    // For the pictures: eastus disabled by the API, and DNS traffic the page turns into a rate.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let resp = agent
        .put(&format!("{admin}/api/v1/regions/eastus"))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .content_type("application/json")
        .send("{\"endpoint_enabled\": false}")
        .expect("admin API answers");
    assert_eq!(resp.status().as_u16(), 200);
    let end = Instant::now() + DEADLINE;
    loop {
        // Polled, not asserted each time: on a loaded machine a 150 ms probe can flap
        // southeastasia for a moment; the deadline still fails a wrong answer that stays.
        let answer = routed_a(berth.dns, TOKYO);
        let p = browser.page();
        let rate = row(&p, "southeastasia")["answers"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if answer == ["192.0.2.40"]
            && row(&p, "eastus")["marker"] == "disabled"
            && rate.parse::<f64>().is_ok_and(|r| r > 0.0)
        {
            break;
        }
        assert!(
            Instant::now() < end,
            "no answer rate on the page (Tokyo answered {answer:?}): {p:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The whole page at laptop width, in one picture.
    browser.whole_page(LAPTOP.0);
    browser.wait_for("the page at its full height", |p| {
        row(p, "westeurope")["state"] == "down"
    });
    let shot = browser.screenshot("dashboard-screenshot.png");
    assert!(std::fs::metadata(&shot).expect("screenshot").len() > 10_000);

    // A phone: one column, no sideways scrolling; the whole page in one picture.
    browser.whole_page(PHONE_WIDTH);
    browser.wait_for("the page at phone width", |p| {
        p["overflow_x"] == false && row(p, "westeurope")["state"] == "down"
    });
    browser.screenshot("dashboard-screenshot-phone.png");
}

#[test]
fn the_switch_needs_the_right_token_and_moves_clients_away() {
    let _one = serial();
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let bed = bed(&rt);
    let berth = Berth::start(&bed.config);
    let admin = berth.admin();
    probed_up(&admin);
    assert_eq!(routed_a(berth.dns, TOKYO), ["192.0.2.40"]);
    let browser = Browser::open(&format!("{admin}/"));
    browser.wait_for("four healthy regions", all_healthy);

    // A wrong token: an error on the page, nothing changed anywhere.
    browser.click("#switch-southeastasia");
    browser.wait_for("the token dialog", |p| p["dialog_open"] == true);
    browser.type_into("#token-input", "not-the-token");
    browser.click("#token-ok");
    let page = browser.wait_for("an error message", |p| !p["message"].is_null());
    let message = page["message"].as_str().expect("message");
    assert!(
        message.contains("Wrong admin token") && message.contains("southeastasia was not changed"),
        "{message}"
    );
    assert_eq!(page["dialog_open"], false);
    assert_eq!(row(&page, "southeastasia")["enabled"], true);
    assert_eq!(
        api_region(&admin, "southeastasia")["endpoint_enabled"],
        true
    );
    assert_eq!(routed_a(berth.dns, TOKYO), ["192.0.2.40"]);
    // Polls keep showing it enabled.
    browser.wait_for("a later poll", |p| {
        p["freshness"] != page["freshness"] && row(p, "southeastasia")["enabled"] == true
    });

    // The wrong token was forgotten: the switch asks again; the right one disables the region.
    browser.click("#switch-southeastasia");
    browser.wait_for("the token dialog again", |p| p["dialog_open"] == true);
    browser.type_into("#token-input", TOKEN);
    browser.click("#token-ok");
    let page = browser.wait_for("southeastasia disabled", |p| {
        p["message"] == "southeastasia disabled." && row(p, "southeastasia")["state"] == "disabled"
    });
    let sea = row(&page, "southeastasia");
    assert_eq!(sea["enabled"], false);
    assert_eq!(sea["badge"], "disabled");
    browser.wait_for("the disabled marker", |p| {
        row(p, "southeastasia")["marker"] == "disabled"
    });
    assert_eq!(
        api_region(&admin, "southeastasia")["endpoint_enabled"],
        false
    );
    // The next answer for the Tokyo client avoids it: westus is next nearest.
    assert_eq!(routed_a(berth.dns, TOKYO), ["192.0.2.10"]);
    browser.wait_for("the region-disabled event", |p| {
        p["events"]
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["kind"] == "region-disabled" && e["region"] == "southeastasia")
    });

    // The token is kept for the tab: enabling again asks nothing.
    browser.click("#switch-southeastasia");
    let page = browser.wait_for("southeastasia enabled", |p| {
        p["message"] == "southeastasia enabled." && row(p, "southeastasia")["enabled"] == true
    });
    assert_eq!(page["dialog_open"], false);
    assert_eq!(
        api_region(&admin, "southeastasia")["endpoint_enabled"],
        true
    );
}

#[test]
fn the_page_says_it_is_stale_while_the_api_is_away_and_recovers() {
    let _one = serial();
    let rt = tokio::runtime::Runtime::new().expect("rt");
    // A fixed admin port, so a second Berth can take the first one's place.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut bed = bed_with(&rt, &[("127.0.0.1:9180", &listen)]);
    let mut berth = Berth::start(&bed.config);
    let admin = berth.admin();
    assert_eq!(admin, format!("http://{listen}"));
    let browser = Browser::open(&format!("{admin}/"));
    let before = browser.wait_for("four healthy regions", all_healthy);
    assert_eq!(before["stale"], false);
    assert_eq!(before["stale_body"], false);

    berth.stop();
    let page = browser.wait_for("the stale banner", |p| p["stale"] == true);
    let text = page["stale_text"].as_str().expect("banner text");
    assert!(
        text.starts_with("Stale.") && text.contains("unreachable"),
        "{text}"
    );
    assert_eq!(page["stale_body"], true);
    // The last figures stay on the page, marked as old.
    let states = |p: &Value| -> Vec<(String, String)> {
        p["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| (r["name"].to_string(), r["state"].to_string()))
            .collect()
    };
    assert_eq!(states(&page), states(&before));
    browser.screenshot("dashboard-screenshot-stale.png");

    // While Berth is away a replica stops; the new Berth finds it down, and the page shows that.
    bed.regs[1].stop();
    let mut berth = Berth::start(&bed.config);
    assert_eq!(berth.admin(), admin);
    // westus too: on a loaded machine its first probe (150 ms timeout) can fail once.
    let page = browser.wait_for("the page live again, eastus down, westus healthy", |p| {
        p["stale"] == false
            && row(p, "eastus")["state"] == "down"
            && row(p, "westus")["state"] == "healthy"
    });
    assert_eq!(page["stale_body"], false);
    assert!(
        page["freshness"]
            .as_str()
            .expect("freshness")
            .starts_with("Live"),
        "{page:#}"
    );
    berth.stop();
}

/// From a non-loopback peer (simulated: the router sees 203.0.113.9 as the peer address), the
/// page's files are served without a token, while the API's reads still want it.
#[test]
fn off_loopback_the_page_needs_no_token_but_its_data_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = support::demo_config(dir.path(), &[], "");
    let live = berth::live::Live::load(&config).expect("demo config loads");
    let peer: std::net::SocketAddr = "203.0.113.9:40000".parse().expect("literal");
    let router = berth::admin::router(live, Some(TOKEN.to_string()))
        .layer(axum::extract::connect_info::MockConnectInfo(peer));
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    rt.spawn(async move { axum::serve(listener, router.into_make_service()).await });

    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let get = |path: &str, token: Option<&str>| {
        let mut req = agent.get(&format!("{base}{path}"));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let mut resp = req.call().expect("server answers");
        let kind = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let csp = resp.headers().contains_key("content-security-policy");
        let body = resp.body_mut().read_to_string().expect("body");
        (resp.status().as_u16(), kind, csp, body)
    };
    let (status, kind, csp, body) = get("/", None);
    assert_eq!(
        (status, kind.as_str(), csp),
        (200, "text/html; charset=utf-8", true)
    );
    assert!(body.contains("<script src=\"/dashboard/app.js\""), "{body}");
    for (path, media) in [
        ("/dashboard/app.js", "text/javascript; charset=utf-8"),
        ("/dashboard/style.css", "text/css; charset=utf-8"),
        ("/dashboard/world.svg", "image/svg+xml"),
    ] {
        let (status, kind, _, body) = get(path, None);
        assert_eq!((status, kind.as_str()), (200, media), "{path}");
        assert!(!body.is_empty(), "{path}");
    }
    let (status, _, _, body) = get("/api/v1/regions", None);
    assert_eq!(status, 401, "{body}");
    let (status, _, _, _) = get("/api/v1/regions", Some(TOKEN));
    assert_eq!(status, 200);
    // Nothing else is public: an unknown path under /dashboard/ is not a file.
    let (status, _, _, _) = get("/dashboard/secret", None);
    assert_eq!(status, 401);
}

/// Issue 8: a worker that panicked was replaced, but the operator must hear of it: the page
/// shows a warning from the API's `workers` figures.
#[test]
fn the_page_warns_when_a_worker_panicked() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = support::demo_config(dir.path(), &[], "");
    let berth = Berth::start(&config);
    let browser = Browser::open(&berth.admin());
    let page = browser.wait_for("the regions", |p| {
        p["rows"].as_array().is_some_and(|r| r.len() == 4)
    });
    assert_eq!(page["workers"], Value::Null, "no warning before any panic");
    let workers = berth.running().live.metrics.workers.clone();
    let udp = workers.names().into_iter().next().expect("a UDP worker");
    assert!(workers.inject_panic(&udp));
    let page = browser.wait_for("the workers warning", |p| p["workers"].is_string());
    let text = page["workers"].as_str().expect("text");
    assert!(
        text.starts_with(
            "Workers. 1 worker panic since start (dns-udp 1); each worker was replaced"
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!("Last: {udp}: panic injected")),
        "{text}"
    );
}

/// Issue 12: with `[replication]`, the page shows a replication panel; after a push through
/// the proxy every region shows the image present, the three copies with their lag. Without it (the other
/// tests' config) the panel stays hidden. The "why" box, given the image, lists its presence
/// per region.
#[test]
fn the_replication_panel_shows_backlog_and_lag_after_a_push() {
    let _one = serial();
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let mut regs: Vec<support::Registry> = (0..4).map(|_| support::Registry::new()).collect();
    for r in regs.iter_mut() {
        rt.block_on(r.start());
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let ups: Vec<(String, String)> = (0..4)
        .map(|i| {
            (
                format!("upstream = \"http://127.0.0.1:{}\"", 5001 + i),
                format!("upstream = \"{}\"", regs[i].upstream()),
            )
        })
        .collect();
    let all: Vec<(&str, &str)> = ups.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let config = support::demo_config_replicated(dir.path(), &all, "");
    let berth = Berth::start(&config);
    let browser = Browser::open(&berth.admin());
    browser.wait_for("the empty replication panel", |p| {
        p["replication"].is_array()
    });
    let proxy = berth.running().proxy_addr.expect("proxy");
    let digest = push_blob(proxy);
    push_manifest(proxy, &digest);
    // The region pushed to counts as present too (without a lag).
    let page = browser.wait_for("the image present in all four regions", |p| {
        p["replication"].as_array().is_some_and(|rows| {
            rows.iter()
                .filter(|r| r["present"] == "1" && r["queued"] == "0")
                .count()
                == 4
        })
    });
    let lags = page["replication"]
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["lag_p50"].as_str().is_some_and(|l| l.ends_with(" s")))
        .count();
    assert_eq!(lags, 3, "a lag for each destination: {page:#}");

    // The "why" box with an image: its presence in each region, the client's region marked.
    browser.type_into("#why-client", "198.51.100.7");
    browser.type_into("#why-image", "team/app:1.0");
    browser.click("#why-form button[type=submit]");
    let page = browser.wait_for("the image's presence in the why box", |p| {
        p["presence"].as_array().is_some_and(|l| l.len() == 4)
    });
    let presence = page["presence"].as_array().expect("presence");
    assert!(presence.iter().all(|p| p["state"] == "present"), "{page:#}");
    let region = page["why_region"].as_str().expect("why region");
    let mine = presence
        .iter()
        .find(|p| p["region"] == region)
        .expect("the client's region listed");
    assert!(
        mine["text"]
            .as_str()
            .is_some_and(|t| t.contains("this client's region")),
        "{page:#}"
    );
}

/// PUT a manifest naming `blob` as its config and only layer, as `team/app:1.0`.
fn push_manifest(proxy: std::net::SocketAddr, blob: &str) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let size = b"a blob pushed through the dashboard test".len();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob, "size": size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": blob, "size": size}],
    });
    let r = agent
        .put(&format!("http://{proxy}/v2/team/app/manifests/1.0"))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .send(manifest.to_string().as_bytes())
        .expect("manifest PUT");
    assert_eq!(r.status().as_u16(), 201);
}

/// Push one blob through the proxy as a registry client does: start an upload, then PUT
/// it whole with its digest (three requests: POST, PUT, and a HEAD to check it).
fn push_blob(proxy: std::net::SocketAddr) -> String {
    use sha2::Digest as _;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let body = b"a blob pushed through the dashboard test".to_vec();
    let hex: String = sha2::Sha256::digest(&body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let digest = format!("sha256:{hex}");
    let r = agent
        .post(&format!("http://{proxy}/v2/team/app/blobs/uploads/"))
        .send_empty()
        .expect("upload starts");
    assert_eq!(r.status().as_u16(), 202);
    let loc = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("Location")
        .to_string();
    let url = if loc.starts_with("http") {
        loc
    } else {
        format!("http://{proxy}{loc}")
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let r = agent
        .put(&format!("{url}{sep}digest={digest}"))
        .header("Content-Type", "application/octet-stream")
        .send(&body[..])
        .expect("upload ends");
    assert_eq!(r.status().as_u16(), 201);
    let r = agent
        .head(&format!("http://{proxy}/v2/team/app/blobs/{digest}"))
        .call()
        .expect("blob");
    assert_eq!(r.status().as_u16(), 200);
    digest
}

/// Issue 11: with `[cluster]`, a flag's provenance (who, why, until when) shows in its row,
/// each event names the instance that saw it, and while etcd is unreachable a banner says the
/// page shows the last shared state and changes are refused.
#[test]
fn with_a_cluster_the_page_shows_provenance_instances_and_an_unreachable_etcd() {
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let (client, peer) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{client}");
    let mut etcd = support::single_etcd(dir.path(), "d", &url, peer)
        .spawn()
        .expect("etcd runs (apt-get install etcd-server)");
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).expect("token");
    let config = support::demo_config(
        dir.path(),
        &[(
            "token_env = \"BERTH_ADMIN_TOKEN\"",
            "token_file = \"token\"",
        )],
        &format!("[cluster]\netcd = [\"{url}\"]\nprefix = \"/dash\"\ninstance = \"ams-1\"\n"),
    );
    let berth = Berth::start(&config);
    let admin = berth.admin();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let body =
        json!({"endpoint_enabled": false, "reason": "kernel upgrade", "by": "ana", "for": "2h"});
    let end = Instant::now() + DEADLINE;
    // Start-up waits for etcd (bounded); a change is refused until the instance is connected.
    while agent
        .put(&format!("{admin}/api/v1/regions/westus"))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .content_type("application/json")
        .send(body.to_string())
        .expect("admin API answers")
        .status()
        .as_u16()
        != 200
    {
        assert!(Instant::now() < end, "the flag change was never taken");
        std::thread::sleep(POLL);
    }
    let browser = Browser::open(&admin);
    let page = browser.wait_for("westus's provenance and an event by ams-1", |p| {
        p["flag_notes"]["westus"]
            .as_str()
            .is_some_and(|n| n.contains("by ana") && n.contains("kernel upgrade"))
            && p["events"].as_array().is_some_and(|e| {
                e.iter()
                    .any(|e| e["region"] == "westus" && e["instance"] == "@ams-1")
            })
    });
    assert_eq!(page["cluster"], Value::Null, "no banner while etcd answers");
    let note = page["flag_notes"]["westus"].as_str().expect("note");
    assert!(note.contains("until"), "a 2h window shows its end: {note}");

    let _ = etcd.kill();
    let _ = etcd.wait();
    let page = browser.wait_for("the cluster banner", |p| p["cluster"].is_string());
    let text = page["cluster"].as_str().expect("text");
    assert!(
        text.starts_with("Cluster. etcd is unreachable from ams-1: serving the last shared state"),
        "{text}"
    );
    assert!(
        page["flag_notes"]["westus"]
            .as_str()
            .is_some_and(|n| n.contains("by ana")),
        "the last shared state still shows: {page:#}"
    );
}
