"""
Live fan-out benchmark: N clients parked on the daemon (long-polls on
``/blip/1``, or a Server-Sent Events stream with ``--kind sse``), then blips
written to the pty one at a time; for each, the delay from the write to each
client's answer, the clients that missed it, the daemon's CPU seconds per
blip (its answers and, for long-polls, reading every client's next
request), the time to connect and park the clients (50 at a time), and the
daemon's memory before and with the clients parked.

    .venv/bin/python -m bench.fanout [--quick] [--clients 1,1000,10000] [--blips 20]
                                     [--kind longpoll|sse] [--sse-path PATH] [--resume]
                                     [--repark-after-all] [--via-web] [--profile]

With ``--resume`` the streams resume, as a browser's do when they
reconnect: each asks with a ``Last-Event-ID`` of a moment before, and one
refused while the replays running are as many as may run (503) connects
again at once, until every client streams (the refusals are counted).

With ``--via-web`` the clients are parked on a web node and the pty is read
by a separate ingest node: each blip goes through PostgreSQL (NOTIFY after
its batch is committed, LISTEN on the web node).

The client is one thread on raw non-blocking sockets and epoll, so that it
stays well below the daemon's cost on a 2-core machine (its CPU is reported).
Each answer's arrival is the time the kernel received it (``SO_TIMESTAMPNS``),
not the time the client got round to reading it: the delays are the
daemon's, not the client's.
"""

import os
import random
import re
import resource
import select
import socket
import struct
import time
from typing import Any, Optional

from bench.harness import (
    BenchCluster,
    Daemon,
    Profiler,
    Pty,
    cpu_seconds,
    emit,
    http_get,
    note,
    parse_args,
    percentiles,
    raise_open_files,
    rss_kib,
    wait_idle,
)

DATABASE = "bench_fanout"
#: Clients connecting at once: each chunk's connections are opened
#: together, and the next chunk's once all of them are established (the
#: kernel takes the handshake; the daemon accepts from its listen backlog
#: when it can). A backlog that overflows costs the clients that find it
#: full a second or more before their connection is retried.
CONNECT_CHUNK = 50
_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
_SSE_MS = re.compile(rb'"ms"\s*:\s*(\d+)|\[\d+,(\d+)\]')
_RETRY_AFTER = re.compile(rb"\r\nretry-after:\s*(\d+)", re.IGNORECASE)


#: Linux's option for a socket's receive timestamps in nanoseconds (Python
#: names only the microsecond one).
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@qq")


def kernel_time(ancillary: list[tuple[int, int, bytes]]) -> int:
    """
    :return: when the kernel received the data that came with
        ``ancillary`` (``time.time_ns`` scale), or now if it does not say.
    """
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            return seconds * 1_000_000_000 + nanoseconds
    return time.time_ns()


def client_cpu() -> float:
    """:return: CPU seconds this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Clients:
    """
    N HTTP clients on one epoll.

    :param port: the daemon's port.
    :param kind: ``longpoll`` (re-ask after every answer) or ``sse``.
    :param path: what they ask for.
    :param resume: the ``Last-Event-ID`` of streams that resume, if they do.
    """

    def __init__(
        self, port: int, kind: str, path: str, repark_at_once: bool = True, resume: Optional[int] = None
    ) -> None:
        self.port = port
        self.kind = kind
        self.repark_at_once = repark_at_once
        #: Long-poll clients answered but not asking again yet.
        self.idle: list[int] = []
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            + ("Accept: text/event-stream\r\n" if kind == "sse" else "")
            + (f"Last-Event-ID: {resume}\r\n" if resume is not None else "")
            + "\r\n"
        ).encode()
        self.epoll = select.epoll()
        self.socks: dict[int, socket.socket] = {}
        self.buffers: dict[int, bytes] = {}
        self.streaming: set[int] = set()
        #: Clients whose connection closed or was refused a stream.
        self.dead: set[int] = set()

    def open(self, count: int) -> None:
        """
        Connect ``count`` clients, :data:`CONNECT_CHUNK` at a time, each
        sending its request as soon as it is connected.
        """
        connects = select.epoll()
        try:
            for start in range(0, count, CONNECT_CHUNK):
                connecting: dict[int, socket.socket] = {}
                for _ in range(min(CONNECT_CHUNK, count - start)):
                    sock = socket.socket()
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                    sock.setblocking(False)
                    sock.connect_ex(("127.0.0.1", self.port))
                    connecting[sock.fileno()] = sock
                    connects.register(sock.fileno(), select.EPOLLOUT)
                while connecting:
                    for fd, _ in connects.poll(60):
                        sock = connecting.pop(fd)
                        connects.unregister(fd)
                        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if error:
                            raise SystemExit(f"connecting to the daemon: {os.strerror(error)}")
                        sock.send(self.request)
                        self.socks[fd] = sock
                        self.buffers[fd] = b""
                        self.epoll.register(fd, select.EPOLLIN)
        finally:
            connects.close()

    def stream_all(self, timeout: float = 300.0) -> int:
        """
        Wait until every stream is open, each refused one (503) connecting
        again after a moment drawn from up to the ``Retry-After`` it was
        told; what the streams send meanwhile is read.

        :return: how many times a client was refused.
        """
        refused = 0
        again: list[float] = []
        draw = random.Random(17).uniform
        deadline = time.monotonic() + timeout
        while again or len(self.streaming) < len(self.socks):
            now = time.monotonic()
            if now > deadline:
                raise SystemExit(f"only {len(self.streaming)} of {len(self.socks) + len(again)} streams open")
            due = [at for at in again if at <= now]
            if due:
                again = [at for at in again if at > now]
                self.open(len(due))
            wait = min(again, default=now + 1) - now
            for fd, _ in self.epoll.poll(max(wait, 0.001)):
                try:
                    data = self.socks[fd].recv(65536)
                except BlockingIOError:
                    continue
                if not data:
                    raise SystemExit("a resuming stream was closed")
                buffer = self.buffers[fd] + data
                if fd not in self.streaming and buffer.startswith(b"HTTP/1.1 503 "):
                    refused += 1
                    self.epoll.unregister(fd)
                    self.socks.pop(fd).close()
                    del self.buffers[fd]
                    after = _RETRY_AFTER.search(buffer)
                    again.append(time.monotonic() + draw(0, int(after.group(1)) if after else 1))
                    continue
                self.buffers[fd] = self._events(fd, buffer, 0, {}, [])
        return refused

    def close(self) -> None:
        """Hang up every client."""
        for sock in self.socks.values():
            sock.close()
        self.epoll.close()

    def answers(self, expected: int, timeout: float) -> tuple[dict[int, tuple[int, bytes]], list[str]]:
        """
        Collect answers until ``expected`` clients have one or ``timeout``
        seconds pass; long-poll clients ask again at once.

        :return: ``{fd: (time_ns of the kernel's arrival, body)}`` and the
            problems met (closed connections, bad statuses).
        """
        got: dict[int, tuple[int, bytes]] = {}
        problems: list[str] = []
        deadline = time.monotonic() + timeout
        poll, buffers, socks = self.epoll.poll, self.buffers, self.socks
        while len(got) < expected - len(self.dead):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for fd, _ in poll(left):
                try:
                    data, ancillary, _, _ = socks[fd].recvmsg(65536, 64)
                except BlockingIOError:
                    continue
                except OSError as e:
                    data, ancillary = b"", []
                    problems.append(str(e))
                arrived = kernel_time(ancillary)
                if not data:
                    problems.append("connection closed")
                    self.epoll.unregister(fd)
                    self.dead.add(fd)
                    continue
                buffer = buffers[fd] + data
                if self.kind == "sse":
                    buffer = self._events(fd, buffer, arrived, got, problems)
                else:
                    buffer = self._responses(fd, buffer, arrived, got, problems)
                buffers[fd] = buffer
        return got, problems

    def _responses(self, fd: int, buffer: bytes, arrived: int, got: dict, problems: list) -> bytes:
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return buffer
            match = _LENGTH.search(buffer, 0, end + 2)
            length = int(match.group(1)) if match else 0
            if len(buffer) < end + 4 + length:
                return buffer
            status = buffer[9:12]
            body = buffer[end + 4:end + 4 + length]
            buffer = buffer[end + 4 + length:]
            if status != b"200":
                problems.append(f"status {status.decode()}: {body[:80]!r}")
                self.epoll.unregister(fd)
                self.dead.add(fd)
                return b""
            got[fd] = (arrived, body)
            if self.repark_at_once:
                self.socks[fd].send(self.request)
            else:
                self.idle.append(fd)

    def repark(self) -> None:
        """Long-poll clients held back by ``repark_at_once=False`` ask again."""
        for fd in self.idle:
            self.socks[fd].send(self.request)
        self.idle = []

    def _events(self, fd: int, buffer: bytes, arrived: int, got: dict, problems: list) -> bytes:
        if fd not in self.streaming:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return buffer
            if buffer[9:12] != b"200":
                problems.append(f"status {buffer[9:12].decode()}: {buffer[end + 4:end + 84]!r}")
                self.epoll.unregister(fd)
                self.dead.add(fd)
                return b""
            self.streaming.add(fd)
            buffer = buffer[end + 4:]
        while True:
            end = buffer.find(b"\n\n")
            if end < 0:
                return buffer
            event, buffer = buffer[:end], buffer[end + 2:]
            data = b"".join(line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:"))
            if data:
                got[fd] = (arrived, data)


def all_parked(port: int, count: int, timeout: float = 60.0) -> None:
    """
    Wait until ``count`` long-polls are parked on the daemon (its
    ``blip_longpoll_waiters``): an idle-looking daemon may only be short
    of CPU, with requests still unread, and a blip written then would find
    their clients not parked.
    """
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port)) as sock:
        while True:
            _, body = http_get(sock, f"127.0.0.1:{port}", "/metrics")
            parked = re.search(rb"^blip_longpoll_waiters (\S+)$", body, re.MULTILINE)
            if parked is not None and float(parked.group(1)) >= count:
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"only {parked and parked.group(1)!r} of {count} long-polls parked")
            time.sleep(0.02)


def blip_ms(body: bytes) -> Optional[int]:
    """:return: the ``ms`` of the point in an answer, or None."""
    match = _SSE_MS.search(body)
    if not match:
        return None
    return int(match.group(1) or match.group(2))


def run(count: int, blips: int, kind: str, path: str, cluster: BenchCluster, profile: bool,
        repark_at_once: bool = True, via_web: bool = False, resume: bool = False) -> dict[str, Any]:
    """
    Measure fan-out to ``count`` clients with a fresh daemon (with
    ``via_web``, a web node the clients are parked on, fed through
    PostgreSQL by a separate ingest node that reads the pty; with
    ``resume``, streams that resume).
    """
    pty = Pty.open()
    # All the clients come from 127.0.0.1.
    waiters = ["--max-waiters", str(max(10000, count + 100)), "--max-connections-per-client", "0"]
    ingest: Optional[Daemon] = None
    if via_web:
        ingest = Daemon(f"fanout-{count}-ingest", ["--db", cluster.dsn(DATABASE), "--serial", pty.path,
                                                    "--role", "ingest", "--node-name", "bench-ingest"],
                        listens=False)
        daemon = Daemon(f"fanout-{count}-web", ["--db", cluster.dsn(DATABASE), "--role", "web",
                                                 "--node-name", "bench-web", *waiters])
    else:
        daemon = Daemon(f"fanout-{count}", ["--db", cluster.dsn(DATABASE), "--serial", pty.path, *waiters])
    try:
        if ingest is not None:
            ingest.start(r"database ready", r"reading serial device")
            daemon.start(r"receiving live points")
        else:
            daemon.start(r"database ready", r"reading serial device")
        pty.write_all(b"CONNECTED bench\n")
        # Streams resume from a moment before (points after it are replayed).
        last_id = int(time.time() * 1000) - 1000 if resume else None
        # Warm up the code paths with one client and one blip.
        warm = Clients(daemon.port, kind, path, resume=last_id)
        warm.open(1)
        wait_idle(daemon.pid)
        pty.write_all(b"999\n")
        warm.answers(1, 5)
        warm.close()
        wait_idle(daemon.pid)
        rss_before = rss_kib(daemon.pid)

        clients = Clients(daemon.port, kind, path, repark_at_once, last_id)
        t0 = time.monotonic()
        clients.open(count)
        refused = clients.stream_all() if resume else 0
        wait_idle(daemon.pid)
        park_s = time.monotonic() - t0
        rss_parked = rss_kib(daemon.pid)
        note(f"{count} {kind} clients parked in {park_s:.1f} s")

        latencies: list[float] = []
        missed = 0
        problems: list[str] = []
        per_blip = []
        cpu0, daemon_cpu0 = client_cpu(), cpu_seconds(daemon.pid)
        busy = 0.0
        with Profiler(daemon.pid, f"fanout-{count}-{kind}", profile) as profiler:
            for i in range(blips):
                ms = 1000 + i
                started = time.time_ns()
                os.write(pty.master, b"%d\n" % ms)
                got, trouble = clients.answers(count, timeout=10 + count / 1000)
                busy += (time.time_ns() - started) / 1e9
                problems += trouble
                delays = [(at - started) / 1e6 for at, body in got.values() if blip_ms(body) == ms]
                missed += count - len(delays)
                latencies += delays
                per_blip.append(round(max(delays), 2) if delays else None)
                clients.repark()
                wait_idle(daemon.pid, quiet=0.1)
                if kind == "longpoll":
                    all_parked(daemon.port, count - len(clients.dead))
        client_cpu_s = client_cpu() - cpu0
        daemon_cpu_s = cpu_seconds(daemon.pid) - daemon_cpu0
        rss_after = rss_kib(daemon.pid)
        clients.close()
        result: dict[str, Any] = {
            "clients": count,
            "kind": kind + (" resumed" if resume else ""),
            "refused_while_resuming": refused,
            "via": "web node (LISTEN)" if via_web else "all node",
            "repark": "at once" if repark_at_once else "after all answered",
            "blips": blips,
            "latency_ms": percentiles(latencies),
            "missed": missed,
            "problems": sorted(set(problems))[:5],
            "slowest_client_per_blip_ms": per_blip,
            "park_s": round(park_s, 2),
            "daemon_rss_kib": {"before": rss_before, "parked": rss_parked, "after_blips": rss_after},
            "rss_per_parked_client_kib": round((rss_parked - rss_before) / count, 2),
            # CPU time is counted in 10 ms ticks: too coarse for a few answers.
            # Each blip's answers and, for long-polls, reading every
            # client's next request.
            "daemon_cpu_s_per_blip": round(daemon_cpu_s / blips, 4) if daemon_cpu_s >= 0.1 else None,
            "daemon_cpu_us_per_answer": (
                round(1e6 * daemon_cpu_s / len(latencies), 1) if daemon_cpu_s >= 0.1 and latencies else None
            ),
            "client_cpu_percent_while_fanning_out": round(100 * client_cpu_s / busy, 1) if busy > 0.05 else None,
        }
        if profiler.summary is not None:
            result["profile"] = profiler.summary
        return result
    finally:
        daemon.stop()
        if ingest is not None:
            ingest.stop()
        pty.close()


def main() -> None:
    """Run the benchmark for each N and print its JSON."""
    args = parse_args(
        __doc__.strip().splitlines()[0],
        [
            (["--clients"], {"help": "comma-separated N [1,1000,10000; quick: 1,1000,10000 with fewer blips]"}),
            (["--blips"], {"type": int, "help": "blips per N [20; quick: 5]"}),
            (["--kind"], {"choices": ["longpoll", "sse"], "default": "longpoll"}),
            (["--sse-path"], {"default": "/api/v1/live?meters=1", "help": "the live stream's path"}),
            (["--resume"], {"action": "store_true",
                            "help": "streams resume with Last-Event-ID (with --kind sse), those refused"
                                    " while replays run connecting again"}),
            (["--via-web"], {"action": "store_true",
                             "help": "park the clients on a web node fed by a separate ingest node"
                                     " through PostgreSQL (NOTIFY/LISTEN)"}),
            (["--repark-after-all"], {"action": "store_true",
                                      "help": "long-polls ask again only once every client has its answer"
                                              " (isolates the fan-out from the re-parking load)"}),
        ],
    )
    if args.resume and args.kind != "sse":
        raise SystemExit("--resume is for live streams: --kind sse")
    counts = [int(n) for n in (args.clients or "1,1000,10000").split(",")]
    blips = args.blips or (5 if args.quick else 20)
    limit = raise_open_files(2 * max(counts) + 1000)
    path = "/blip/1" if args.kind == "longpoll" else args.sse_path
    cluster = BenchCluster().start()
    cluster.fresh_database(DATABASE)
    try:
        results = [run(n, blips, args.kind, path, cluster, args.profile, not args.repark_after_all,
                       args.via_web, args.resume)
                   for n in counts]
    finally:
        cluster.stop()
    emit({
        "benchmark": "fanout",
        "mode": "quick" if args.quick else "full",
        "open_files_limit": limit,
        "runs": results,
        "targets": {
            "p99_ms_at_10000": 250, "rss_per_parked_client_kib": 4, "p50_ms_at_1": 2,
        },
    })


if __name__ == "__main__":
    main()
