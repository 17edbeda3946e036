"""
Where blipserver publishes, and what: the broker URL, the topics, and the
retained Home Assistant discovery messages of each meter. Topics, for the
prefix ``blip``::

    blip/status                                    online / offline (will)
    blip/<meter>/power                             W, e.g. 1234.5
    blip/<meter>/energy                            kWh, e.g. 8123.456
    homeassistant/sensor/blip/meter<meter>_power/config    discovery
    homeassistant/sensor/blip/meter<meter>_energy/config   discovery
"""

import json
import re
from dataclasses import dataclass, field
from typing import Optional
from urllib.parse import parse_qsl, unquote, urlsplit

from blip import __version__
from blip.meters import Meter

#: Default ports of mqtt:// and mqtts://.
PORTS = {"mqtt": 1883, "mqtts": 8883}
#: Home Assistant's default discovery prefix.
DISCOVERY = "homeassistant"

_TOPIC_CHARACTERS = re.compile(r"^[^#+\x00]+$")
_ID_CHARACTERS = re.compile(r"[^A-Za-z0-9_-]")


class BrokerError(ValueError):
    """
    A broker URL that cannot be used; the message says why and never holds
    the password.
    """


@dataclass(frozen=True, slots=True)
class Broker:
    """
    Where and how to publish.

    :param host: the broker's host name or address.
    :param port: its port.
    :param tls: whether to speak TLS (``mqtts://``); the broker's
        certificate is checked against the system's trusted authorities.
    :param username: the user name to log in with, if any.
    :param password: its password (never logged nor shown).
    :param prefix: the first levels of blipserver's topics.
    :param discovery: Home Assistant's discovery prefix.
    """

    host: str
    port: int
    tls: bool = False
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    prefix: str = "blip"
    discovery: str = DISCOVERY

    def __str__(self) -> str:
        user = f"{self.username}@" if self.username is not None else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "mqtts" if self.tls else "mqtt"
        return f"{scheme}://{user}{host}:{self.port}/{self.prefix}"

    @property
    def node(self) -> str:
        """
        The prefix as Home Assistant's ids may spell it.
        """
        return _ID_CHARACTERS.sub("_", self.prefix)

    @property
    def availability(self) -> str:
        """
        The topic saying whether blipserver is publishing.
        """
        return f"{self.prefix}/status"

    def state(self, meter: int, kind: str) -> str:
        """
        :return: the topic of a meter's ``power`` or ``energy``.
        """
        return f"{self.prefix}/{meter}/{kind}"

    def config(self, meter: int, kind: str) -> str:
        """
        :return: the discovery topic of a meter's ``power`` or ``energy``
            sensor.
        """
        return f"{self.discovery}/sensor/{self.node}/meter{meter}_{kind}/config"


def parse_broker(url: str) -> Broker:
    """
    Read a broker URL: ``mqtt://[user[:password]@]host[:port][/prefix]``,
    or ``mqtts://`` for TLS; ``?discovery=PREFIX`` changes Home Assistant's
    discovery prefix. User and password may be percent-encoded.

    :raise BrokerError: saying what is wrong, without the password.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as e:
        raise BrokerError(f"not a broker URL ({_without_password(str(e), url)})") from None
    if parts.scheme not in PORTS:
        raise BrokerError("the URL must start with mqtt:// or mqtts:// (TLS)")
    if not parts.hostname:
        raise BrokerError("no host in the URL")
    if parts.fragment:
        raise BrokerError("a broker URL has no #fragment")
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(options) - {"discovery"})
    if unknown:
        raise BrokerError(f"unknown URL option {unknown[0]!r} (known: discovery)")
    prefix = unquote(parts.path).strip("/") or "blip"
    discovery = options.get("discovery", DISCOVERY).strip("/")
    for name, topic in (("prefix", prefix), ("discovery prefix", discovery)):
        if not _TOPIC_CHARACTERS.match(topic) or "//" in topic:
            raise BrokerError(f"the {name} {topic!r} is not a valid topic (no +, #, empty levels)")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return Broker(
        host=parts.hostname,
        port=port if port is not None else PORTS[parts.scheme],
        tls=parts.scheme == "mqtts",
        username=username,
        password=password,
        prefix=prefix,
        discovery=discovery,
    )


def _without_password(text: str, url: str) -> str:
    password = urlsplit(url).password if "@" in url else None
    return text.replace(password, "***") if password else text


@dataclass(frozen=True, slots=True)
class Message:
    """
    One message to publish.

    :param topic: where.
    :param payload: what (UTF-8 text).
    :param retain: whether the broker keeps it for later subscribers.
    """

    topic: str
    payload: str
    retain: bool = True


def discovery_messages(broker: Broker, meter: Meter) -> list[Message]:
    """
    :return: the retained Home Assistant discovery messages of a meter: a
        power sensor and an energy sensor under one device named from the
        meter's label.
    """
    model = f"{meter.pulses_per_kwh:g} impulses/kWh"
    if meter.multiplier != 1:
        model += f", x{meter.multiplier:g}"
    device = {
        "identifiers": [f"{broker.node}_meter{meter.id}"],
        "name": meter.label or f"Meter {meter.id}",
        "manufacturer": "blipserver",
        "model": model,
        "sw_version": __version__,
    }
    if meter.description:
        device["hw_version"] = meter.description
    common = {
        "availability_topic": broker.availability,
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": device,
        "origin": {"name": "blipserver", "sw_version": __version__},
    }
    power = {
        "name": "Power",
        "unique_id": f"{broker.node}_meter{meter.id}_power",
        "state_topic": broker.state(meter.id, "power"),
        "device_class": "power",
        "state_class": "measurement",
        "unit_of_measurement": "W",
        "suggested_display_precision": 0,
        **common,
    }
    energy = {
        "name": "Energy",
        "unique_id": f"{broker.node}_meter{meter.id}_energy",
        "state_topic": broker.state(meter.id, "energy"),
        "device_class": "energy",
        "state_class": "total_increasing",
        "unit_of_measurement": "kWh",
        "suggested_display_precision": 3,
        **common,
    }
    return [
        Message(broker.config(meter.id, kind), json.dumps(body, separators=(",", ":")))
        for kind, body in (("power", power), ("energy", energy))
    ]
