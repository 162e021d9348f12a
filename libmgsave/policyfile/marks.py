"""YAML read into plain data while remembering the line and column of every key and value.

Every node built counts, including every trip through an alias, and nesting is bounded, so a
YAML bomb or a pathologically deep document is a located problem, not exhausted memory.
"""

from __future__ import annotations

from collections.abc import Iterable

import yaml

from libmgsave.errors import Problem
from libmgsave.policyfile.core_schema import CoreLoader

MAX_NODES = 100_000  # YAML nodes built, counting every trip through an alias
MAX_DEPTH = 64  # a real policy nests five levels deep

KeyPath = tuple[str | int, ...]  # where a value sits in the document: ("guests", 2, "after", 0)
_MERGE_TAG = "tag:yaml.org,2002:merge"


class ReadAborted(Exception):
    """Stops reading the document; ``problem`` says why."""

    def __init__(self, problem: Problem):
        super().__init__(problem.message)
        self.problem = problem


class _CountingLoader(CoreLoader):
    """The YAML 1.2 loader that refuses, while composing, a document with too many nodes or too deep."""

    node_count = 0
    depth = 0

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        self.node_count += 1
        self.depth += 1
        if self.node_count > MAX_NODES or self.depth > MAX_DEPTH:
            mark = self.peek_event().start_mark
            message = "nested too deeply" if self.depth > MAX_DEPTH else f"more than {MAX_NODES} YAML nodes"
            raise ReadAborted(Problem(self.name, mark.line + 1, mark.column + 1, "", message))
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _compose(text: str, source: str) -> yaml.Node | None:
    loader = _CountingLoader(text)
    loader.name = source
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


class MarkedDocument:
    """Builds plain Python data from YAML nodes, remembering where each value and key was.

    Every node built counts, including every trip through an alias, so a "billion laughs"
    document stops at ``MAX_NODES`` instead of exhausting memory.
    """

    def __init__(self, source: str):
        self.source = source
        self.value_marks: dict[KeyPath, tuple[int, int]] = {}
        self.key_marks: dict[KeyPath, tuple[int, int]] = {}
        self.problems: list[Problem] = []
        self.bad_paths: set[KeyPath] = set()  # problems already reported; schema errors there are noise
        self.plain_texts: dict[KeyPath, str] = {}  # unquoted scalars as written, for the hints
        self.count = 0
        self._constructor = CoreLoader("")

    def problem(self, node: yaml.Node, path: KeyPath, message: str, hint: str | None = None) -> None:
        line, column = node_mark(node)
        self.problems.append(Problem(self.source, line, column, format_path(path), message, hint))
        self.bad_paths.add(path)

    def build(self, node: yaml.Node, path: KeyPath = (), depth: int = 0) -> object:
        self.count += 1
        if self.count > MAX_NODES:
            line, column = node_mark(node)
            message = f"more than {MAX_NODES} YAML nodes once aliases are expanded (a YAML bomb?)"
            raise ReadAborted(Problem(self.source, line, column, format_path(path), message))
        if depth > MAX_DEPTH:
            line, column = node_mark(node)
            raise ReadAborted(Problem(self.source, line, column, format_path(path), "nested too deeply"))
        self.value_marks.setdefault(path, node_mark(node))
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, index), depth + 1) for index, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _scalar(self, node: yaml.Node, path: KeyPath) -> object:
        if isinstance(node, yaml.ScalarNode) and node.style is None:
            self.plain_texts[path] = node.value
        try:
            value = self._constructor.construct_object(node, deep=True)
        except Exception as error:  # any tag's constructor may raise anything on bad input
            detail = getattr(error, "problem", None) or str(error)
            self.problem(node, path, f"cannot read this value ({node.tag}): {detail}")
            return node.value
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
            self.problem(node, path, "this number is too large")
            return 0
        return value

    def _mapping(self, node: yaml.MappingNode, path: KeyPath, depth: int) -> dict[str, object]:
        if depth > MAX_DEPTH:  # merge keys recurse here without going through build()
            line, column = node_mark(node)
            raise ReadAborted(Problem(self.source, line, column, format_path(path), "nested too deeply"))
        result: dict[str, object] = {}
        merges = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merges.append(value_node)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.problem(key_node, path, "a key must be a plain word, not a list or a mapping")
                continue
            key = key_node.value
            key_path = (*path, key)
            if key in result:
                first_line = self.key_marks[key_path][0]
                self.problem(
                    key_node,
                    key_path,
                    f"duplicate key '{key}' (first given on line {first_line})",
                    "give each key once; YAML would silently keep only the last one",
                )
                continue
            self.key_marks.setdefault(key_path, node_mark(key_node))
            result[key] = self.build(value_node, key_path, depth + 1)
        for merge_node in merges:
            # "<<: *anchor" or "<<: [*a, *b]": keys not given explicitly come from the anchors,
            # the first anchor winning, as YAML says.
            sources = merge_node.value if isinstance(merge_node, yaml.SequenceNode) else [merge_node]
            for source in sources:
                if not isinstance(source, yaml.MappingNode):
                    self.problem(source, path, "'<<' merges mappings only (an alias of a mapping, or a list of them)")
                    continue
                for key, value in self._mapping(source, path, depth + 1).items():
                    result.setdefault(key, value)
        return result


def node_mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def format_path(path: Iterable[str | int]) -> str:
    """``('guests', 2, 'on_shutdown', 0)`` -> ``guests[2].on_shutdown[0]``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _line_column(text: str, offset: int) -> tuple[int, int]:
    before = text[:offset]
    return before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1


def _decode(data: bytes | str, source: str) -> str:
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        before = data[: error.start].decode("utf-8", "replace")
        line, column = _line_column(before, len(before))
        raise ReadAborted(Problem(source, line, column, "", f"not valid UTF-8 text (byte 0x{data[error.start]:02x})"))


def _yaml_hint(message: str) -> str | None:
    """What usually causes a YAML error of this kind."""
    if "\\t" in message:  # PyYAML shows the character as '\t'
        return "indent with spaces, not tabs"
    if "alias" in message or "anchor" in message:
        return "in YAML a value starting with * or & is an alias or an anchor: quote globs, as in \"*prod*\""
    if "mapping values are not allowed" in message:
        return "quote a value that contains ': ', or check the indentation of this line"
    return None


def read_document(data: bytes | str, source: str) -> tuple[object, MarkedDocument]:
    """The document as plain data plus its marks; raises ReadAborted when it is not readable YAML."""
    text = _decode(data, source)
    try:
        node = _compose(text, source)
    except ReadAborted:
        raise
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
        message = "YAML syntax error: " + (error.problem or error.context or "unreadable")
        if error.context and error.problem:
            message += f" ({error.context})"
        raise ReadAborted(Problem(source, line, column, "", message, _yaml_hint(message)))
    except yaml.reader.ReaderError as error:
        line, column = _line_column(text, error.position)
        message = f"YAML cannot contain the character {error.character!r} ({error.reason})"
        raise ReadAborted(Problem(source, line, column, "", message))
    except yaml.YAMLError as error:
        raise ReadAborted(Problem(source, None, None, "", f"YAML error: {error}"))
    except RecursionError:
        raise ReadAborted(Problem(source, None, None, "", "nested too deeply"))
    marks = MarkedDocument(source)
    if node is None:
        return None, marks
    try:
        document = marks.build(node)
    except RecursionError:
        raise ReadAborted(Problem(source, None, None, "", "nested too deeply"))
    return document, marks
