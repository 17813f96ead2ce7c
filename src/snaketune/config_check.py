"""Unknown configuration keys are errors, named with the closest known key.

A misspelt key (``training: {learnin_rate: 1e-4}`` in a ``--configfile``, or ``--config
'training={"learnin_rate": 1}'``) must not be silently ignored: the run would train with the
default. The schema (``workflow/schemas/config.schema.yaml``) lists the keys of every level;
JSON Schema's own message ("Additional properties are not allowed") names neither the path nor
what was meant, so this check runs first.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import yaml

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    pass


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA.read_text())


def unknown_keys(config, schema: dict, root: dict | None = None, path: str = "") -> list[str]:
    """One message per key of ``config`` that the schema does not know, at any level."""
    root = root or schema
    while "$ref" in schema:  # "#/definitions/<name>"
        schema = root["definitions"][schema["$ref"].rsplit("/", 1)[-1]]
    problems = []
    if isinstance(config, dict) and "properties" in schema:
        known = schema["properties"]
        for key, value in config.items():
            where = f"{path}.{key}" if path else str(key)
            if key in known:
                problems += unknown_keys(value, known[key], root, where)
            elif schema.get("additionalProperties") is False:
                close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
                hint = f"; did you mean {f'{path}.{close[0]}' if path else close[0]!r}?" if close else f" (known: {', '.join(known)})"
                problems.append(f"unknown config key {where!r}{hint}")
    elif isinstance(config, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(config):
            problems += unknown_keys(item, schema["items"], root, f"{path}[{index}]")
    return problems


def check_config(config: dict) -> None:
    """Raise :class:`ConfigError` listing every unknown key."""
    problems = unknown_keys(config, load_schema())
    if problems:
        raise ConfigError("; ".join(problems))
