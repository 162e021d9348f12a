"""The policy's UPS, read through upsd: ``read_ups`` (for ``status``), ``check_power`` (for ``check``).

Only imported when the policy has a ``power:`` section: a host without a UPS loads none of it.
With credentials, mgsave logs in to the UPS (``LOGIN``) as NUT's own clients do: upsd checks a
password only then, so that is how a wrong one is found; it logs out at once.
"""

from __future__ import annotations

import os
import time
from contextlib import suppress
from dataclasses import dataclass

from libmgsave.conflicts import Finding
from libmgsave.errors import Problem
from libmgsave.policy import Power, UpsAddress
from libmgsave.power.credentials import Credentials, CredentialsError, read_credentials
from libmgsave.power.nut import NutConnection, NutError
from libmgsave.power.reading import UpsReading

READ_TIMEOUT = 5.0  # seconds for a whole reading: connecting, logging in, four variables
VARIABLES = ("ups.status", "battery.runtime", "battery.charge", "ups.load")
# Where check files a warning: the key of ``power:`` that would fix it.
UPS_KEY, CREDENTIALS_KEY = "power.ups", "power.credentials"
_REFUSED_LOGIN = {"ACCESS-DENIED", "USERNAME-REQUIRED", "PASSWORD-REQUIRED", "INVALID-USERNAME",
                  "INVALID-PASSWORD"}


@dataclass(frozen=True)
class Failure:
    """Why the UPS could not be read, and which key of ``power:`` is about it."""

    message: str
    key: str
    code: str | None = None  # upsd's, when it answered with one


def read_ups(power: Power, *, timeout: float = READ_TIMEOUT) -> tuple[UpsReading, Failure | None]:
    """A reading of the UPS (never raises): when it cannot be read, a reading whose ``error`` says
    why, and the Failure."""
    now = time.time()
    failure = None
    try:
        credentials = read_credentials(power.credentials) if power.credentials else None
        values = _exchange(power.ups, credentials, timeout)
    except CredentialsError as error:
        failure = Failure(f"the credentials file {power.credentials} {error.message}", CREDENTIALS_KEY)
    except NutError as error:
        failure = _explain(error, power.ups)
    if failure:
        return UpsReading(str(power.ups), now, failure.message), failure
    return UpsReading.from_values(str(power.ups), now, values), None


def _exchange(ups: UpsAddress, credentials: Credentials | None, timeout: float) -> dict[str, str | None]:
    connection = NutConnection.open(ups.host, ups.port, timeout)
    try:
        if credentials is not None:
            for command in (("USERNAME", credentials.username), ("PASSWORD", credentials.password),
                            ("LOGIN", ups.name)):
                _ok(connection.ask(*command), command[0])
        values = {name: _variable(connection, ups.name, name) for name in VARIABLES}
        if values["ups.status"] is None:
            raise NutError("the UPS reports no status (ups.status)")
        with suppress(NutError):
            connection.ask("LOGOUT")
        return values
    finally:
        connection.close()


def _ok(answer: list[str], command: str) -> None:
    if answer[:1] != ["OK"]:
        raise NutError(f"upsd answered {command} with {' '.join(answer)[:80]!r}, not OK")


def _variable(connection: NutConnection, ups: str, name: str) -> str | None:
    """The variable's text, None when the UPS does not report it."""
    try:
        answer = connection.ask("GET", "VAR", ups, name)
    except NutError as error:
        if error.code == "VAR-NOT-SUPPORTED":
            return None
        raise
    if len(answer) != 4 or answer[:3] != ["VAR", ups, name]:
        raise NutError(f"a broken answer to GET VAR {name}: {' '.join(answer)[:80]!r}")
    return answer[3]


def _explain(error: NutError, ups: UpsAddress) -> Failure:
    """upsd's error as the admin can act on it."""
    code = error.code
    if code == "UNKNOWN-UPS":
        server = str(ups).partition("@")[2]
        return Failure(f"upsd on {server} knows no UPS named {ups.name} ('upsc -l {server}' lists those it "
                       f"knows)", UPS_KEY, code)
    if code in _REFUSED_LOGIN:
        return Failure(f"upsd refused the credentials ({code}): a wrong user name or password, or a user "
                       f"without 'upsmon secondary' in upsd.users", CREDENTIALS_KEY, code)
    if code == "DATA-STALE":
        return Failure("upsd has no fresh data from the UPS (DATA-STALE): its driver lost the UPS", UPS_KEY, code)
    if code == "DRIVER-NOT-CONNECTED":
        return Failure(f"upsd's driver for {ups.name} is not running (DRIVER-NOT-CONNECTED)", UPS_KEY, code)
    if code is not None:
        return Failure(f"upsd answered ERR {code}", UPS_KEY, code)
    return Failure(error.message, UPS_KEY)


def check_power(power: Power, policy_file: str, root: str = "/") -> tuple[list[Problem], list[Finding]]:
    """``check``'s word on ``power:``: an unusable credentials file is a problem, located at the
    key; what upsd answers (an unknown UPS, refused credentials, no daemon, no usable runtime)
    are warnings filed under the key that would fix them, since the daemon may just be down; and
    a warning when mgsave's units are enabled but not the UPS watch's (``root``: for tests)."""
    unit = [Finding(_WATCH_OFF, UPS_KEY)] if _watch_unit_off(root) else []
    problems, findings = _check_ups(power, policy_file)
    return problems, findings + (unit if not problems else [])


# The links ``systemctl enable`` makes: mgsave's units installed and enabled, the watch's not.
_WANTS = "etc/systemd/system/multi-user.target.wants"
_WATCH_OFF = ("mgsave-power.service is not enabled: nothing starts the host's shutdown when the battery runs "
              "short for the shutdown plan (fix: systemctl enable --now mgsave-power.service)")


def _watch_unit_off(root: str) -> bool:
    wants = os.path.join(root, _WANTS)
    return (os.path.lexists(os.path.join(wants, "mgsave.service"))
            and not os.path.lexists(os.path.join(wants, "mgsave-power.service")))


def _check_ups(power: Power, policy_file: str) -> tuple[list[Problem], list[Finding]]:
    if power.credentials:
        try:
            read_credentials(power.credentials)
        except CredentialsError as error:
            return [Problem(policy_file, power.credentials_line, power.credentials_column, CREDENTIALS_KEY,
                            f"the credentials file {power.credentials} {error.message}", error.hint)], []
    reading, failure = read_ups(power)
    if failure:
        return [], [Finding(f"the UPS cannot be read: {failure.message}", failure.key)]
    if reading.runtime.value is None:
        return [], [Finding(f"the UPS's runtime is unknown: {reading.runtime.unknown}", UPS_KEY)]
    return [], []
