//! Running Berth under a supervisor, and the files in `deploy/`: the real `berth serve` with a
//! `NOTIFY_SOCKET` this test reads (systemd's `Type=notify` protocol) and `/healthz` and
//! `/readyz` over HTTP; the systemd unit checked by `systemd-analyze`; the Kubernetes manifests
//! parsed by Python's YAML reader (Debian `python3-yaml`) and held against Berth's ports and
//! paths, their config checked by `berth check-config`; the container build file.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::Value;

mod support;
use support::{demo_config, repo, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);

/// An upstream that reads each request and answers none until [`Held::release`]; from then
/// on every held and later request gets 200. A probe of it hangs until released.
struct Held {
    addr: SocketAddr,
    released: Arc<(Mutex<bool>, Condvar)>,
}

impl Held {
    fn start() -> Held {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let released = Arc::new((Mutex::new(false), Condvar::new()));
        let gate = released.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { break };
                let gate = gate.clone();
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let (lock, cv) = &*gate;
                    let mut open = lock.lock().expect("gate");
                    while !*open {
                        open = cv.wait(open).expect("gate");
                    }
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                    );
                });
            }
        });
        Held { addr, released }
    }

    fn release(&self) {
        let (lock, cv) = &*self.released;
        *lock.lock().expect("gate") = true;
        cv.notify_all();
    }
}

/// `berth serve` as a child process, killed on drop.
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The next datagram on the notify socket, as text.
fn notification(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .expect("a notification from berth before the read timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn get(url: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent.get(url).call().expect("admin listener answers");
    let body = resp.body_mut().read_to_string().expect("body");
    (resp.status().as_u16(), body)
}

fn signal(child: &Child, name: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill -{name}");
}

/// systemd's side of `Type=notify`: READY=1 once the config is loaded and the listeners are
/// bound (with a STATUS saying where), RELOADING=1 and READY=1 around a SIGHUP reload,
/// STOPPING=1 at SIGTERM. Meanwhile `/healthz` is 200 from the start and `/readyz` is 503,
/// naming the region, until the first probe round has ended, then 200.
#[test]
fn notify_socket_and_readiness_of_the_real_binary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let held = Held::start();
    let upstream = format!(
        "upstream = \"http://{}\"\nprobe = {{ interval = \"60s\", timeout = \"60s\" }}",
        held.addr
    );
    let config = demo_config(
        dir.path(),
        &[("upstream = \"http://127.0.0.1:5001\"", &upstream)],
        "",
    );
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    // A deadline for a message that must come, not a timing assertion.
    socket.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let log = std::fs::File::create(dir.path().join("berth.log")).expect("log");
    let berth = Served(
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &socket_path)
            .env("BERTH_LOG", "info")
            .env_remove("BERTH_ADMIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("berth runs"),
    );

    let ready = notification(&socket);
    let mut lines = ready.lines();
    assert_eq!(lines.next(), Some("READY=1"), "{ready}");
    let status = lines.next().expect("a STATUS line");
    assert!(
        status.starts_with("STATUS=serving DNS on 127.0.0.1:"),
        "{status}"
    );
    let admin = status
        .rsplit("admin on ")
        .next()
        .expect("the admin address in the status");
    let admin = format!("http://{admin}");

    assert_eq!(get(&format!("{admin}/healthz")), (200, "ok\n".to_string()));
    // westus's probe hangs until released: the other regions' probes end (refused), westus
    // is what readiness waits for.
    wait_until("only westus unprobed", DEADLINE, || {
        get(&format!("{admin}/readyz"))
            == (
                503,
                "not ready: first probe round not done: westus\n".to_string(),
            )
    });
    let metrics = get(&format!("{admin}/metrics")).1;
    assert!(metrics.lines().any(|l| l == "berth_ready 0"), "{metrics}");

    held.release();
    wait_until("ready after the first probe round", DEADLINE, || {
        get(&format!("{admin}/readyz")) == (200, "ready\n".to_string())
    });
    assert_eq!(get(&format!("{admin}/healthz")).0, 200);

    signal(&berth.0, "HUP");
    assert_eq!(notification(&socket), "RELOADING=1");
    assert_eq!(notification(&socket), "READY=1");
    assert_eq!(get(&format!("{admin}/readyz")).0, 200);

    signal(&berth.0, "TERM");
    assert_eq!(notification(&socket), "STOPPING=1");
    let mut berth = berth;
    let exit = berth.0.wait().expect("wait");
    assert!(exit.success(), "{exit:?}");
}

/// The unit with `ExecStart` pointing at the built binary (verify wants it to exist).
fn unit_for_test(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("deploy/systemd/berth.service")).expect("unit");
    let exec = "ExecStart=/usr/local/bin/berth serve --config /etc/berth/berth.toml";
    assert!(text.contains(exec), "the unit runs {exec:?}");
    let path = dir.join("berth.service");
    let bin = env!("CARGO_BIN_EXE_berth");
    std::fs::write(
        &path,
        text.replace(
            "ExecStart=/usr/local/bin/berth",
            &format!("ExecStart={bin}"),
        ),
    )
    .expect("write unit");
    path
}

/// `systemd-analyze verify` accepts the unit without a word, and `systemd-analyze security`
/// rates its hardening at 2.0 or better (0 is best, 10 worst).
#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = unit_for_test(dir.path());
    let text = std::fs::read_to_string(&unit).expect("unit");
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "DynamicUser=yes",
        "StateDirectory=berth",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
    ] {
        assert!(text.lines().any(|l| l == line), "the unit lacks {line}");
    }

    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");

    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exposure above 2.0:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every document of the manifests in `deploy/kubernetes`, read by PyYAML, as JSON.
fn manifests() -> Vec<Value> {
    let script = "import json, sys, yaml\n\
        docs = []\n\
        for path in sys.argv[1:]:\n\
        \x20   with open(path) as f:\n\
        \x20       docs += [d for d in yaml.safe_load_all(f) if d is not None]\n\
        print(json.dumps(docs))\n";
    let dir = repo().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(&files)
        .output()
        .expect("python3 (apt-get install python3-yaml)");
    assert!(
        out.status.success(),
        "the manifests do not parse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The port a `host:port` listen address in the config names.
fn port_of(listen: &str) -> u64 {
    listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{listen:?} has no port"))
}

/// The manifests parse; the config in the ConfigMap passes `berth check-config`; the probes
/// ask Berth's `/readyz` and `/healthz` on the admin port the config listens on; the DNS
/// Service offers port 53 over UDP and TCP, reaching the port `dns.listen` names.
#[test]
fn kubernetes_manifests_match_berth() {
    let docs = manifests();
    let kustomization = docs
        .iter()
        .find(|d| d["kind"] == "Kustomization")
        .expect("a kustomization.yaml");
    let listed: Vec<&str> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("file"))
        .collect();
    for f in &listed {
        assert!(repo().join("deploy/kubernetes").join(f).is_file(), "{f}");
    }

    // The config, checked as Berth checks it (the GeoIP volume replaced by the demo file).
    let data = &find(&docs, "ConfigMap", "berth")["data"];
    let dir = tempfile::tempdir().expect("tempdir");
    let geoip = "/var/lib/berth-geoip/GeoLite2-City.mmdb";
    for (name, text) in data.as_object().expect("data") {
        let text = text.as_str().expect("text");
        let demo = repo().join("geoip/demo.mmdb");
        std::fs::write(
            dir.path().join(name),
            text.replace(geoip, &demo.display().to_string()),
        )
        .expect("write");
    }
    let check = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("check-config")
        .arg(dir.path().join("berth.toml"))
        .output()
        .expect("berth runs");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let config: toml::Value =
        toml::from_str(data["berth.toml"].as_str().expect("berth.toml")).expect("toml");
    let dns_port = port_of(config["dns"]["listen"][0].as_str().expect("dns.listen"));
    let admin_port = port_of(config["admin"]["listen"].as_str().expect("admin.listen"));
    let proxy_port = port_of(config["proxy"]["listen"].as_str().expect("proxy.listen"));
    assert_eq!(
        config["admin"]["state_file"].as_str(),
        Some("/var/lib/berth/flags.json")
    );

    let pod = &find(&docs, "Deployment", "berth")["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(
        container["args"],
        serde_json::json!(["serve", "--config", "/etc/berth/berth.toml"])
    );
    let mounts = container["volumeMounts"].as_array().expect("mounts");
    let config_mount = mounts
        .iter()
        .find(|m| m["name"] == "config")
        .expect("config mount");
    assert_eq!(config_mount["mountPath"], "/etc/berth");
    assert!(mounts
        .iter()
        .any(|m| m["mountPath"] == "/var/lib/berth-geoip"));
    assert!(mounts.iter().any(|m| m["mountPath"] == "/var/lib/berth"));
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);

    let port = |name: &str| -> (u64, String) {
        let p = container["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no container port {name}"));
        (
            p["containerPort"].as_u64().expect("number"),
            p["protocol"].as_str().unwrap_or("TCP").to_string(),
        )
    };
    assert_eq!(port("admin"), (admin_port, "TCP".into()));
    assert_eq!(port("proxy"), (proxy_port, "TCP".into()));
    assert_eq!(port("dns-udp"), (dns_port, "UDP".into()));
    assert_eq!(port("dns-tcp"), (dns_port, "TCP".into()));
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        assert_eq!(container[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(container[probe]["httpGet"]["port"], "admin", "{probe}");
    }

    let dns = &find(&docs, "Service", "berth-dns")["spec"];
    let mut offered: Vec<(u64, String, String)> = dns["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["port"].as_u64().expect("port"),
                p["protocol"].as_str().expect("protocol").to_string(),
                p["targetPort"].as_str().expect("named target").to_string(),
            )
        })
        .collect();
    offered.sort();
    assert_eq!(
        offered,
        [
            (53, "TCP".to_string(), "dns-tcp".to_string()),
            (53, "UDP".to_string(), "dns-udp".to_string()),
        ]
    );
    let selector = &find(&docs, "Deployment", "berth")["spec"]["selector"]["matchLabels"];
    for svc in ["berth-dns", "berth-proxy", "berth-admin"] {
        assert_eq!(&find(&docs, "Service", svc)["spec"]["selector"], selector);
    }
}

/// The container build file: two stages, a slim Debian runtime, a non-root user, `berth
/// serve` on the config path the Kubernetes example mounts, the DNS port the config names.
/// (Building it needs the base images from a registry, which the test machine cannot reach.)
#[test]
fn containerfile_runs_berth_serve_as_non_root() {
    let text = std::fs::read_to_string(repo().join("deploy/Containerfile")).expect("Containerfile");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let from: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(from.len(), 2, "a build stage and a runtime stage: {from:?}");
    assert!(from[0].ends_with(" AS build"), "{}", from[0]);
    assert_eq!(*from[1], "FROM docker.io/library/debian:bookworm-slim");
    assert!(lines.contains(&"COPY --from=build /src/target/release/berth /usr/local/bin/berth"));
    let user = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("a USER line");
    assert!(
        !user.starts_with("USER 0") && !user.starts_with("USER root"),
        "{user}"
    );
    assert!(lines.contains(&"ENTRYPOINT [\"/usr/local/bin/berth\"]"));
    assert!(lines.contains(&"CMD [\"serve\", \"--config\", \"/etc/berth/berth.toml\"]"));
    assert!(lines.contains(&"EXPOSE 1053/udp 1053/tcp 8080/tcp 9180/tcp"));
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).expect(".dockerignore");
    assert!(
        ignore.lines().any(|l| l == "target/"),
        "the build context leaves target/ out"
    );
}
