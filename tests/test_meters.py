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


def test_time_of_use_tariff(tmp_path) -> None:
    """
    [[meter.tariff]] rules price the hours they match, first match first,
    with ranges running past midnight; other hours cost the meter's price.
    """
    meters = Meters.from_file(write(tmp_path, """
[[meter]]
id = 1
price_per_kwh = 2.0

[[meter.tariff]]
price_per_kwh = 3.5
days = ["fri", "mon"]
hours = "17-21"

[[meter.tariff]]
price_per_kwh = 1.0
hours = "22-06"

[[meter.tariff]]
price_per_kwh = 9.0
days = ["mon"]
"""))
    meter = meters.get(1)
    assert meter.tariff[0].days == ("mon", "fri")
    monday, tuesday, friday = 0, 1, 4
    assert meter.price_at(monday, 17) == 3.5
    assert meter.price_at(friday, 20) == 3.5
    assert meter.price_at(friday, 21) == 2.0
    assert meter.price_at(tuesday, 17) == 2.0
    assert meter.price_at(tuesday, 23) == 1.0
    assert meter.price_at(tuesday, 5) == 1.0
    assert meter.price_at(tuesday, 6) == 2.0
    assert meter.price_at(monday, 12) == 9.0
    prices = meter.week_prices()
    assert len(prices) == 168
    assert prices[friday * 24 + 18] == 3.5 and prices[tuesday * 24 + 12] == 2.0


def test_meter_without_tariff_has_one_price() -> None:
    """
    Without a tariff every hour of the week costs price_per_kwh.
    """
    meters = Meters()
    assert set(meters.get(1).week_prices()) == {0.0}


@pytest.mark.parametrize(
    "tariff, message",
    [
        ("price_per_kwh = 1\nhours = '6-22'", 'hours must be "HH-HH"'),
        ("price_per_kwh = 1\nhours = '06-25'", "an end from 01 to 24"),
        ("price_per_kwh = 1\nhours = '24-06'", "a start from 00 to 23"),
        ("price_per_kwh = 1\nhours = '06-06'", "is empty"),
        ("price_per_kwh = 1\nhours = 6", 'hours must be "HH-HH"'),
        ("price_per_kwh = 1\ndays = ['monday']", "days must be a list of mon"),
        ("price_per_kwh = 1\ndays = []", "days must be a list of mon"),
        ("price_per_kwh = -1", "price_per_kwh must be 0 or more"),
        ("price_per_kwh = nan", "price_per_kwh must be 0 or more"),
        ("price_per_kwh = 'x'", "price_per_kwh must be a number"),
        ("hours = '06-22'", "price_per_kwh is missing"),
        ("price_per_kwh = 1\nweekdays = 'mon'", "tariff #1: unknown setting 'weekdays'"),
    ],
)
def test_bad_tariffs_are_refused_with_a_reason(tmp_path, tariff: str, message: str) -> None:
    """
    A tariff rule that cannot be used is refused, naming the meter, the
    rule and what is wrong.
    """
    text = f"[[meter]]\nid = 1\n[[meter.tariff]]\n{tariff}\n"
    with pytest.raises(MetersError, match=f"meter #1: .*{message}"):
        Meters.from_file(write(tmp_path, text))


def test_tariff_must_be_tables(tmp_path) -> None:
    """
    A tariff given as anything but [[meter.tariff]] tables is refused.
    """
    with pytest.raises(MetersError, match="tariff must be"):
        Meters.from_file(write(tmp_path, "[[meter]]\nid = 1\ntariff = 3\n"))


@pytest.mark.parametrize("setting", ["pulses_per_kwh = inf", "multiplier = nan", "price_per_kwh = inf"])
def test_numbers_must_be_finite(tmp_path, setting: str) -> None:
    """
    Infinite or not-a-number settings (TOML allows both) are refused.
    """
    with pytest.raises(MetersError, match="must be"):
        Meters.from_file(write(tmp_path, f"[[meter]]\nid = 1\n{setting}\n"))
