"""
Tests of the meters file and the meters' settings.
"""

import pytest

from blip.meters import Meters, MetersError


def write(tmp_path, text: str):
    path = tmp_path / "meters.toml"
    path.write_text(text)
    return path


def test_two_meter_house(tmp_path) -> None:
    """
    The original's two-meter house: 600 pulses/kWh behind a x4 current
    transformer, 2 kr/kWh, in Copenhagen.
    """
    meters = Meters.from_file(write(tmp_path, """
[[meter]]
id = 1
label = "Hus"
pulses_per_kwh = 600
multiplier = 4
price_per_kwh = 2.0
currency = "kr"
timezone = "Europe/Copenhagen"

[[meter]]
id = 2
label = "Værksted"
"""))
    one, two = list(meters)
    assert (one.label, one.pulses_per_kwh, one.multiplier, one.currency) == ("Hus", 600, 4, "kr")
    assert one.watts(1000) == pytest.approx(24000.0)
    assert two.watts(3600) == pytest.approx(1000.0)
    assert 2 in meters and 3 not in meters
    assert meters.get(3).pulses_per_kwh == 1000


def test_without_a_file_there_is_the_default_meter() -> None:
    """
    With no meters file, meter 1 exists with the defaults.
    """
    meters = Meters()
    assert [m.id for m in meters] == [1]
    assert meters.get(1).watts(3600) == pytest.approx(1000.0)


def test_info_lines_describe_meters() -> None:
    """
    A description from the Arduino is kept, and makes the meter known.
    """
    meters = Meters()
    meters.describe(5, "Garage")
    assert meters.get(5).description == "Garage"
    assert 5 in meters


@pytest.mark.parametrize(
    "text, message",
    [
        ("[[meter]]\nid = 'one'\n", "id must be an integer"),
        ("[[meter]]\nid = 1\npulses_per_kwh = 0\n", "pulses_per_kwh must be positive"),
        ("[[meter]]\nid = 1\nmultiplier = 'x'\n", "multiplier must be a number"),
        ("[[meter]]\nid = 1\ntimezone = 'Mars/Olympus'\n", "unknown timezone"),
        ("[[meter]]\nid = 1\ncolour = 'red'\n", "unknown setting 'colour'"),
        ("[[meter]]\nid = 1\n[[meter]]\nid = 1\n", "same id"),
        ("title = 'x'\n", "unknown section"),
        ("", "no \\[\\[meter\\]\\] tables"),
        ("[[meter]\n", "meters.toml"),
    ],
)
def test_bad_files_are_refused_with_a_reason(tmp_path, text: str, message: str) -> None:
    """
    A bad meters file is refused with a message naming the problem.
    """
    with pytest.raises(MetersError, match=message):
        Meters.from_file(write(tmp_path, text))
