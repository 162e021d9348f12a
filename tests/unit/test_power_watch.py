"""``mgsave power watch``'s decision and the plan's need (pure: readings and plans built by hand),
and check's word when its unit is not enabled."""

import socket
from pathlib import Path

import pytest

from libmgsave.budget import DEADLINE_RESERVE, for_steps
from libmgsave.inventory import GuestInfo, GuestState
from libmgsave.plan import SaveRate, plan_shutdown
from libmgsave.policyfile import parse_policy
from libmgsave.power.decide import Verdict, decide
from libmgsave.power.deadline import FINAL_FLUSH
from libmgsave.power.need import START_LAG, needed_seconds
from libmgsave.policy import Power, UpsAddress
from libmgsave.power.reading import UpsReading
from libmgsave.power.ups import check_power

URI = "test:///default"
GiB = 1024 ** 3


def reading(status="OB", runtime="600", error=None):
    values = {"ups.status": status, "battery.runtime": runtime, "battery.charge": "50", "ups.load": "20"}
    if error:
        return UpsReading("ups1@localhost", 0.0, error)
    return UpsReading.from_values("ups1@localhost", 0.0, values)


@pytest.mark.parametrize("status, runtime, needed, verdict", [
    ("OL", "600", None, Verdict.STANDBY),  # on line: nothing, whatever the runtime
    ("OL CHRG", "10", None, Verdict.STANDBY),
    ("OB", "600", 300, Verdict.STANDBY),  # 600 > 300 + 60
    ("OB", "361", 300, Verdict.STANDBY),
    ("OB", "360", 300, Verdict.SHUT_DOWN_NOW),  # no more than the need plus the margin
    ("OB DISCHRG", "100", 300, Verdict.SHUT_DOWN_NOW),
    ("OB LB", "5000", 10, Verdict.SHUT_DOWN_NOW),  # the UPS's own low-battery flag: at once
    ("OL FSD", "5000", None, Verdict.SHUT_DOWN_NOW),  # forced shutdown: at once
    ("OB", "-5", 300, Verdict.UNKNOWN),  # a runtime that cannot be right is never a reason
    ("OB", "abc", 300, Verdict.UNKNOWN),
    ("OB", "600", None, Verdict.UNKNOWN),  # the need not known
    ("OL OB", "5", 300, Verdict.UNKNOWN),  # both: the state is unknown
    ("WAIT", "5", 300, Verdict.UNKNOWN),
])
def test_the_decision(status, runtime, needed, verdict):
    decision = decide(reading(status, runtime), needed, 60)
    assert decision.verdict is verdict, decision.why
    assert decision.margin == 60


def test_an_unreadable_ups_is_unknown_never_a_shutdown():
    decision = decide(reading(error="cannot connect to localhost port 3493: Connection refused"), 900, 60)
    assert decision.verdict is Verdict.UNKNOWN
    assert "Connection refused" in decision.why


def test_the_reason_names_the_runtime_the_need_and_the_margin():
    decision = decide(reading("OB", "200"), 150, 60)
    assert decision.why == ("on battery, runtime 3 min 20 s left: no more than the 2 min 30 s the shutdown plan "
                            "needs plus the 1 min 00 s margin")
    assert (decision.runtime, decision.needed) == (200, 150)


def guest(name, gib=1, uri=URI):
    return GuestInfo(connection=uri, name=name, uuid=f"00000000-0000-0000-0000-{abs(hash(name)) % 10**12:012d}",
                     state=GuestState.RUNNING, persistent=True, has_managed_save=False, memory_kib=gib * 1024 * 1024)


def plan(guests, text="version: 1\n", rate=GiB / 10):
    return plan_shutdown(guests, parse_policy(text, "policy.yaml"), state_dir=Path("/nonexistent"),
                         rates={URI: SaveRate(rate, "test")})


# What the pass keeps back besides the guests' steps: the deadline's reserve, the final flush
# and the time until the pass reads the UPS itself.
KEPT_BACK = DEADLINE_RESERVE + FINAL_FLUSH + START_LAG


def test_the_need_is_the_last_save_s_end_on_the_learned_rate():
    # 1 GiB then 2 GiB at 0.1 GiB/s on one connection: the second ends 30 s into the pass
    assert needed_seconds(plan([guest("a", 1), guest("b", 2)])) == pytest.approx(30 + KEPT_BACK)


def test_the_need_leaves_the_pass_it_starts_time_for_every_save_it_counted():
    """The pass started at a runtime of need plus margin plans against that runtime less the
    margin and the final flush, a start lag later, and keeps the reserve: its last save fits."""
    the_plan = plan([guest("a", 1), guest("b", 2)])
    margin = 60
    runtime_at_pass_start = needed_seconds(the_plan) + margin - START_LAG
    pass_deadline = runtime_at_pass_start - margin - FINAL_FLUSH
    assert for_steps(pass_deadline) == pytest.approx(max(e.estimate_seconds for e in the_plan.active))


def test_no_guest_running_needs_nothing():
    assert needed_seconds(plan([])) == 0


def test_a_graceful_shutdown_counts_its_timeout_and_order_groups_run_one_after_the_other():
    text = """version: 1
guests:
  - match: {name: web}
    order: 10
    on_shutdown: [shutdown, poweroff]
    shutdown_timeout: 45
"""
    # web's group first (45 s at most), then db's save of 1 GiB (10 s)
    assert needed_seconds(plan([guest("web"), guest("db", 1)], text)) == pytest.approx(55 + KEPT_BACK)


def test_the_need_is_never_more_than_the_deadline():
    text = "version: 1\nlimits: {shutdown_deadline: 2m}\ndefaults: {on_shutdown: [shutdown, poweroff], " \
           "shutdown_timeout: 10m}\n"
    # the pass ends by its deadline, reserve included; the final flush and the start lag come on top
    assert needed_seconds(plan([guest("a")], text)) == 120 + FINAL_FLUSH + START_LAG


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("enabled, warned", [
    ((), False),  # mgsave's units not enabled: not installed as a service here, nothing to say
    (("mgsave.service",), True),
    (("mgsave.service", "mgsave-power.service"), False),
])
def test_check_warns_when_mgsave_is_enabled_but_not_its_ups_watch(tmp_path, enabled, warned):
    wants = tmp_path / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    for unit in enabled:
        (wants / unit).symlink_to(f"/usr/lib/systemd/system/{unit}")
    power = Power(UpsAddress("ups1", "127.0.0.1", closed_port()))
    problems, findings = check_power(power, "policy.yaml", root=str(tmp_path))
    assert problems == []
    said = [f for f in findings if "mgsave-power.service is not enabled" in f.message]
    assert bool(said) is warned
    if warned:
        assert said[0].source == "power.ups" and "systemctl enable --now mgsave-power.service" in said[0].message


class Script:
    """The watch's hooks, scripted: one reading a poll, a clock that moves by the poll's seconds."""

    def __init__(self, readings, need=100.0):
        self.readings, self.need = list(readings), need
        self.now, self.asked, self.started = 0.0, [], []

    def hooks(self):
        from libmgsave.power.watch import WatchHooks

        return WatchHooks(read=self.read, needed=self.needed, start_shutdown=self.start, sleep=self.sleep,
                          clock=lambda: self.now)

    def read(self):
        return self.readings.pop(0)

    def needed(self):
        self.asked.append(self.now)
        return self.need

    def start(self, decision):
        self.started.append(decision)
        return True

    def sleep(self, seconds):
        self.now += seconds
        if not self.readings:
            raise StopIteration  # the script is over without a shutdown


def test_the_need_is_asked_on_battery_at_most_once_a_minute_and_afresh_after_an_outage():
    from libmgsave.power.watch import watch

    power = Power(UpsAddress("ups1", "localhost"), margin=60, poll=5)
    script = Script([reading("OL")] * 3 + [reading("OB", "3600")] * 30 + [reading("OL")] + [reading("OB", "3600")])
    with pytest.raises(StopIteration):
        watch(power, script.hooks())
    # on battery from 15 s: asked then, 60 s later, 60 s later again; the next outage asks at once
    assert script.asked == [15, 75, 135, 170]
    assert script.started == []


def test_the_watch_starts_the_shutdown_once_the_runtime_runs_short_and_not_again_while_under_way(caplog):
    from libmgsave.power.watch import UNDER_WAY_READINGS, watch

    power = Power(UpsAddress("ups1", "localhost"), margin=60, poll=5)
    script = Script([reading("OB", "600"), reading("OB", "200"), reading("OB", "150")]
                    + [reading("OB", "100")] * UNDER_WAY_READINGS)
    with pytest.raises(StopIteration):  # the watch goes on after starting the shutdown
        watch(power, script.hooks())
    [decision] = script.started
    assert decision.verdict is Verdict.SHUT_DOWN_NOW and decision.runtime == 150  # 150 <= 100 + 60
    said = [r.getMessage() for r in caplog.records if "is under way: not starting it again" in r.getMessage()]
    assert len(said) == 1, said  # said once, not every reading


def test_a_shutdown_that_did_not_happen_is_started_again_and_one_back_on_line_is_forgotten(caplog):
    from libmgsave.power.watch import UNDER_WAY_READINGS, watch

    power = Power(UpsAddress("ups1", "localhost"), margin=60, poll=5)
    short = reading("OB", "100")
    script = Script([short] * (UNDER_WAY_READINGS + 2) + [reading("OL"), short, short])
    with pytest.raises(StopIteration):
        watch(power, script.hooks())
    # the first; again once the watch outlived UNDER_WAY_READINGS readings (cancelled); again after the outage
    assert len(script.started) == 3
    assert any("has not happened (cancelled, or it failed)" in r.getMessage()
               for r in caplog.records)
