"""The policy's power: section, and what mgsave makes of a UPS's words: pure, no daemon (the real
NUT is in tests/test_power_nut.py)."""

import os

import pytest

from libmgsave.errors import PolicyError
from libmgsave.policy import OnUnreadable, UpsAddress
from libmgsave.policyfile import parse_policy
from libmgsave.power.credentials import CredentialsError, parse_credentials, read_credentials
from libmgsave.power.nut import NutError, quote, split_words
from libmgsave.power.reading import PowerState, UpsReading, measure, power_state


def _problems(text):
    with pytest.raises(PolicyError) as raised:
        parse_policy(text, "policy.yaml")
    return [str(problem) for problem in raised.value.problems]


def test_a_power_section_is_read_with_its_defaults():
    power = parse_policy("version: 1\npower:\n  ups: 'ups1@[::1]:3494'\n  margin: 2m\n", "p.yaml").power
    assert power.ups == UpsAddress("ups1", "::1", 3494) and str(power.ups) == "ups1@[::1]:3494"
    assert (power.margin, power.poll, power.on_unreadable) == (120, 5, OnUnreadable.FIXED_DEADLINE)
    assert power.shutdown_command == ("systemctl", "poweroff") and power.credentials is None
    assert str(parse_policy("version: 1\npower: {ups: ups1@localhost}\n", "p.yaml").power.ups) == "ups1@localhost"
    assert parse_policy("version: 1\n", "p.yaml").power is None


def test_power_problems_are_located():
    problems = _problems("version: 1\nlimits:\n  shutdown_deadline: 30s\npower:\n  ups: ups1@host:70000\n"
                         "  poll: 0.5\n  credentials: relative\n  password: x\n")
    assert problems == [
        "policy.yaml:5:3: at 'power.margin': the default margin (60 s) must be shorter than "
        "limits.shutdown_deadline (30 s): the margin is kept out of the time the shutdown pass has, and would "
        "leave it none (hint: set a shorter power.margin or lengthen limits.shutdown_deadline)",
        "policy.yaml:5:8: at 'power.ups': the port 70000 is not between 1 and 65535 (hint: leave the port out "
        "for NUT's 3493)",
        "policy.yaml:6:9: at 'power.poll': must be at least 1 s, not a number (0.5)",
        "policy.yaml:7:16: at 'power.credentials': must be an absolute path, or null, not a string ('relative')",
        problems[4],
    ]
    assert problems[4].startswith("policy.yaml:8:3: at 'power.password': unknown key")


def test_a_margin_as_long_as_the_deadline_is_refused_at_its_line():
    [problem] = _problems("version: 1\nlimits: {shutdown_deadline: 2min}\npower:\n  ups: u@h\n  margin: 120\n")
    assert problem.startswith("policy.yaml:5:11: at 'power.margin': must be shorter than limits.shutdown_deadline")


@pytest.mark.parametrize(("raw", "value", "why"), [
    ("300", 300.0, None), ("12.5", 12.5, None), ("0", 0.0, None),
    (None, None, "the UPS does not report its runtime"),
    ("-1", None, "its runtime is negative: -1"),
    ("604801", None, "its runtime is absurd: 604801 (more than 604800)"),
    ("1e3", None, "its runtime is not a number: '1e3'"),
    ("nan", None, "its runtime is not a number: 'nan'"),
    ("12\x1b[2J", None, "its runtime is not a number: '12\\\\x1b[2J'"),
])
def test_a_runtime_is_a_decimal_number_in_range_or_unknown_with_the_reason(raw, value, why):
    result = measure(raw, "runtime", low=0, high=604800)
    assert (result.value, result.unknown) == (value, why)


@pytest.mark.parametrize(("status", "state"), [
    ("OL", PowerState.ONLINE), ("OL CHRG LB", PowerState.ONLINE), ("OB DISCHRG", PowerState.ON_BATTERY),
    ("OB LB", PowerState.LOW_BATTERY), ("OL FSD", PowerState.FORCED_SHUTDOWN), ("OL OB", PowerState.UNKNOWN),
    ("WAIT", PowerState.UNKNOWN), ("", PowerState.UNKNOWN),
])
def test_the_status_flags_give_the_state(status, state):
    assert power_state(tuple(status.split())) is state


def test_a_charge_out_of_range_is_unknown_and_said_so():
    reading = UpsReading.from_values("u@h", 0.0, {"ups.status": "OB", "battery.runtime": "90",
                                                   "battery.charge": "140", "ups.load": "5"})
    assert reading.describe() == ("UPS u@h: on battery, runtime 1 min 30 s, charge unknown (its charge is absurd: 140 "
                                  "(more than 100)), load 5%")


def test_the_credentials_file_s_lines():
    found = parse_credentials(b"# upsd\n\nusername = mgsave\npassword =  two words \n")
    assert (found.username, found.password) == ("mgsave", "two words")
    assert "two words" not in repr(found)
    for data, message in ((b"username = a\n", "has no password"),
                          (b"username = a\nusername = b\npassword = c\n", "line 2 gives the username a second time"),
                          (b"user: a\n", "line 1 is not 'username = NAME' or 'password = PASSWORD'"),
                          (b"username = a\npassword =\n", "line 2: the password is empty"),
                          (b"\xff", "is not UTF-8 text")):
        with pytest.raises(CredentialsError) as raised:
            parse_credentials(data)
        assert raised.value.message.startswith(message)
        assert "c\n" not in raised.value.message


def test_the_protocol_s_words_quoted_and_split():
    assert quote("ups1") == "ups1" and quote('a "b" \\c') == '"a \\"b\\" \\\\c"'
    assert split_words('VAR ups1 ups.status "OB LB"') == ["VAR", "ups1", "ups.status", "OB LB"]
    password = 'a "b" c'
    assert split_words("PASSWORD " + quote(password)) == ["PASSWORD", password]
    assert split_words('VAR u v ""') == ["VAR", "u", "v", ""]
    with pytest.raises(ValueError):
        quote("two\nlines")
    with pytest.raises(NutError):
        split_words('VAR u v "unterminated')


def test_a_credentials_file_that_is_missing_a_fifo_or_a_directory_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "fifo", 0o600)
    (tmp_path / "dir").mkdir(mode=0o700)
    for name, message in (("missing", "does not exist"), ("fifo", "cannot be used: it is a FIFO, not a regular file"),
                          ("dir", "cannot be used: it is a directory, not a regular file")):
        with pytest.raises(CredentialsError) as raised:
            read_credentials(str(tmp_path / name))
        assert raised.value.message == message
