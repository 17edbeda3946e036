"""
Tests of broker URLs and of the Home Assistant discovery messages.
"""

import json

import pytest

from blip.meters import Meter
from blip.mqtt.broker import Broker, BrokerError, discovery_messages, parse_broker

HOUSE = Meter(id=1, label="House", pulses_per_kwh=600.0, multiplier=4.0)


def test_broker_urls() -> None:
    """
    Broker URLs give host, port (1883 or 8883 by default), TLS, user and
    percent-decoded password, topic prefix (``blip`` by default) and
    discovery prefix.
    """
    broker = parse_broker("mqtt://broker.lan")
    assert broker == Broker("broker.lan", 1883)
    assert (broker.prefix, broker.discovery, broker.availability) == ("blip", "homeassistant", "blip/status")
    broker = parse_broker("mqtts://me:p%40ss%2Fw@[::1]:9999/home/power/?discovery=ha")
    assert (broker.host, broker.port, broker.tls) == ("::1", 9999, True)
    assert (broker.username, broker.password) == ("me", "p@ss/w")
    assert (broker.prefix, broker.node, broker.discovery) == ("home/power", "home_power", "ha")
    assert broker.state(3, "power") == "home/power/3/power"
    assert broker.config(3, "energy") == "ha/sensor/home_power/meter3_energy/config"
    assert parse_broker("mqtts://h").port == 8883


@pytest.mark.parametrize(
    "url, why",
    [
        ("http://u:hunter2@host", "mqtt:// or mqtts://"),
        ("mqtt://u:hunter2@:1883", "no host"),
        ("mqtt://u:hunter2@host:99999", "not a broker URL"),
        ("mqtt://u:hunter2@host:port", "not a broker URL"),
        ("mqtt://u:hunter2@host/a/+/b", "not a valid topic"),
        ("mqtt://u:hunter2@host/a#b", "fragment"),
        ("mqtt://u:hunter2@host?qos=2", "unknown URL option 'qos'"),
        ("mqtt://u:hunter2@host?discovery=a//b", "not a valid topic"),
    ],
)
def test_bad_broker_urls(url: str, why: str) -> None:
    """
    A bad broker URL is refused with a message saying why that never
    repeats the password; a broker never shows its password.
    """
    with pytest.raises(BrokerError) as caught:
        parse_broker(url)
    assert why in str(caught.value)
    assert "hunter2" not in str(caught.value)
    broker = parse_broker("mqtt://u:hunter2@host")
    assert "hunter2" not in str(broker) and "hunter2" not in repr(broker)
    assert str(broker) == "mqtt://u@host:1883/blip"


def test_discovery_messages() -> None:
    """
    A meter has two retained discovery messages, a power sensor (W,
    measurement) and an energy sensor (kWh, total_increasing), under one
    device named from its label, with the availability topic.
    """
    power, energy = discovery_messages(parse_broker("mqtt://b/home/blip"), HOUSE)
    assert power.topic == "homeassistant/sensor/home_blip/meter1_power/config"
    assert energy.topic == "homeassistant/sensor/home_blip/meter1_energy/config"
    assert power.retain and energy.retain
    power_config, energy_config = json.loads(power.payload), json.loads(energy.payload)
    assert {k: power_config[k] for k in ("device_class", "state_class", "unit_of_measurement")} == {
        "device_class": "power", "state_class": "measurement", "unit_of_measurement": "W",
    }
    assert {k: energy_config[k] for k in ("device_class", "state_class", "unit_of_measurement")} == {
        "device_class": "energy", "state_class": "total_increasing", "unit_of_measurement": "kWh",
    }
    assert power_config["state_topic"] == "home/blip/1/power"
    assert energy_config["state_topic"] == "home/blip/1/energy"
    assert power_config["device"] == energy_config["device"]
    assert power_config["device"]["name"] == "House"
    assert power_config["device"]["identifiers"] == ["home_blip_meter1"]
    assert power_config["unique_id"] != energy_config["unique_id"]
    for config in (power_config, energy_config):
        assert config["availability_topic"] == "home/blip/status"
        assert (config["payload_available"], config["payload_not_available"]) == ("online", "offline")
