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
    try:  # utf-8-sig: a byte-order mark is not part of the first section name
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not a UTF-8 text file (expected an INI or YAML config)"
        ) from err
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


class SectionReader:
    """Typed access to raw sections, with errors naming file, key, value and expectation.

    ``known`` maps each section to its keys and whether each is required; unknown sections
    and keys are refused with the closest known name.
    """

    def __init__(
        self, path: Path, raw: dict[str, dict[str, Any]], known: Mapping[str, Mapping[str, bool]]
    ):
        self.path = path
        self.raw = raw
        for section, keys in raw.items():
            if section not in known:
                raise ConfigError(
                    f"{path}: unknown section [{section}]{suggest(section, list(known))} "
                    f"(known: {', '.join('[' + s + ']' for s in known)})"
                )
            for key in keys:
                if key not in known[section]:
                    raise ConfigError(
                        f"{path}: unknown key {key!r} in [{section}]"
                        f"{suggest(key, list(known[section]))}"
                    )
        for section, keys in known.items():
            for key, required in keys.items():
                if required and self.get(section, key) is None:
                    raise ConfigError(f"{path}: [{section}] {key} is required but missing")

    def get(self, section: str, key: str, default: Any = None) -> Any:
        value = self.raw.get(section, {}).get(key)
        return default if value is None else value

    def fail(self, section: str, key: str, value: Any, expected: str) -> ConfigError:
        return ConfigError(f"{self.path}: [{section}] {key} = {value!r}: expected {expected}")

    def path_value(self, section: str, key: str) -> Path | None:
        value = self.get(section, key)
        if value is None or value is False:
            return None
        if not isinstance(value, str):
            raise self.fail(section, key, value, "a file path")
        path = Path(os.path.expanduser(value))
        return path if path.is_absolute() else self.path.parent / path

    def int_value(
        self, section: str, key: str, default: int | None, minimum: int = 0
    ) -> int | None:
        value = self.get(section, key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(section, key, value, f"an integer >= {minimum}")
        return value

    def choice(self, section: str, key: str, default: str, options: tuple[str, ...]) -> str:
        """One of ``options`` (any case), ``default`` when the key is unset. A key written as
        ``none`` (or left empty) reads as no value; where ``none`` is an option, it is that
        option rather than the default."""
        written = self.raw.get(section, {})
        if "none" in options and key in written and written[key] is None:
            return "none"
        value = self.get(section, key, default)
        text = str(value)
        match = {o.lower(): o for o in options}.get(text.lower())
        if match is None:
            raise self.fail(
                section, key, value, f"one of {', '.join(options)}{suggest(text, options)}"
            )
        return match

    def number(
        self, section: str, key: str, default: float, minimum: float = 0.0, strict: bool = False
    ) -> float:
        """A float (ints accepted) ``>= minimum``, or ``> minimum`` when ``strict``."""
        value = self.get(section, key, default)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or value < minimum or (strict and value <= minimum):
            raise self.fail(section, key, value, f"a number {'>' if strict else '>='} {minimum}")
        return float(value)

    def fixed(self, section: str, key: str, allowed: Any) -> None:
        """Refuse any value but ``allowed`` (keys kept for format compatibility only)."""
        value = self.get(section, key)
        if value is not None and value != allowed:
            raise self.fail(section, key, value, f"{allowed!r} (the only value supported)")

    def bool_value(self, section: str, key: str, default: bool) -> bool:
        value = self.get(section, key, default)
        if not isinstance(value, bool):
            raise self.fail(section, key, value, "True or False")
        return value
