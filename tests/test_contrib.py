"""
Tests of the deployment files in contrib/: each is checked by the tool
that reads it (systemd-analyze, udevadm, nginx, Apache, psql) and used for
real where it can be here: the systemd unit's settings run the daemon, the
proxies serve the page, long-polls and --allow behind them, and pass a
live stream on unbuffered, and the PostgreSQL recipe makes a role the
daemon runs on.

The tools are installed by ``make test`` when it can (as root, with
apt-get); a missing one fails its test with the command that installs it.
"""

import http.client
import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

import pytest

from blip.options import Options, env_name
from tests.conftest import ROOT, TIMEOUT, eventually, free_port, shared_tempdir
from tests.test_service import get

CONTRIB = ROOT / "contrib"
#: Where system programs live, for a PATH without the sbin folders.
SYSTEM_FOLDERS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")


def tool(name: str, package: str) -> str:
    """
    :return: the path of program ``name``.
    """
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(SYSTEM_FOLDERS))
    if found is None:
        pytest.fail(
            f"{name} not found: `make test` installs it when run as root; otherwise"
            f" apt-get install {package}",
            pytrace=False,
        )
    return found


def unit_settings(text: str) -> dict[str, dict[str, list[str]]]:
    """
    :return: a systemd unit's settings by section and key (keys may repeat).
    """
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def env_file(text: str) -> dict[str, str]:
    """:return: the variables an environment file sets."""
    found = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            found[key.strip()] = value.strip()
    return found


def known_variables() -> set[str]:
    """:return: every BLIP_ variable the daemon reads."""
    options = Options()
    names = [p[0] for p in options.optParameters] + [f[0] for f in options.optFlags]
    return {env_name(n) for n in [*names, *Options.lists, *Options.secrets]}


def test_systemd_unit_verifies_and_its_settings_run_the_daemon(
    start_daemon, database, pty_meter, tmp_path
) -> None:
    """
    systemd-analyze finds nothing to say about the unit (with ExecStart
    pointing at this twistd); it restarts on failure, runs as a dedicated
    user in the dialout group with its state in /var/lib/blipserver, may
    open 65536 files (one per HTTP client); every
    BLIP_ variable it and the example environment file name is one the
    daemon reads; and the daemon started with the unit's command and
    environment reads the serial device the unit names.
    """
    analyze = tool("systemd-analyze", "systemd")
    text = (CONTRIB / "blipserver.service").read_text()
    twistd = Path(sys.executable).parent / "twistd"
    assert "/opt/blipserver/bin/twistd " in text
    copy = tmp_path / "blipserver.service"
    copy.write_text(text.replace("/opt/blipserver/bin/twistd ", f"{twistd} "))
    done = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
    # (It does complain about a unit that is wrong.)
    copy.write_text(copy.read_text().replace("Restart=on-failure", "Restart=on-fail"))
    wrong = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert "restart specifier" in wrong.stdout + wrong.stderr

    service = unit_settings(text)["Service"]
    assert service["Restart"] == ["on-failure"]
    assert service["User"] == ["blipserver"] and service["Group"] == ["blipserver"]
    assert service["SupplementaryGroups"] == ["dialout"]
    assert service["StateDirectory"] == ["blipserver"]
    assert service["ExecStart"] == ["/opt/blipserver/bin/twistd --nodaemon --pidfile= blip"]
    assert service["LimitNOFILE"] == ["65536"]
    environment = dict(v.partition("=")[::2] for v in service["Environment"])
    assert environment["BLIP_STATE_DIR"] == "/var/lib/blipserver"
    assert service["EnvironmentFile"] == ["-/etc/blipserver/blipserver.env"]
    example = (CONTRIB / "blipserver.env").read_text()
    named = set(environment) | set(re.findall(r"^#?(BLIP_[A-Z_]+)=", example, re.MULTILINE))
    assert named <= known_variables(), named - known_variables()

    # The command and environment of the unit; the test's database, pty,
    # state dir and port instead of the machine's.
    env = {**environment, **env_file(example), "BLIP_DB": database.dsn, "BLIP_SERIAL": pty_meter.path}
    daemon = start_daemon(env=env)
    daemon.wait_for(f"reading serial device {re.escape(pty_meter.path)}")
    pty_meter.write(b"partial\n1500\n")
    assert eventually(lambda: get(daemon, "/last/1")[0] == 200), daemon.output
    assert daemon.stop() == 0


def test_udev_rule_is_read_without_complaint(tmp_path) -> None:
    """
    udevadm reads the rule without a complaint (a broken rule beside it
    shows that it would complain), and the rule gives the Arduino the
    name /dev/arduino in group dialout. udevadm only reads rules from the
    system's folders: it runs in a mount namespace of its own where the
    test's folder is mounted over /etc/udev/rules.d.
    """
    udevadm = tool("udevadm", "udev")
    unshare = tool("unshare", "util-linux")
    rules = tmp_path / "rules"
    rules.mkdir()
    shutil.copy(CONTRIB / "99-arduino.rules", rules)
    (rules / "98-broken.rules").write_text('SUBSYSTEM=="tty", ATTRZ{idVendor}=="2341"\n')
    namespace = [unshare, "--mount"]
    if os.geteuid() != 0:
        namespace[1:1] = ["--user", "--map-root-user"]
    done = subprocess.run(
        [*namespace, "sh", "-c",
         'mount --bind "$1" /etc/udev/rules.d && exec "$2" test --action=add /sys/class/tty/tty',
         "sh", str(rules), udevadm],
        capture_output=True, text=True, timeout=60,
    )
    out = done.stdout + done.stderr
    assert "Reading rules file: /etc/udev/rules.d/99-arduino.rules" in out, out
    assert "98-broken.rules:1 Invalid key 'ATTRZ'" in out, out
    assert [line for line in out.splitlines() if "99-arduino.rules:" in line] == []
    rule = [line for line in (CONTRIB / "99-arduino.rules").read_text().splitlines()
            if line.startswith("SUBSYSTEM")]
    assert len(rule) == 1
    assert 'SYMLINK+="arduino"' in rule[0] and 'GROUP="dialout"' in rule[0]


# --- Reverse proxies ---

#: Apache modules the site needs (a2enmod proxy_http env authz_host) and
#: the server itself needs.
APACHE_MODULES = ["mpm_event", "authz_core", "authz_host", "unixd", "proxy", "proxy_http", "env"]
APACHE_MODULE_FOLDERS = ("/usr/lib/apache2/modules", "/usr/lib64/httpd/modules", "/usr/lib/httpd/modules")


@dataclass
class Proxy:
    """
    nginx or Apache serving a site of contrib/ on a free port of
    127.0.0.1, proxying to ``upstream``.

    :param kind: ``nginx`` or ``apache``.
    :param upstream: the port blipserver (or what stands in for it)
        listens on.
    :param folder: where its configuration, logs and temporary files go.
    """

    kind: str
    upstream: int
    folder: Path
    port: int = field(default_factory=free_port)
    process: Optional[subprocess.Popen[bytes]] = None

    def __post_init__(self) -> None:
        site = (CONTRIB / f"{self.kind}-blipserver.conf").read_text()
        if self.kind == "nginx":
            self.program = tool("nginx", "nginx")
            site = self._replace(site, "listen 80;", f"listen 127.0.0.1:{self.port};")
            site = self._replace(site, "server 127.0.0.1:8080;", f"server 127.0.0.1:{self.upstream};")
            temp = " ".join(
                f"{name}_temp_path {self.folder}/{name};"
                for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
            )
            main = (
                f"{'user root;' if os.geteuid() == 0 else ''}\n"
                f"worker_processes 1;\npid {self.folder}/nginx.pid;\n"
                f"error_log {self.folder}/error.log;\n"
                f"events {{ worker_connections 128; }}\n"
                f"http {{ access_log off; {temp} include {self.folder}/site.conf; }}\n"
            )
            self.config = self.folder / "nginx.conf"
            self.check_argv = [
                self.program, "-t", "-p", str(self.folder), "-e", str(self.folder / "error.log"),
                "-c", str(self.config),
            ]
            self.run_argv = [*self.check_argv[:1], "-g", "daemon off;", *self.check_argv[2:]]
        else:
            self.program = shutil.which("httpd") or tool("apache2", "apache2")
            folders = [Path(f) for f in APACHE_MODULE_FOLDERS if (Path(f) / "mod_proxy.so").exists()]
            if not folders:
                pytest.fail("Apache's modules not found: apt-get install apache2", pytrace=False)
            site = self._replace(site, "<VirtualHost *:80>", f"<VirtualHost 127.0.0.1:{self.port}>")
            site = self._replace(site, "127.0.0.1:8080", f"127.0.0.1:{self.upstream}")
            modules = "".join(
                f"<IfModule !{name}_module>\n"
                f"LoadModule {name}_module {folders[0]}/mod_{name}.so\n</IfModule>\n"
                for name in APACHE_MODULES
            )
            user = "User nobody\nGroup nogroup\n" if os.geteuid() == 0 else ""
            main = (
                f"ServerRoot {self.folder}\nServerName localhost\nListen 127.0.0.1:{self.port}\n"
                f"PidFile {self.folder}/httpd.pid\nErrorLog {self.folder}/error.log\n"
                f"DefaultRuntimeDir {self.folder}\n{modules}{user}"
                f"Include {self.folder}/site.conf\n"
            )
            self.config = self.folder / "httpd.conf"
            self.check_argv = [self.program, "-t", "-f", str(self.config)]
            self.run_argv = [self.program, "-DFOREGROUND", "-f", str(self.config)]
        (self.folder / "site.conf").write_text(site)
        self.config.write_text(main)

    @staticmethod
    def _replace(text: str, old: str, new: str) -> str:
        assert old in text, f"the site no longer has {old!r}: update the test"
        return text.replace(old, new)

    def check(self) -> subprocess.CompletedProcess[str]:
        """Check the configuration (nginx -t, apache2 -t)."""
        return subprocess.run(self.check_argv, capture_output=True, text=True, timeout=60)

    def start(self) -> "Proxy":
        """Start it; return once it accepts connections."""
        self.process = subprocess.Popen(
            self.run_argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = self.folder / "error.log"
                    errors = log.read_text() if log.exists() else ""
                    raise AssertionError(f"{self.kind} did not start: {errors}")
                time.sleep(0.02)

    def stop(self) -> None:
        """Stop it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(TIMEOUT)

    def connect(self, client: str) -> http.client.HTTPConnection:
        """:return: a connection to the proxy from address ``client`` (127.x.y.z)."""
        return http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=TIMEOUT, source_address=(client, 0)
        )

    def get(
        self, path: str, client: str, headers: Optional[dict[str, str]] = None
    ) -> tuple[int, bytes, str]:
        """:return: status, body and content type of a GET through the proxy."""
        connection = self.connect(client)
        try:
            connection.request("GET", path, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.read(), response.getheader("Content-Type", "")
        finally:
            connection.close()


@pytest.fixture
def proxy_folder() -> Iterator[Path]:
    """A folder for a proxy's files that its unprivileged workers may read."""
    folder = shared_tempdir("blip-test-proxy-")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("kind", ["nginx", "apache"])
def test_proxy_serves_the_page_long_polls_and_allowed_clients(
    kind, start_daemon, database, pty_meter, proxy_folder
) -> None:
    """
    The site's configuration is valid; behind it, under /ajax/, blipserver
    serves the page and the API, a long-poll gets the next blip, and with
    --allow and --trusted-proxy the client behind the proxy is the one
    allowed or refused (403 JSON), also when it forges X-Forwarded-For.
    The long-poll timeouts are an hour.
    """
    daemon = start_daemon(
        "--serial", pty_meter.path, "--db", database.dsn,
        "--trusted-proxy", "127.0.0.1", "--allow", "127.0.0.2",
    )
    daemon.wait_for("database ready")
    proxy = Proxy(kind, daemon.port, proxy_folder)
    checked = proxy.check()
    assert checked.returncode == 0, checked.stdout + checked.stderr
    proxy.start()
    try:
        pty_meter.write(b"partial\n1000\n")
        assert eventually(lambda: proxy.get("/ajax/last/1", "127.0.0.2")[0] == 200)
        status, body, content_type = proxy.get("/ajax/", "127.0.0.2")
        assert (status, content_type.split(";")[0]) == (200, "text/html")
        assert body == (ROOT / "blip" / "static" / "index.html").read_bytes()

        status, body, _ = proxy.get("/ajax/last/1", "127.0.0.3")
        assert (status, json.loads(body)) == (403, {"error": "access from 127.0.0.3 is not allowed"})
        status, body, _ = proxy.get("/ajax/last/1", "127.0.0.3", {"X-Forwarded-For": "127.0.0.2"})
        assert (status, json.loads(body)) == (403, {"error": "access from 127.0.0.3 is not allowed"})

        waiting = proxy.connect("127.0.0.2")
        waiting.request("GET", "/ajax/blip/1")
        waiting.sock.setblocking(False)
        get(daemon, "/last/1")  # refused, but read after the long-poll
        sent = 0
        while not select.select([waiting.sock], [], [], 0.05)[0]:
            assert sent < 200, "the long-poll never answered"
            pty_meter.write(b"%d\n" % (2000 + sent))
            sent += 1
        waiting.sock.setblocking(True)
        response = waiting.getresponse()
        assert response.status == 200
        stamp, ms = json.loads(response.read())
        assert 2000 <= ms < 2000 + sent
        waiting.close()
    finally:
        proxy.stop()
    site = (CONTRIB / f"{kind}-blipserver.conf").read_text()
    timeouts = re.findall(r"proxy_read_timeout (\S+);|timeout=(\d+)", site)
    assert timeouts and all(t in (("1h", ""), ("", "3600")) for t in timeouts)


@pytest.mark.parametrize("kind", ["nginx", "apache"])
def test_proxy_passes_the_live_stream_on_unbuffered(
    kind, proxy_folder, start_daemon, pty_meter, database
) -> None:
    """
    Through the site's live stream location, each point of blipserver's
    live stream (Server-Sent Events) reaches the client as it happens,
    while the stream goes on: a buffering proxy would hold it back.
    """
    daemon = start_daemon("--serial", pty_meter.path, "--db", database.dsn)
    daemon.wait_for(r"\] database ready")
    daemon.wait_for("reading serial device")
    pty_meter.write(b"partial\n")
    proxy = Proxy(kind, daemon.port, proxy_folder).start()
    try:
        stream = proxy.connect("127.0.0.2")
        stream.request("GET", "/ajax/api/v1/live?meters=1", headers={"Accept": "text/event-stream"})
        response = stream.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type").startswith("text/event-stream")
        for ms in (1000, 2000):
            started = time.monotonic()
            pty_meter.write(b"%d\n" % ms)
            while True:
                line = response.readline()
                assert line, "the stream ended"
                if line.startswith(b"data:") and b'"ms":%d' % ms in line.replace(b" ", b""):
                    break
            assert time.monotonic() - started < 5
        stream.close()
    finally:
        proxy.stop()


class LiveStandIn(BaseHTTPRequestHandler):
    """
    Stands in for blipserver's live stream (Server-Sent Events): sends one
    event at once, then the next only when the test says so.
    """

    protocol_version = "HTTP/1.0"
    paths: list[str] = []
    release = threading.Event()

    def do_GET(self) -> None:
        self.paths.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.wfile.write(b"data: [1,1000]\n\n")
        self.wfile.flush()
        self.release.wait(TIMEOUT)
        self.wfile.write(b"data: [2,1000]\n\n")

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("kind", ["nginx", "apache"])
def test_proxy_holds_no_event_of_a_stream_back(kind, proxy_folder) -> None:
    """
    Through the site's live stream location, the first event of a stream
    reaches the client while the upstream holds the stream open after it
    (a buffering proxy would hold it back until the stream ends: with this
    stand-in upstream, which answers HTTP/1.0, it does), at the path
    blipserver serves it under, query included.
    """
    LiveStandIn.paths = []
    LiveStandIn.release = threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), LiveStandIn)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proxy = Proxy(kind, server.server_address[1], proxy_folder).start()
    try:
        started = time.monotonic()
        stream = proxy.connect("127.0.0.2")
        stream.request("GET", "/ajax/api/v1/live?meters=1")
        response = stream.getresponse()
        assert response.status == 200
        first = response.readline()
        assert first == b"data: [1,1000]\n"
        assert time.monotonic() - started < 5
        assert not LiveStandIn.release.is_set()
        LiveStandIn.release.set()
        assert b"data: [2,1000]" in response.read()
        assert LiveStandIn.paths == ["/api/v1/live?meters=1"]
        stream.close()
    finally:
        LiveStandIn.release.set()
        proxy.stop()
        server.shutdown()
        server.server_close()


# --- PostgreSQL ---


def test_postgresql_recipe_makes_a_role_the_daemon_runs_on(pg_cluster, start_daemon, pty_meter) -> None:
    """
    The recipe, run twice by psql as the superuser, makes a login role
    that is not a superuser and a database it owns; the daemon connects as
    that role (with its password), creates its tables, owned by the role,
    and stores points.
    """
    cluster = pg_cluster.cluster
    psql = cluster.bindir / "psql"
    if not psql.exists():
        pytest.fail(
            f"psql not found in {cluster.bindir}: apt-get install postgresql-client", pytrace=False
        )
    name = "recipe_" + uuid.uuid4().hex[:12]
    run = [str(psql), "-X", "-q", "-v", f"user={name}", "-v", f"db={name}", "-v", "password=pw-1",
           "-f", str(CONTRIB / "postgresql-setup.sql"), pg_cluster.dsn("postgres")]
    try:
        for _ in range(2):
            done = subprocess.run(run, capture_output=True, text=True, timeout=60)
            assert (done.returncode, done.stderr) == (0, "")
        assert pg_cluster.sql(
            "postgres",
            "SELECT r.rolsuper, r.rolcanlogin, pg_get_userbyid(d.datdba) FROM pg_roles r, pg_database d"
            " WHERE r.rolname = %s AND d.datname = %s",
            (name, name),
        ) == [(False, True, name)]
        dsn = f"host={cluster.sockets} port=5432 user={name} dbname={name} password=pw-1"
        daemon = start_daemon("--serial", pty_meter.path, "--db", dsn)
        daemon.wait_for(r"\] database ready")
        pty_meter.write(b"partial\n1500\n")
        assert eventually(lambda: pg_cluster.sql(name, "SELECT count(*) FROM readings")[0][0] == 1)
        owners = pg_cluster.sql(
            name, "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'"
        )
        assert owners == [(name,)]
        assert daemon.stop() == 0
    finally:
        pg_cluster.sql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        pg_cluster.sql("postgres", f'DROP ROLE IF EXISTS "{name}"')


#: Spellings of the operators' routes through the proxy's /ajax/ prefix.
OPERATORS = [
    "/ajax/metrics", "/ajax/healthz", "/ajax/healthz?x=1", "/ajax//metrics", "/ajax/./healthz",
    "/ajax/%6detrics", "/ajax/x/../metrics", "/ajax/metrics/", "/ajax/%2e/healthz",
]


@pytest.mark.parametrize("kind", ["nginx", "apache"])
def test_proxy_keeps_metrics_and_health_for_this_machine(
    kind, start_daemon, database, pty_meter, proxy_folder
) -> None:
    """
    Through the site, /metrics and /healthz answer a client on the proxy's
    own machine (127.0.0.1) and refuse anyone else, however the path is
    spelled; the rest of the site still answers everyone.
    """
    daemon = start_daemon("--serial", pty_meter.path, "--db", database.dsn)
    daemon.wait_for("database ready")
    proxy = Proxy(kind, daemon.port, proxy_folder).start()
    try:
        assert proxy.get("/ajax/metrics", "127.0.0.1")[0] == 200
        assert proxy.get("/ajax/healthz", "127.0.0.1")[0] in (200, 503)
        for path in OPERATORS:
            status, body, _ = proxy.get(path, "127.0.0.2")
            assert status in (403, 404), (path, status, body[:200])
            assert b"blip_" not in body and b'"checks"' not in body, path
        assert proxy.get("/ajax/api/v1/meters", "127.0.0.2")[0] == 200
    finally:
        proxy.stop()
