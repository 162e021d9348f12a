"""Shell completion, generated from the parser: current, complete, and working in a real bash."""

import argparse
import importlib.machinery
import importlib.util
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from libmgsave.arguments import build_parser

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "scripts" / "gen-completion"
BASH_COMPLETION = ROOT / "completions" / "mgsave"
ZSH_COMPLETION = ROOT / "completions" / "_mgsave"


def _load_generator():
    loader = importlib.machinery.SourceFileLoader("gen_completion", str(GENERATOR))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


gen = _load_generator()
PARSER = build_parser()
COMMANDS = gen.subcommands(PARSER)


def complete(line: str) -> list[str]:
    """What bash offers at the end of ``line``, through the function ``complete -p mgsave`` names."""
    script = f"""
        source {shlex.quote(str(BASH_COMPLETION))}
        spec=$(complete -p mgsave) || exit 3
        function=${{spec#*-F }}; function=${{function%% *}}
        read -ra COMP_WORDS <<< {shlex.quote(line)}
        [[ {shlex.quote(line)} == *" " ]] && COMP_WORDS+=("")
        COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); COMP_LINE={shlex.quote(line)}; COMP_POINT=${{#COMP_LINE}}
        "$function" mgsave "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
        printf '%s\\n' "${{COMPREPLY[@]}}"
    """
    done = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True,
                          timeout=30, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return [word for word in done.stdout.splitlines() if word]


def test_the_completion_is_current():
    assert BASH_COMPLETION.read_text() == gen.render_bash(PARSER), "run scripts/gen-completion"
    assert ZSH_COMPLETION.read_text() == gen.render_zsh(PARSER), "run scripts/gen-completion"


def test_a_command_completes_from_its_first_letters():
    assert complete("mgsave sh") == ["shutdown"]
    assert sorted(complete("mgsave ")) == sorted(COMMANDS)
    assert complete("mgsave --json --policy x.yaml st") == ["status"]


def test_an_option_completes_from_its_first_letters():
    assert sorted(complete("mgsave shutdown --d")) == ["--deadline", "--debug", "--dry-run"]
    assert complete("mgsave check --st") == ["--state-dir", "--strict"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_of_every_command_is_offered(command):
    sub = COMMANDS[command]
    want = {w for a in sub._actions if a.option_strings for w in a.option_strings if w.startswith("--")}
    assert want <= set(complete(f"mgsave {command} --")), "an option of the parser is missing"
    assert set(complete(f"mgsave {command} --")) <= want | {"--help"}
    choices = {str(c) for a in sub._actions if not a.option_strings and a.choices for c in a.choices}
    if choices:
        assert set(complete(f"mgsave {command} ")) == choices


def test_the_global_options_come_before_a_command_too():
    want = {w for a in PARSER._actions if a.option_strings for w in a.option_strings if w.startswith("--")}
    assert set(complete("mgsave --")) == want


def test_values_complete_to_files_or_nothing(tmp_path):
    (tmp_path / "policy.yaml").write_text("version: 1\n")
    (tmp_path / "states").mkdir()
    assert complete(f"mgsave --policy {tmp_path}/pol") == [f"{tmp_path}/policy.yaml"]
    assert complete(f"mgsave report --svg {tmp_path}/pol") == [f"{tmp_path}/policy.yaml"]
    assert complete(f"mgsave --state-dir {tmp_path}/") == [f"{tmp_path}/states"]
    assert complete("mgsave shutdown --deadline ") == []
    # an option's value is not taken for the command
    assert complete("mgsave --state-dir plan --") == complete("mgsave --")


def test_every_option_that_takes_a_value_is_known_to_the_script():
    script = BASH_COMPLETION.read_text()
    for parser in [PARSER, *COMMANDS.values()]:
        for action in parser._actions:
            if action.option_strings and action.nargs != 0 and not isinstance(action, argparse._VersionAction):
                assert all(word in script.split("case $prev in")[1] for word in action.option_strings), action


# -- zsh: an interactive zsh on a pseudo-terminal, TAB pressed after each line -----------------

# Every match the completion system adds is also written to the file named by $CAPTURE.
ZSH_CAPTURE = """
compadd() {
    if (( ${@[(I)-[OAD]*]} )); then builtin compadd "$@"; return; fi  # only asking, not adding
    local -a hits
    builtin compadd -A hits "$@"
    print -rl -- $hits >> $CAPTURE
    builtin compadd "$@"
}
"""
ZSH_DRIVER = """
zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z "fpath=($1 \\$fpath); autoload -Uz compinit; compinit -u -D; source $2; zstyle ':completion:*' menu no"
zpty -w z "touch $3.ready"
# The completion system skips its work while more keys are waiting: one key at a time.
await() { for j in {1..100}; do [[ -e $1 ]] && return; sleep 0.1; done }
await $3.ready
for i in {4..$#}; do
    zpty -w z "CAPTURE=$3.$i; touch $3.$i.set"
    await $3.$i.set
    zpty -w -n z "${@[i]}"$'\\t'
    await $3.$i
    zpty -w z $'\\C-u'
done
zpty -w z "touch $3.done"
await $3.done  # the zsh on the pseudo-terminal ends with this shell
"""


def zsh_complete(tmp_path: Path, *lines: str) -> list[list[str]]:
    """What zsh offers at the end of each line, from completions/_mgsave as compinit loads it."""
    (tmp_path / "capture.zsh").write_text(ZSH_CAPTURE)
    (tmp_path / "driver.zsh").write_text(ZSH_DRIVER)
    out = tmp_path / "matches"
    driver = subprocess.Popen(["zsh", "-f", str(tmp_path / "driver.zsh"), str(ROOT / "completions"),
                               str(tmp_path / "capture.zsh"), str(out), *lines])
    try:
        deadline = time.monotonic() + 30
        while not Path(f"{out}.done").exists():
            assert time.monotonic() < deadline, "zsh did not complete the lines"
            time.sleep(0.1)
    finally:
        driver.kill()
        driver.wait()
    return [Path(f"{out}.{i}").read_text().split() if Path(f"{out}.{i}").exists() else []
            for i in range(4, 4 + len(lines))]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="needs zsh (scripts/setup installs it)")
def test_zsh_completes_commands_options_and_values(tmp_path):
    (tmp_path / "policy.yaml").write_text("version: 1\n")
    lines = ["mgsave sh", "mgsave shutdown --d", "mgsave check --st", "mgsave plan ",
             f"mgsave --policy {tmp_path}/pol", "mgsave "]
    results = dict(zip(lines, zsh_complete(tmp_path, *lines)))
    assert results["mgsave sh"] == ["shutdown"]
    assert sorted(results["mgsave shutdown --d"]) == ["--deadline", "--debug", "--dry-run"]
    assert sorted(results["mgsave check --st"]) == ["--state-dir", "--strict"]
    assert sorted(results["mgsave plan "]) == ["boot", "shutdown"]
    assert results[f"mgsave --policy {tmp_path}/pol"] == ["policy.yaml"]
    assert sorted(results["mgsave "]) == sorted(COMMANDS)
