"""What the plan carries for its text, so that ``report`` renders it and parses nothing back:
the boot table's WHY, and where each setting came from."""

from __future__ import annotations

import dataclasses

from libmgsave import report
from libmgsave.history import RecordedPass
from libmgsave.inventory import GuestState
from libmgsave.plan import plan_boot, plan_shutdown
from tests.unit.test_plan import STATE_DIR, by_name, guest, policy


def why_cell(plan, name: str) -> str:
    """The WHY column of a guest's row in the boot table (the last column)."""
    (row,) = [line for line in report.render_plan(plan).splitlines() if f" {name} " in line]
    return row.split("  ")[-1].strip()


def test_the_boot_tables_why_is_the_plans_cause_and_the_reason_is_whole():
    resumed = guest("resumed", GuestState.SHUTOFF, image=True)
    record = RecordedPass.from_dict({"guests": {"%s %s" % resumed.key: {
        "connection": resumed.connection, "name": "resumed", "uuid": resumed.uuid, "outcome": "saved"}}})
    (entry,) = plan_boot([resumed], policy(), record).entries
    assert entry.reason == "if-running: was running at the last shutdown (saved); resumes"
    assert entry.cause == "if-running: was running at the last shutdown (saved)"
    assert why_cell(plan_boot([resumed], policy(), record), "resumed") == entry.cause


def test_the_boot_table_shows_a_reason_as_the_plan_gives_it_never_cut_by_its_words():
    """A reason that happens to end like one (``; resumes``) is not cut: the table renders what
    the plan carries, it does not take the plan's text apart."""
    plan = plan_boot([guest("g", GuestState.SHUTOFF, image=True)], policy(), None)
    odd = dataclasses.replace(plan.entries[0], reason="an admin's note; resumes", cause=None)
    assert why_cell(dataclasses.replace(plan, entries=(odd,)), "g") == "an admin's note; resumes"


def test_plan_verbose_locates_each_setting_from_the_plan_alone():
    p = policy("version: 1\ndefaults: {shutdown_timeout: 30}\nguests:\n  - name: dbs\n    match: {name: a}\n"
               "    order: 3\n")
    plan = plan_shutdown([guest("a")], p, state_dir=STATE_DIR)
    assert plan.rule_lines == {"guests[0] (dbs)": 4, "defaults": 2}
    text = report.render_plan(plan, verbose=True)
    assert "[policy.yaml:4 guests[0] (dbs)]" in text and "[policy.yaml:2 defaults]" in text
    assert by_name(plan)["a"].to_dict(plan.rule_lines)["settings"]["order"]["line"] == 4
