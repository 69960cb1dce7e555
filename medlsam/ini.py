"""The published INI-style ``.txt`` config format (and YAML): reading, value conversion, writing.

``medlsam.config`` turns what this module reads into typed, validated dataclasses.
"""

from __future__ import annotations

import configparser
import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from medlsam.errors import ConfigError
from medlsam.io import atomic_write_text

_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$")


def parse_value(text: str | None) -> Any:
    """Convert one ``.txt`` config value: int, float, bool, ``[list]``, None or string.

    Follows the published conversion order (int, float, list, bool, string) and fixes its
    traps: ``[]`` -> ``[]``, ``.5`` -> 0.5, ``1.5e-4`` -> 0.00015, ``TRUE`` -> True, ``-``
    stays a string. An empty value is None.
    """
    if text is None:
        return None
    text = text.strip()
    if text == "":
        return None
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        if not inner:
            return []
        return [parse_value(item) for item in inner.split(",")]
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if text.lower() in ("none", "null"):
        return None
    return text


def read_raw(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            loaded = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from err
        if not isinstance(loaded, dict) or not all(isinstance(v, dict) for v in loaded.values()):
            raise ConfigError(f"{path}: expected sections [data], [vit], [weight] as mappings")
        return {
            str(s).lower(): {str(k).lower(): v for k, v in sec.items()} for s, sec in loaded.items()
        }
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"))
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as err:
        first = str(err).splitlines()[0]
        raise ConfigError(f"{path}: not a valid INI config ({first})") from err
    return {
        section.lower(): {key: parse_value(value) for key, value in parser.items(section)}
        for section in parser.sections()
    }


def suggest(word: str, options: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def write_config_txt(
    path: str | os.PathLike[str], sections: Mapping[str, Mapping[str, Any]]
) -> Path:
    """Write sections as a published-format ``.txt`` config (values as the parser reads them)."""

    def fmt(value: Any) -> str:
        if isinstance(value, (list, tuple)):
            return "[" + ", ".join(fmt(v) for v in value) + "]"
        if isinstance(value, Path):
            return str(value)
        return "" if value is None else str(value)

    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {fmt(value)}" for key, value in values.items()]
        lines.append("")
    return atomic_write_text(path, "\n".join(lines))
