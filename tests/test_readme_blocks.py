"""Every shell block of the README runs as it is written, in order, from a checkout.

A newcomer pastes the blocks into a terminal after the Quick start's two commands. The blocks
use three shell forms only (a command's stdout may go to a file with `> FILE`), and this test runs exactly those, in-process (a bash per command
would cost a Python start-up each): `NAME=$(python -c "...")/rest` (a path a package installs),
`cat > FILE <<'EOF'` ... `EOF` (a recipe file), and `surgery ...` command lines. Anything else
in a block fails the test, so a block stays pasteable. A block that names a file nobody has
fails here.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex

import pytest

from conftest import FIXTURES, REPO
from helpers import run

README = (REPO / "README.md").read_text(encoding="utf-8")
BLOCKS = [b for b in re.findall(r"```sh\n(.*?)```", README, re.S) if "pip install" not in b]  # the Quick start installs
_ASSIGN = re.compile(r'^([A-Z_]+)=\$\(python -c "(.*)"\)(\S*)$')
_HEREDOC = re.compile(r"^cat > (\S+) <<'EOF'$")


def _python_output(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code, {})  # noqa: S102 - our own README's one-liners
    return out.getvalue().strip()


def _run_block(block: str, variables: dict[str, str]) -> None:
    lines = iter(block.splitlines())
    for line in lines:
        if match := _ASSIGN.match(line):
            variables[match[1]] = _python_output(match[2]) + match[3]
        elif match := _HEREDOC.match(line):
            body = []
            for inner in lines:
                if inner == "EOF":
                    break
                body.append(inner)
            with open(match[1], "w", encoding="utf-8") as f:
                f.write("\n".join(body) + "\n")
        elif line.startswith("surgery "):
            words = shlex.split(re.sub(r'"\$([A-Z_]+)"', lambda m: shlex.quote(variables[m[1]]), line), comments=True)
            if ">" in words:  # `> FILE`: the command's stdout goes to a file
                at = words.index(">")
                words, target = words[:at], words[at + 1]
            else:
                target = None
            result = run(*words[1:])
            expected = 1 if re.search(r"#.*\bexits 1\b", line) else 0  # `surgery diff` exits 1 on a difference, as diff(1)
            assert result.exit_code == expected, f"{line}\n{result.stderr}"
            if target is not None:
                with open(target, "w", encoding="utf-8") as f:
                    f.write(result.stdout)
        else:
            pytest.fail(f"README shell line is not one of the forms this test runs: {line!r}")


def test_the_readme_has_shell_blocks_beyond_the_quick_start():
    assert len(BLOCKS) >= 4 and all("surgery " in b for b in BLOCKS)


@pytest.mark.interop
def test_every_shell_block_runs_as_written(tmp_path, monkeypatch):
    (tmp_path / "fixtures").symlink_to(FIXTURES)
    (tmp_path / "examples").symlink_to(REPO / "examples")  # the torch module that export-onnx builds
    monkeypatch.chdir(tmp_path)
    variables: dict[str, str] = {}
    for block in BLOCKS:
        _run_block(block, variables)
    assert (tmp_path / "minilm.safetensors").exists() and (tmp_path / "start.safetensors").exists()
