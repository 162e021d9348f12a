"""What a pass loads before its first save: counted, never timed (bench/run startup times it).

A shutdown pass on libvirt's test driver, stopped at its first save (bench/run startup's probe),
must not have loaded the boot pass's planner and executor, the held-image checks, or ctypes
(which the channels' fallback loads only when a daemon could take channels); and every dataclass
of the package has a docstring, without which ``dataclass()`` builds one with
``inspect.signature`` at import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from bench.startup import FIRST_CALL_PROBE, modules_at_first_call

ROOT = Path(__file__).resolve().parents[2]

NOT_ON_THE_SHUTDOWN_PATH = ("libmgsave.plan.boot", "libmgsave.execute.boot", "libmgsave.actions.held",
                            "libmgsave.restorable", "libmgsave.timeline", "ctypes", "jsonschema")


def _loaded_at_first_save(tmp_path: Path) -> set[str]:
    """The modules of ``mgsave shutdown`` at its first save, by bench/run startup's probe, the
    policy validated by a run before (as in the usual pass)."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\n")
    argv = [sys.executable, "-c", FIRST_CALL_PROBE, "--state-dir", str(tmp_path / "state"),
            "--policy", str(policy), "--connect", "test:///default", "shutdown"]
    subprocess.run(argv, capture_output=True, cwd=ROOT, timeout=120)  # validates the policy, keeps it
    loaded = modules_at_first_call(argv, cwd=ROOT)
    assert loaded is not None, "the pass never reached its first save"
    return set(loaded)


def test_a_shutdown_pass_loads_nothing_of_the_boot_pass_before_its_first_save(tmp_path):
    loaded = _loaded_at_first_save(tmp_path)
    assert "libmgsave.execute.shutdown" in loaded  # the probe stopped where it should
    assert not {m for m in loaded if m.startswith(NOT_ON_THE_SHUTDOWN_PATH)}


def test_every_dataclass_of_the_package_has_a_docstring():
    missing = []
    for path in sorted((ROOT / "libmgsave").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef) and any(_is_dataclass(d) for d in node.decorator_list):
                if ast.get_docstring(node) is None:
                    missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not missing, "dataclasses without a docstring:\n" + "\n".join(missing)


def _is_dataclass(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return (isinstance(target, ast.Name) and target.id == "dataclass") or (
        isinstance(target, ast.Attribute) and target.attr == "dataclass")
