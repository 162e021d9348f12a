"""``--json`` output: the same data as json.dumps, the outer levels one member a line, each
deeper value (a guest, a step) on one line of its own."""

import json

import pytest

from libmgsave.jsonout import dumps

DOCUMENTS = [
    {},
    [],
    {"format": "mgsave.status", "guests": [{"name": "web", "steps": [{"ok": True}]}, {"name": "db"}], "empty": []},
    {"a": {True: 1, 2: [1], 1.5: None, None: {"x": [{"y": 1}]}}, "b": [[1, [2]]], "text": "é\n\"quoted\""},
    [1, "two", None, {"three": [3]}],
]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_the_same_data_as_json_dumps(document):
    assert json.loads(dumps(document)) == json.loads(json.dumps(document))


def test_what_is_not_json_is_written_as_its_text():
    class Odd:
        def __str__(self):
            return "odd"

    assert json.loads(dumps({"value": Odd(), "deep": {"x": [Odd()]}})) == {"value": "odd", "deep": {"x": ["odd"]}}


def test_each_guest_on_a_line_of_its_own():
    text = dumps({"format": "mgsave.status", "guests": [{"name": "web", "steps": [{"ok": True}]}, {"name": "db"}]})
    assert text.splitlines() == [
        "{",
        '  "format": "mgsave.status",',
        '  "guests": [',
        '    {"name": "web", "steps": [{"ok": true}]},',
        '    {"name": "db"}',
        "  ]",
        "}",
    ]
