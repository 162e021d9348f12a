"""Whether a record's fields may be used (``state.validation``): each field's problem said
exactly, the times of the passes that amend the shutdown record, and an entry's save file only
ever its own guest's under the state directory. Real directories in tmp_path for the paths."""

import pytest

from libmgsave.state.validation import canonical_images, record_problem

URI = "test:///default"
UUID = "0a9f8d3c-1111-2222-3333-444455556666"
KEY = f"{URI} {UUID}"


def record(guests=None, **fields):
    return {"format": "mgsave-state", "kind": "shutdown", "version": 1, "started": 10.0,
            "guests": {} if guests is None else guests, **fields}


def entry(**fields):
    return {"connection": URI, "name": "a", "uuid": UUID, "outcome": "saved", **fields}


GOOD_FIELDS = {"mgsave_version": "1.0", "finished": 11, "interrupted": "SIGTERM", "measured_throughput": 0.5,
               "ok": False, "boot_id": "b", "host_shutdown": {"kind": "reboot", "why": "logind said so"},
               "battery": [{"step": "deadline", "at": 10.0, "runtime_seconds": 900, "seconds_left": 885.0,
                            "why": "on battery", "moved": []},
                           {"step": "replanned", "at": 12.5, "runtime_seconds": None, "seconds_left": 28,
                            "why": "fell", "moved": ["low-1"]}]}


def test_a_record_with_every_field_well_formed_or_null_has_no_problem(tmp_path):
    assert record_problem(record(**GOOD_FIELDS), tmp_path) is None
    assert record_problem(record(**{name: None for name in GOOD_FIELDS if name != "mgsave_version"}),
                          tmp_path) is None


@pytest.mark.parametrize("name, value, what", [
    ("mgsave_version", 1, "a version"), ("mgsave_version", None, "a version"),
    ("finished", "x", "a time"), ("finished", True, "a time"),
    ("interrupted", 15, "a signal name"),
    ("measured_throughput", 0, "a positive number"), ("measured_throughput", -1.0, "a positive number"),
    ("measured_throughput", "fast", "a positive number"),
    ("ok", "yes", "true or false"), ("ok", 1, "true or false"),
    ("boot_id", 5, "a boot ID"),
    ("host_shutdown", "reboot", "a kind of shutdown and why"),
    ("host_shutdown", {"kind": "reboot"}, "a kind of shutdown and why"),
    ("host_shutdown", {"kind": "sleep", "why": "x"}, "a kind of shutdown and why"),
    ("battery", {"step": "deadline"}, "a list of decisions on the battery"),
    ("battery", [{"step": "guessed", "at": 1, "runtime_seconds": 1, "seconds_left": 1, "why": "", "moved": []}],
     "a list of decisions on the battery"),
    ("battery", [{"step": "moved", "at": 1, "runtime_seconds": -1e999, "seconds_left": 1, "why": "", "moved": []}],
     "a list of decisions on the battery"),
    ("battery", [{"step": "moved", "at": 1, "runtime_seconds": 1, "seconds_left": 1, "why": "", "moved": [3]}],
     "a list of decisions on the battery"),
    ("battery", [{"step": "moved", "at": 1, "runtime_seconds": 1, "seconds_left": 1, "why": ""}],
     "a list of decisions on the battery"),
])
def test_each_top_level_field_of_the_wrong_type_is_said(tmp_path, name, value, what):
    assert record_problem(record(**{name: value}), tmp_path) == f"'{name}' is {value!r}, not {what}"


@pytest.mark.parametrize("started", [None, "x", True])
def test_a_record_without_a_start_time_is_said(tmp_path, started):
    data = record(started=started)
    assert record_problem(data, tmp_path) == f"'started' is {started!r}, not a time"
    del data["started"]
    assert record_problem(data, tmp_path) == "'started' is None, not a time"


@pytest.mark.parametrize("by", ["evacuate", "return"])
def test_the_times_of_a_pass_that_amended_the_record_are_checked_like_the_records(tmp_path, by):
    assert record_problem(record(**{by: {"started": 20.0, **GOOD_FIELDS}}), tmp_path) is None
    assert record_problem(record(**{by: 5}), tmp_path) == f"'{by}' is 5, not the times of an {by} pass"
    assert record_problem(record(**{by: {"finished": 1}}), tmp_path) == \
        f"'{by}' is {{'finished': 1}}, not the times of an {by} pass"
    assert record_problem(record(**{by: {"started": 1, "finished": "x"}}), tmp_path) == \
        f"'{by}.finished' is 'x', not a time"
    assert record_problem(record(**{by: {"started": 1, "ok": "x"}}), tmp_path) == f"'{by}.ok' is 'x', not true or false"


def test_an_entrys_problem_names_the_entry_once(tmp_path):
    assert record_problem(record({KEY: entry(name=5)}), tmp_path) == f"entry {KEY!r}: 'name' is 5, not a string"
    assert record_problem(record({KEY: {"name": "a"}}), tmp_path) == f"entry {KEY!r} is incomplete"
    assert record_problem(record({KEY: entry(), f"{URI} x": entry()}), tmp_path).startswith(f"entry '{URI} x'")


def test_an_entrys_save_file_is_only_ever_its_own_guests_under_the_state_directory(tmp_path):
    state = tmp_path / "state"
    (state / "images").mkdir(parents=True)
    (tmp_path / "link").symlink_to(state)
    own = state / "images" / f"{UUID}.save"
    for image in (None, str(own), str(tmp_path / "link" / "images" / f"{UUID}.save")):
        assert record_problem(record({KEY: entry(image=image)}), state) is None, image
    for image in ("/etc/shadow", f"images/{UUID}.save", str(state / "images" / "ffffffff.save")):
        assert record_problem(record({KEY: entry(image=image)}), state) == (
            f"entry {KEY!r}: 'image' is {image!r}, not this guest's save file {own} "
            f"(a record never names a file elsewhere)")


def test_the_save_files_a_record_names_are_named_as_this_mgsave_names_them(tmp_path):
    data = record({KEY: entry(image=str(tmp_path / "link" / "images" / f"{UUID}.save")),
                   f"{URI} other": entry(uuid="other", image=None), f"{URI} none": entry(uuid="none")})
    canonical_images(data, tmp_path / "state")
    assert data["guests"][KEY]["image"] == str(tmp_path / "state" / "images" / f"{UUID}.save")
    assert data["guests"][f"{URI} other"]["image"] is None
    assert "image" not in data["guests"][f"{URI} none"]
