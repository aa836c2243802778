"""YAML that a stranger may hand us, read with bounded work.

A few hundred bytes of nested anchors and aliases (the "billion laughs") expand to gigabytes
once a loader resolves them; `yaml.safe_load` resolves them. raycity's files are small flat
mappings that never need an alias, so aliases are refused outright, files are capped in size,
and nothing read is ever formatted into a message unclipped.

YAML 1.1 reads `1e-5` as a string (only `1.0e-5` is a float); everyone writes the former in a
search space, so exponent-only numbers are read as numbers here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from raycity.errors import UserError

MAX_BYTES = 256 * 1024  # a search space is a few hundred bytes


class YamlFileError(UserError, ValueError):
    """A YAML file that is too large, malformed, or uses what raycity refuses."""


class BoundedLoader(yaml.SafeLoader):
    """`SafeLoader` without aliases, reading `1e-5` as a float."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"alias *{clip(event.anchor, 40)} refused (raycity reads no YAML "
                            f"aliases: write the value out)", event.start_mark)
        return super().compose_node(parent, index)


BoundedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def clip(value: object, limit: int = 60) -> str:
    """A value's repr for a message, never longer than `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def load_yaml(path: str | Path, *, what: str = "file", max_bytes: int = MAX_BYTES) -> Any:
    """The parsed file; a file that is not small, plain YAML is one `YamlFileError` naming it."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise YamlFileError(f"{path}: {size} bytes; a {what} is at most {max_bytes} bytes")
        with path.open("rb") as stream:
            data = stream.read(max_bytes + 1)
    except OSError as err:
        raise YamlFileError(f"{path}: cannot read ({err.strerror or err})") from err
    if len(data) > max_bytes:  # grew since the check
        raise YamlFileError(f"{path}: larger than {max_bytes} bytes")
    try:
        return yaml.load(data, Loader=BoundedLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        raise YamlFileError(f"{path}: not usable YAML ({str(err).splitlines()[0][:120]}; "
                            f"{_where(err)})") from err
    except RecursionError as err:
        raise YamlFileError(f"{path}: nested too deeply") from err


def _where(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    return f"line {mark.line + 1}" if mark is not None else "see the file"
