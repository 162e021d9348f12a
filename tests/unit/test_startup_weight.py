"""What a pass loads before its first save: counted, never timed (bench/run startup times it).

A shutdown pass on libvirt's test driver, stopped at its first save, must not have loaded the boot
pass's planner and executor, the held-image checks, or ctypes (which the channels' fallback loads
only when a daemon could take channels); and every dataclass of the package has a docstring,
without which ``dataclass()`` builds one with ``inspect.signature`` at import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """\
import os, sys
import libvirt

def stop(*args, **kwargs):
    sys.stderr.write("LOADED " + " ".join(sorted(sys.modules)) + "\\n")
    sys.stderr.flush()
    os._exit(0)

libvirt.virDomain.managedSave = stop
from libmgsave import cli
cli.main(sys.argv[1:])
sys.exit("no guest was saved")
"""

NOT_ON_THE_SHUTDOWN_PATH = ("libmgsave.plan.boot", "libmgsave.execute.boot", "libmgsave.actions.held",
                            "libmgsave.restorable", "libmgsave.timeline", "ctypes", "jsonschema")


def _loaded_at_first_save(tmp_path: Path) -> set[str]:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\n")
    state = tmp_path / "state"
    argv = [sys.executable, "-c", PROBE, "--policy", str(policy), "--connect", "test:///default",
            "--state-dir", str(state), "shutdown"]
    subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=120)  # validates, keeps
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("LOADED ")]
    assert lines, f"the pass never reached its first save:\n{proc.stdout}\n{proc.stderr}"
    return set(lines[0].split()[1:])


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
