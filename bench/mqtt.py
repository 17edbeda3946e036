"""
Benchmark of MQTT publishing; prints JSON.

- ``blocked_connect``: a broker address whose connection attempts hang (a
  listener on 127.0.0.1 whose accept queue is full). paho's own
  ``connect()`` blocks its caller for the whole attempt; blipserver's
  connection (Twisted's) does not: the figure is the reactor's worst delay
  meanwhile.
- ``hub_publish``: microseconds per point through ``Hub.publish`` with the
  MQTT publisher listening and connected to a local Mosquitto (which must
  be installed: ``tools/need mosquitto``), against no listener, for 10
  meters at the default 5 s interval and at 0 (every blip published).

Run: ``.venv/bin/python bench/mqtt.py``
"""

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as paho  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from twisted.internet import reactor  # noqa: E402
from twisted.internet.defer import ensureDeferred  # noqa: E402
from twisted.internet.task import LoopingCall, deferLater  # noqa: E402

from blip.live.hub import Hub  # noqa: E402
from blip.meters import Meter, Meters  # noqa: E402
from blip.model import Point  # noqa: E402
from blip.mqtt.broker import parse_broker  # noqa: E402
from blip.mqtt.connection import Link, broker_endpoint  # noqa: E402
from blip.mqtt.publisher import Publisher  # noqa: E402

POINTS = 100_000


def full_listener() -> tuple[socket.socket, int, list[socket.socket]]:
    """:return: a listener whose accept queue is full, its port, and the connections filling it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    time.sleep(0.2)
    return listener, port, fillers


def paho_connect_seconds(port: int) -> float:
    """:return: how long paho's own connect() blocks on ``port``."""
    client = paho.Client(CallbackAPIVersion.VERSION2)
    started = time.monotonic()
    try:
        client.connect("127.0.0.1", port)
    except OSError:
        pass
    return time.monotonic() - started


async def twisted_worst_delay(port: int, seconds: float = 6.0) -> float:
    """:return: the reactor's worst delay while a Link tries ``port`` for ``seconds``."""
    broker = parse_broker(f"mqtt://127.0.0.1:{port}")
    link = Link(broker, Publisher(broker, Meters(), reactor, 5.0), broker_endpoint(reactor, broker), reactor)
    worst = [0.0]
    last = [time.monotonic()]

    def beat() -> None:
        now = time.monotonic()
        worst[0] = max(worst[0], now - last[0] - 0.01)
        last[0] = now

    heartbeat = LoopingCall(beat)
    heartbeat.start(0.01)
    link.service.startService()
    await deferLater(reactor, seconds, lambda: None)
    heartbeat.stop()
    await link.service.stopService()
    return worst[0]


def start_mosquitto() -> tuple[subprocess.Popen, int, Path]:
    """:return: a private anonymous Mosquitto, its port and its folder."""
    folder = Path(tempfile.mkdtemp(prefix="blip-bench-mqtt-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (folder / "m.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n")
    program = shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin:/usr/bin:/bin")
    process = subprocess.Popen([program, "-c", str(folder / "m.conf")], stderr=subprocess.DEVNULL)
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.01)
    return process, port, folder


async def publish_cost(port: int, interval: float) -> float:
    """:return: microseconds per Hub.publish; a negative interval means no MQTT listener."""
    meters = Meters([Meter(id=m, label=f"M{m}") for m in range(1, 11)])
    broker = parse_broker(f"mqtt://127.0.0.1:{port}")
    publisher = Publisher(broker, meters, reactor, interval)
    publisher.set_totals([])
    hub = Hub()
    link = Link(broker, publisher, broker_endpoint(reactor, broker), reactor)
    link.service.startService()
    await link.service.whenConnected()
    while link.connection is None:
        await deferLater(reactor, 0.01, lambda: None)
    if interval >= 0:
        hub.listen(publisher.receive)
    started = time.perf_counter()
    for i in range(POINTS):
        hub.publish(Point(i % 10 + 1, i, 1000))
        if i % 1000 == 999:
            await deferLater(reactor, 0, lambda: None)
    elapsed = time.perf_counter() - started
    await link.stop()
    return elapsed / POINTS * 1e6


async def main() -> None:
    """Measure and print the JSON."""
    listener, port, fillers = full_listener()
    result = {
        "blocked_connect": {
            "paho_connect_blocks_s": round(paho_connect_seconds(port), 2),
            "reactor_worst_delay_ms": round(await twisted_worst_delay(port) * 1000, 1),
        }
    }
    listener.close()
    for s in fillers:
        s.close()
    process, port, folder = start_mosquitto()
    try:
        result["hub_publish_us_per_point"] = {
            "no_listener": round(await publish_cost(port, -1), 2),
            "mqtt_interval_5s": round(await publish_cost(port, 5.0), 2),
            "mqtt_interval_0": round(await publish_cost(port, 0.0), 2),
        }
    finally:
        process.terminate()
        process.wait()
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    done = ensureDeferred(main())
    done.addErrback(lambda f: (f.printTraceback(), None))
    done.addBoth(lambda _: reactor.stop())
    reactor.run()
