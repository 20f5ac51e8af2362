"""`@FILE` for every option that takes a list: `--classes @keep.txt`, `--layers @heads.txt`.

A 30,000-class selection does not fit on a command line (the kernel caps one argument at
128 KiB: "Argument list too long"), and long lists are better kept in a file anyway. Before a
command parses its arguments, each `@FILE` given to a list option is replaced by the file's
items:
  - an option that takes a comma-separated list (`--classes`): the items, separated in the
    file by commas, spaces or newlines, joined with commas;
  - a repeatable option (`--layers`, `--keep`, `--map`, ...): one occurrence per non-empty
    line (lines, not commas, since globs and regexes may hold commas and spaces).
Which options take lists is read from the command itself, so a new option needs no entry here.
"""

from __future__ import annotations

import re
from pathlib import Path

import click

__all__ = ["COMMA_LISTS", "expand"]

COMMA_LISTS = frozenset({"--classes"})  # one string with commas; every repeatable option is a list too


def expand(command: click.Command, args: list[str]) -> list[str]:
    """`args` with every `OPTION @FILE` (or `OPTION=@FILE`) of a list option replaced by the file's items."""
    lists = {name: _kind(option) for option in command.params if isinstance(option, click.Option) for name in option.opts}
    lists = {name: kind for name, kind in lists.items() if kind}
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":  # what follows is positional, whatever it looks like
            out.extend(args[i:])
            break
        name, eq, value = arg.partition("=")
        if eq and lists.get(name) and value.startswith("@"):
            out.extend(_items(name, value[1:], lists[name]))
        elif arg in lists and i + 1 < len(args) and args[i + 1].startswith("@"):
            out.extend(_items(arg, args[i + 1][1:], lists[arg]))
            i += 1
        else:
            out.append(arg)
        i += 1
    return out


def _kind(option: click.Option) -> str | None:
    if option.is_flag:
        return None
    if any(name in COMMA_LISTS for name in option.opts):
        return "comma"
    return "lines" if option.multiple else None


def _items(option: str, path: str, kind: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise click.BadParameter(f"cannot read the list file @{path} ({reason}); give a readable text file", param_hint=f"'{option}'") from e
    if kind == "comma":
        items = [item for item in re.split(r"[\s,]+", text) if item]
        return [option, ",".join(items)] if items else [option, ""]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return [piece for line in lines for piece in (option, line)]
