#!/usr/bin/env python3
"""The soak's driver (see benches/soak.sh, which sets up replicas and images and calls this).

One process runs the clock: every second it reloads (alternating configs, SIGHUP and API in
turn), toggles a flag, then checks answers against the state it has just set, so the check
never races its own changes. dnsperf, the push/pull loop and the replica restarts run beside it.
"""

import argparse
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request

REGIONS = {
    # name: (latitude, longitude, A address, replica index)
    "westus": (47.6, -122.3, "192.0.2.10", 1),
    "eastus": (37.4, -79.0, "192.0.2.20", 2),
    "westeurope": (52.4, 4.9, "192.0.2.30", 3),
    "southeastasia": (1.3, 103.8, "192.0.2.40", 4),
}
BY_ADDR = {v[2]: k for k, v in REGIONS.items()}
CONFIGS = [
    ["westus", "eastus", "westeurope", "southeastasia"],
    ["westeurope", "eastus", "westus"],
]
# Demo GeoIP cities (geoip/demo.csv): Tokyo, Sao Paulo, Seattle, Amsterdam, San Francisco, Sydney.
CITIES = ["198.51.100.0/24", "203.0.113.0/24", "24.16.0.0/24", "2001:db8:2::/56",
          "24.17.0.0/24", "2001:db8:4::/56"]
TOKEN = "soak-token-0123456789"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def config_text(a, regions, root):
    t = f"""[dns]
listen = ["127.0.0.1:{a['dns']}"]
udp_threads = 2

[geoip]
database = "{root}/geoip/demo.mmdb"

[[zone]]
origin = "example.test"
file = "{root}/zones/example.test.zone"

[sticky]
capacity = 20000

[admin]
listen = "127.0.0.1:{a['admin']}"
token_file = "token"

[proxy]
listen = "127.0.0.1:{a['proxy']}"
secret_file = "secret"

"""
    for name in regions:
        lat, lon, addr, i = REGIONS[name]
        t += f"""[[region]]
name = "{name}"
latitude = {lat}
longitude = {lon}
a = ["{addr}"]
upstream = "http://127.0.0.1:{5100 + i}"
probe = {{ interval = "1s", timeout = "500ms", fall = 2, rise = 2 }}

"""
    names = ", ".join(f'"{r}"' for r in regions)
    t += f"""[[routed_name]]
name = "registry.example.test"
policy = "performance"
ttl = 30
regions = [{names}]

# Every push copied to every region of the config in force (a region the reload drops takes
# its waiting jobs with it: they end failed, and the reconcile after it is back re-plans them).
[replication]
reconcile_every = "20s"
retry = {{ max = 4, initial = "1s", max_delay = "5s" }}

[[replication.rule]]
name = "all"
to = [{names}]
"""
    return t


def ecs_query(qid, subnet):
    """A wire-format A query for registry.example.test with an ECS option."""
    addr, plen = subnet.split("/")
    plen = int(plen)
    if ":" in addr:
        fam, raw = 2, socket.inet_pton(socket.AF_INET6, addr)
    else:
        fam, raw = 1, socket.inet_pton(socket.AF_INET, addr)
    raw = raw[: (plen + 7) // 8]
    opt = struct.pack("!HBB", fam, plen, 0) + raw
    edns = struct.pack("!HH", 8, len(opt)) + opt
    q = struct.pack("!HHHHHH", qid, 0, 1, 0, 0, 1)
    for label in b"registry.example.test".split(b"."):
        q += bytes([len(label)]) + label
    q += b"\x00" + struct.pack("!HH", 1, 1)
    q += b"\x00" + struct.pack("!HHIH", 41, 1232, 0, len(edns)) + edns
    return q


def skip_name(m, i):
    while True:
        n = m[i]
        if n == 0:
            return i + 1
        if n & 0xC0 == 0xC0:
            return i + 2
        i += 1 + n


def answer_addrs(m):
    """(rcode, [A addresses]) of a response."""
    rcode = m[3] & 0x0F
    qd, an = struct.unpack("!HH", m[4:8])
    i = 12
    for _ in range(qd):
        i = skip_name(m, i) + 4
    out = []
    for _ in range(an):
        i = skip_name(m, i)
        t, _c, _ttl, rdlen = struct.unpack("!HHIH", m[i:i + 10])
        i += 10
        if t == 1 and rdlen == 4:
            out.append(socket.inet_ntoa(m[i:i + 4]))
        i += rdlen
    return rcode, out


def ask(port, subnet, tcp):
    q = ecs_query(random.randrange(65536), subnet)
    if tcp:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(struct.pack("!H", len(q)) + q)
            buf = b""
            while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
                chunk = s.recv(4096)
                if not chunk:
                    return None
                buf += chunk
            return buf[2:]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1.0)
    try:
        s.sendto(q, ("127.0.0.1", port))
        return s.recv(4096)
    except OSError:
        return None
    finally:
        s.close()


def http(method, url, body=None):
    req = urllib.request.Request(url, method=method, data=body)
    req.add_header("Authorization", f"Bearer {TOKEN}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


# How long replication may take after the storm to bring every pushed image to every region.
CATCH_UP = 300
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json, "
                  "application/vnd.docker.distribution.manifest.v2+json")


def holds(replica, tag):
    """Whether replica number `replica` (127.0.0.1:5100+n, straight, not through Berth) has
    soak/app:tag."""
    req = urllib.request.Request(f"http://127.0.0.1:{5100 + replica}/v2/soak/app/manifests/{tag}",
                                 method="HEAD", headers={"Accept": MANIFEST_TYPES})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--work", required=True)
    ap.add_argument("--berth", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--testbed", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--qps", type=int, default=int(os.environ.get("QPS", "15000")))
    a = ap.parse_args()
    work = a.work
    ports = {"dns": free_port(), "admin": free_port(), "proxy": free_port()}
    with open(f"{work}/token", "w") as f:
        f.write(TOKEN)
    with open(f"{work}/secret", "w") as f:
        f.write("soak-secret-" + "x" * 32)
    cfg = f"{work}/berth.toml"
    with open(cfg, "w") as f:
        f.write(config_text(ports, CONFIGS[0], a.root))
    log = open(f"{work}/berth.log", "w")
    berth = subprocess.Popen([a.berth, "serve", "--config", cfg], stdout=log, stderr=log)
    admin = f"http://127.0.0.1:{ports['admin']}"
    deadline = time.time() + 30
    while True:
        try:
            if http("GET", f"{admin}/api/v1/regions")[0] == 200 and ask(ports["dns"], CITIES[0], False):
                break
        except OSError:
            pass
        if time.time() > deadline or berth.poll() is not None:
            sys.exit("soak: berth did not start; see " + f"{work}/berth.log")
        time.sleep(0.2)

    # dnsperf: 400k distinct subnets, replayed for the whole run at a fixed rate.
    raw = bytearray()
    for n in range(400_000):
        subnet = f"{1 + (n >> 16) % 200}.{(n >> 8) & 255}.{n & 255}.0/24"
        q = ecs_query(n & 0xFFFF, subnet)
        raw += struct.pack("!H", len(q)) + q
    with open(f"{work}/flood.raw", "wb") as f:
        f.write(raw)
    seconds = int(a.minutes * 60)
    dnsperf = subprocess.Popen(
        ["dnsperf", "-s", "127.0.0.1", "-p", str(ports["dns"]), "-B", "-d", f"{work}/flood.raw",
         "-c", "4", "-q", "200", "-Q", str(a.qps), "-l", str(seconds), "-t", "2"],
        stdout=open(f"{work}/dnsperf.out", "w"), stderr=subprocess.STDOUT)

    stop = threading.Event()
    pushes = {"ok": 0, "failed": [], "pulls_ok": 0, "tags": []}

    def push_pull():
        n = 0
        env = dict(os.environ)
        while not stop.is_set():
            n += 1
            dest = f"127.0.0.1:{ports['proxy']}/soak/app:{n}"
            sk = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                  'mkdir -p /var/lib/containers && mount -t tmpfs bic /var/lib/containers '
                  '&& exec skopeo --insecure-policy --command-timeout 120s "$@"', "sh"]
            r = subprocess.run(sk + ["copy", "--dest-tls-verify=false", f"oci:{a.images}:app-1.0",
                                     f"docker://{dest}"], capture_output=True, text=True, env=env)
            if r.returncode != 0:
                pushes["failed"].append((time.strftime("%H:%M:%S"), "push",
                                         (r.stderr.strip().splitlines() or ["?"])[-1][:300]))
                continue
            pushes["ok"] += 1
            pushes["tags"].append(str(n))
            out = f"{work}/pulled-{n % 2}"
            subprocess.run(["rm", "-rf", out])
            r = subprocess.run(sk + ["copy", "--src-tls-verify=false", f"docker://{dest}",
                                     f"oci:{out}:app"], capture_output=True, text=True, env=env)
            if r.returncode != 0:
                pushes["failed"].append((time.strftime("%H:%M:%S"), "pull",
                                         (r.stderr.strip().splitlines() or ["?"])[-1][:300]))
            else:
                pushes["pulls_ok"] += 1

    restarts = []

    def restart_replicas():
        i = 0
        while not stop.wait(45):
            i = i % 4 + 1
            d = f"{work}/testbed/registries-soak/r{i}"
            try:
                pid = int(open(f"{d}/registry.pid").read())
                os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass
            time.sleep(3)
            env = dict(os.environ, REG_SET="soak", REG_BASE_PORT="5101",
                       OCI_TESTBED_DIR=f"{work}/testbed")
            subprocess.run([f"{a.testbed}/registries.sh", "start", "4"], env=env,
                           capture_output=True)
            restarts.append((time.strftime("%H:%M:%S"), f"r{i}"))

    threads = [threading.Thread(target=push_pull), threading.Thread(target=restart_replicas)]
    for t in threads:
        t.start()

    time.sleep(5)
    rss_start = rss_kib(berth.pid)
    rss_peak = rss_start
    wrong, checked, unanswered, reloads, reload_fail, toggles = [], 0, 0, 0, [], 0
    disabled = False
    end = time.time() + seconds - 5
    tick = 0
    while time.time() < end and berth.poll() is None:
        tick += 1
        regions = CONFIGS[tick % 2]
        before = http("GET", f"{admin}/api/v1/regions")[1]["generation"]
        with open(cfg + ".new", "w") as f:
            f.write(config_text(ports, regions, a.root))
        os.replace(cfg + ".new", cfg)
        if tick % 2:
            berth.send_signal(signal.SIGHUP)
        else:
            st, body = http("POST", f"{admin}/api/v1/reload")
            if st != 200:
                reload_fail.append((tick, st, str(body)[:200]))
        t0 = time.time()
        while http("GET", f"{admin}/api/v1/regions")[1]["generation"] <= before:
            if time.time() - t0 > 10:
                reload_fail.append((tick, "timeout", "generation did not move"))
                break
            time.sleep(0.02)
        reloads += 1
        disabled = not disabled
        st, body = http("PUT", f"{admin}/api/v1/regions/eastus",
                        json.dumps({"endpoint_enabled": not disabled}).encode())
        if st != 200:
            reload_fail.append((tick, st, "flag: " + str(body)[:200]))
        toggles += 1
        allowed = {r for r in regions if not (r == "eastus" and disabled)}
        for subnet in CITIES:
            for tcp in (False, True):
                m = ask(ports["dns"], subnet, tcp)
                checked += 1
                if m is None:
                    unanswered += 1
                    continue
                rcode, addrs = answer_addrs(m)
                names = [BY_ADDR.get(x, x) for x in addrs]
                if rcode != 0 or not names or any(n not in allowed for n in names):
                    wrong.append((tick, subnet, "tcp" if tcp else "udp", rcode, names, sorted(allowed)))
        rss_peak = max(rss_peak, rss_kib(berth.pid))
        time.sleep(max(0.0, 1.0 - (time.time() - t0)))

    alive = berth.poll() is None
    rss_end = rss_kib(berth.pid) if alive else 0
    stop.set()
    for t in threads:
        t.join()
    dnsperf.wait()
    # Nothing lost: with every region back in the config, every replica running and a
    # reconcile asked for, every image pushed during the storm must reach every region.
    missing, caught_up = [], None
    if alive:
        with open(cfg + ".new", "w") as f:
            f.write(config_text(ports, CONFIGS[0], a.root))
        os.replace(cfg + ".new", cfg)
        http("POST", f"{admin}/api/v1/reload")
        http("POST", f"{admin}/api/v1/replication/sync")
        t0 = last_sync = time.time()
        while True:
            missing = [(tag, r) for tag in pushes["tags"] for r in CONFIGS[0]
                       if not holds(REGIONS[r][3], tag)]
            if not missing or time.time() - t0 > CATCH_UP:
                break
            if time.time() - last_sync > 30:
                http("POST", f"{admin}/api/v1/replication/sync")
                last_sync = time.time()
            time.sleep(1)
        caught_up = time.time() - t0
    metrics = ""
    if alive:
        with urllib.request.urlopen(f"{admin}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        berth.send_signal(signal.SIGTERM)
        berth.wait(timeout=30)
    log.close()
    text = open(f"{work}/berth.log").read()
    panics = text.count("panicked")
    perf = open(f"{work}/dnsperf.out").read()

    def perf_line(key):
        for line in perf.splitlines():
            if key in line:
                return line.strip()
        return f"{key}: ?"

    worker_panics = [l for l in metrics.splitlines() if l.startswith("berth_worker_panics_total")]
    print(f"# Berth soak: {a.minutes} min, {a.qps} q/s distinct-ECS dnsperf load\n")
    print("| what | figure |\n|---|---|")
    print(f"| berth alive at the end | {'yes' if alive else 'NO'} |")
    print(f"| reloads (SIGHUP and API in turn, region set alternating) | {reloads}, failed {len(reload_fail)} |")
    print(f"| flag toggles (eastus) | {toggles} |")
    print(f"| checked answers (6 cities x UDP+TCP per second) | {checked} |")
    print(f"| **wrong answers** | **{len(wrong)}** |")
    print(f"| checker queries unanswered (1 s UDP / 2 s TCP timeout) | {unanswered} |")
    print(f"| **panics in the log** | **{panics}** |")
    print(f"| worker panics metric | {', '.join(worker_panics) or 'n/a'} |")
    print(f"| dnsperf | {perf_line('Queries sent')}; {perf_line('Queries completed')}; {perf_line('Queries lost')} |")
    print(f"| resident memory start / end / peak (MiB) | {rss_start/1024:.1f} / {rss_end/1024:.1f} / {rss_peak/1024:.1f} |")
    print(f"| pushes ok / pulls ok / failures | {pushes['ok']} / {pushes['pulls_ok']} / {len(pushes['failed'])} |")
    print(f"| replica restarts | {len(restarts)}: {', '.join(f'{t} {r}' for t, r in restarts)} |")
    held = len(pushes["tags"]) * len(CONFIGS[0]) - len(missing)
    when = f"after {caught_up:.0f} s" if caught_up is not None else "not checked"
    print(f"| **pushed images in every region after the storm** (tag x region, straight from each replica) | **{held} of {len(pushes['tags']) * len(CONFIGS[0])}**, {when} |")
    repl = [l for l in metrics.splitlines()
            if l.startswith(("berth_replication_jobs", "berth_replication_job_retries",
                             "berth_replication_queue_jobs", "berth_replication_copied"))]
    print(f"| replication metrics at the end | {'; '.join(repl[:12]) or 'n/a'} |")
    for f in pushes["failed"]:
        print(f"\n- {f[1]} failed at {f[0]}: {f[2]}")
    for r in reload_fail[:10]:
        print(f"\n- reload/flag problem at tick {r[0]}: {r[1]} {r[2]}")
    for tag, r in missing[:20]:
        print(f"\n- soak/app:{tag} missing in {r} after {CATCH_UP} s")
    for w in wrong[:20]:
        print(f"\n- wrong answer at tick {w[0]}: {w[1]} over {w[2]}: rcode {w[3]}, {w[4]}, allowed {w[5]}")
    print(f"\n(work directory: {work})")
    sys.exit(1 if wrong or panics or missing or not alive else 0)


if __name__ == "__main__":
    main()
