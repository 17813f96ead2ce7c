"""Read an ``experiment_summary.md`` into an :class:`Experiment`.

The summary is hand-edited Markdown in two generations (see EXPERIMENT_FORMAT.md), so the
reader is liberal about layout (column order, case, decorations, ``-`` for n/a, CRLF) and
strict about meaning: anything it cannot read unambiguously raises :class:`SummaryError`
naming the file and line. Nothing here touches the file system beyond reading the summary.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

# Columns that describe a run but never enter its parameters or directory name.
INFORMATIONAL_COLUMNS = {"run_name", "type", "est_time", "notes", "comment", "description", "status"}

# Header spellings (normalised: lower case, runs of non-alphanumerics -> "_") that mean the
# same parameter; anything else is kept under its normalised header.
COLUMN_ALIASES = {
    "run": "run_name",
    "name": "run_name",
    "rank": "lora_rank",
    "lora_r": "lora_rank",
    "lr": "learning_rate",
    "bs": "batch_size",
    "batch_sizes": "batch_size",
    "alpha": "lora_alpha",
    "estimated_time": "est_time",
    "est": "est_time",
    "time": "est_time",
    "num_epochs": "epochs",
}

# Configuration bullet keys (normalised like columns) -> setting name.
CONFIG_ALIASES = {
    "batch_size": "batch_size",
    "batch_sizes": "batch_size",
    "lora_rank": "lora_rank",
    "lora_ranks": "lora_rank",
    "lora_alpha": "lora_alpha",
    "learning_rate": "learning_rate",
    "learning_rates": "learning_rate",
    "gpus": "gpus",
    "gpu": "gpus",
    "num_gpus": "gpus",
    "epochs": "epochs",
    "recipe": "recipe",
    "system_prompt": "system_prompt",
    "validation_during_training": "validation",
    "validation": "validation",
    "dataset_packing": "packing",
    "packing": "packing",
    "temperature": "temperature",
    "scorer": "scorer",
    "checkpoint_directory": "checkpoint_dir",
    "output_directory": "checkpoint_dir",
    "naming_pattern": "naming_pattern",
    "seed": "seed",
    "max_tokens": "max_tokens",
    "epochs_to_evaluate": "eval_epochs",
    "time": "time",
    "time_limit": "time",
}

NOT_APPLICABLE = {"-", "—", "–", "n/a", "na", "none"}
RUN_TYPES = {
    "fine-tuned": "fine-tuned",
    "finetuned": "fine-tuned",
    "fine tuned": "fine-tuned",
    "fine-tune": "fine-tuned",
    "control": "control",
    "base": "control",
}

POSITIVE_INTS = ("lora_rank", "batch_size", "epochs")
POSITIVE_FLOATS = ("learning_rate", "lora_alpha")
NON_NEGATIVE_INTS = ("gpus", "seed", "max_tokens")
# Whole numbers end up in torch tensors, sizes and seeds: they must fit a signed 64-bit integer.
INT64_MAX = 2**63 - 1
QUOTES = {'"': '"', "'": "'", "“": "”"}

_UNSAFE_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class SummaryError(ValueError):
    """A problem in the summary, reported as ``<file>, line N: <problem>``."""

    def __init__(self, path: Path | str, line: int, problem: str):
        self.path, self.line, self.problem = Path(path), line, problem
        super().__init__(f"{path}, line {line}: {problem}")


@dataclass(frozen=True)
class Run:
    """One row of the All Runs table."""

    name: str
    type: str  # "fine-tuned" or "control"
    model: str
    params: dict[str, str]  # parameter columns the row fills in, raw text, table order
    line: int


@dataclass(frozen=True)
class Task:
    """One row of the Evaluation Tasks table."""

    name: str
    script: str
    dataset: str
    description: str
    line: int


@dataclass
class Experiment:
    """Everything the workflow reads from one summary."""

    path: Path
    name: str
    runs: list[Run]
    columns: list[str]  # parameter columns of the All Runs table, in table order
    models: dict[str, str]  # model name -> path as written (relative = to the experiment dir)
    dataset: str | None
    tasks: list[Task]
    config: dict[str, str]  # the Configuration section's common values, raw text
    config_lines: dict[str, int]
    # Which epochs to evaluate, as phrases "last", "all" or "0,1", by precedence: the
    # "Epochs to evaluate" bullet, the Evaluation Matrix cell, the Evaluation Plan's prose.
    eval_epochs: str | None
    eval_matrix: dict[tuple[str, str], str | None] = field(default_factory=dict)
    eval_sentence: str | None = None
    stated_directory: str | None = None  # Quick Reference "Experiment:" (informational)

    @property
    def directory(self) -> Path:
        return self.path.parent

    @property
    def fine_tuned(self) -> list[Run]:
        return [run for run in self.runs if run.type == "fine-tuned"]

    @property
    def controls(self) -> list[Run]:
        return [run for run in self.runs if run.type == "control"]


def normalise_key(text: str) -> str:
    """``"**LoRA Rank**"`` -> ``"lora_rank"``; ``"Est. Time"`` -> ``"est_time"``."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _strip_decorations(text: str) -> str:
    text = text.strip()
    for mark in ("**", "__", "`"):
        if len(text) >= 2 * len(mark) and text.startswith(mark) and text.endswith(mark):
            text = text[len(mark) : -len(mark)].strip()
    return text


def _split_row(line: str) -> list[str]:
    """Cells of a Markdown table row; ``\\|`` is a literal bar."""
    body = line.strip()
    if body.startswith("|"):
        body = body[1:]
    if body.endswith("|") and not body.endswith("\\|"):
        body = body[:-1]
    cells = re.split(r"(?<!\\)\|", body)
    return [cell.replace("\\|", "|").strip() for cell in cells]


def _is_separator(line: str) -> bool:
    cells = _split_row(line)
    return bool(cells) and all(re.fullmatch(r":?-{2,}:?", cell.replace(" ", "")) for cell in cells)


def leading_value(text: str) -> str:
    """The value at the start of a bullet, without trailing prose.

    A quoted value keeps its exact quoted text (``"" `` -> empty, a prompt with spaces stays
    whole); a backticked value its backticked text; otherwise the first word.
    """
    text = text.strip()
    if not text:
        return ""
    quote = text[0]
    if quote in "\"'“":
        closing = "”" if quote == "“" else quote
        end = text.rfind(closing)
        if end > 0:
            return text[1:end]
    if quote == "`":
        end = text.find("`", 1)
        if end > 0:
            return text[1:end]
    return text.split()[0].rstrip(",;")


def check_quoted(reader: _Reader, text: str, line: int, label: str) -> None:
    """A value that opens a quote must close it on its line (else the quote would be taken as text)."""
    closing = QUOTES.get(text[:1])
    if closing and text.rfind(closing) <= 0:
        raise reader.error(line, f"the {label}'s opening quote {text[0]} never closes on its line: {text!r}")


def cell_value(text: str) -> str:
    """A table cell's value: quotes and backticks removed, decorations dropped."""
    text = _strip_decorations(text)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


@dataclass
class _Line:
    number: int
    text: str


class _Reader:
    """Splits the file into sections so each part is read from the lines it owns."""

    def __init__(self, path: Path, text: str):
        self.path = path
        self.lines = [_Line(i + 1, t) for i, t in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))]

    def error(self, line: int, problem: str) -> SummaryError:
        return SummaryError(self.path, line, problem)

    def section(self, title: str, level: int = 2, within: list[_Line] | None = None) -> list[_Line] | None:
        """Lines under the first heading of ``level`` whose normalised title starts with ``title``."""
        lines = self.lines if within is None else within
        prefix = "#" * level + " "
        start = None
        for index, line in enumerate(lines):
            stripped = line.text.strip()
            heading = re.match(r"^(#+)\s", stripped)
            if start is None:
                if stripped.startswith(prefix) and normalise_key(stripped[len(prefix) :]).startswith(title):
                    start = index + 1
            elif heading and len(heading.group(1)) <= level:
                return lines[start:index]
        return None if start is None else lines[start:]

    def tables(self, lines: list[_Line]) -> list[tuple[_Line, list[_Line]]]:
        """(header line, data lines) for each table among ``lines``."""
        found = []
        index = 0
        while index < len(lines):
            line = lines[index]
            if line.text.strip().startswith("|") and index + 1 < len(lines) and _is_separator(lines[index + 1].text):
                rows = []
                index += 2
                while index < len(lines) and lines[index].text.strip().startswith("|"):
                    rows.append(lines[index])
                    index += 1
                found.append((line, rows))
            else:
                index += 1
        return found


_BULLET = re.compile(r"^(?P<indent>\s*)[-*+]\s+(?P<body>.*)$")
_KEY_VALUE = re.compile(r"^\*\*(?P<key>[^*]+?)\*\*\s*:?\s*(?P<value>.*)$|^(?P<plain>[^:`]+?):\s*(?P<pvalue>.*)$")


def _bullets(lines: list[_Line]) -> list[tuple[int, str, str, int]]:
    """(indent, key, value, line) for each ``- **Key:** value`` / ``- Key: value`` bullet."""
    found = []
    for line in lines:
        match = _BULLET.match(line.text)
        if not match:
            continue
        body = match.group("body").strip()
        kv = _KEY_VALUE.match(body)
        if kv is None:
            found.append((len(match.group("indent")), "", body, line.number))
        elif kv.group("key") is not None:
            key = kv.group("key").strip().rstrip(":").strip()
            found.append((len(match.group("indent")), key, kv.group("value").lstrip(":").strip(), line.number))
        else:
            found.append((len(match.group("indent")), kv.group("plain").strip(), kv.group("pvalue").strip(), line.number))
    return found


def _first_path(text: str) -> str | None:
    match = re.search(r"`([^`]+)`", text)
    return match.group(1).strip() if match else None


def _check_safe_name(reader: _Reader, name: str, line: int, what: str) -> None:
    if not name:
        raise reader.error(line, f"empty {what}")
    if name in {".", ".."} or ".." in name.split("/") or name.startswith("-") or _UNSAFE_NAME.search(name):
        raise reader.error(
            line, f"unsafe {what} {name!r}: it must be one path component without '/', '..', a leading '-' or control characters"
        )


def check_value(reader: _Reader, key: str, value: str, line: int) -> None:
    """Reject a numeric setting that is unparsable or out of range."""
    error = reader.error
    label = key.replace("_", " ")
    if key in POSITIVE_INTS or key in NON_NEGATIVE_INTS:
        if not re.fullmatch(r"[+]?\d+", value):
            raise error(line, f"{label} {value!r} is not a whole number")
        if key in POSITIVE_INTS and int(value) <= 0:
            raise error(line, f"{label} must be positive, got {value}")
        if int(value) > INT64_MAX:
            raise error(line, f"{label} {value} is out of range (at most {INT64_MAX})")
    elif key in POSITIVE_FLOATS:
        try:
            number = float(value)
        except ValueError:
            raise error(line, f"{label} {value!r} is not a number") from None
        if not math.isfinite(number) or number <= 0:
            raise error(line, f"{label} must be a positive number, got {value}")


def _read_title(reader: _Reader) -> str:
    for line in reader.lines:
        stripped = line.text.strip()
        if stripped.startswith("# "):
            title = stripped[2:].strip()
            return re.sub(r"^experiment\s*:\s*", "", title, flags=re.IGNORECASE).strip()
        if stripped:
            break
    return reader.path.parent.name


def _read_runs(reader: _Reader) -> tuple[list[Run], list[str]]:
    lines = reader.section("all_runs")
    if lines is None:
        raise reader.error(1, "no '## All Runs' section with the table of runs")
    tables = reader.tables(lines)
    if not tables:
        where = lines[0].number if lines else len(reader.lines)
        raise reader.error(where, "the '## All Runs' section has no table")
    header_line, rows = tables[0]
    headers = [COLUMN_ALIASES.get(key, key) for key in (normalise_key(_strip_decorations(h)) for h in _split_row(header_line.text))]
    for required in ("run_name", "model", "type"):
        if required not in headers:
            raise reader.error(header_line.number, f"the All Runs table has no '{required.replace('_', ' ').title()}' column")
    duplicated = {h for h in headers if headers.count(h) > 1}
    if duplicated:
        raise reader.error(header_line.number, f"the All Runs table repeats column(s) {sorted(duplicated)}")
    if not rows:
        raise reader.error(header_line.number, "the All Runs table has no runs")
    columns = [h for h in headers if h not in INFORMATIONAL_COLUMNS and h != "model"]
    runs: list[Run] = []
    seen: dict[str, int] = {}
    for row in rows:
        cells = _split_row(row.text)
        if len(cells) != len(headers):
            raise reader.error(row.number, f"the row has {len(cells)} cells but the header has {len(headers)}")
        values = dict(zip(headers, (cell_value(c) for c in cells), strict=True))
        name = values["run_name"]
        _check_safe_name(reader, name, row.number, "run name")
        if name in seen:
            raise reader.error(row.number, f"duplicate run name {name!r} (first on line {seen[name]})")
        seen[name] = row.number
        run_type = RUN_TYPES.get(values["type"].strip().lower())
        if run_type is None:
            raise reader.error(row.number, f"unknown Type {values['type']!r} for run {name!r}: expected 'Fine-tuned' or 'Control'")
        model = values["model"]
        if not model or model.lower() in NOT_APPLICABLE:
            raise reader.error(row.number, f"run {name!r} has no model")
        params = {}
        for key in columns:
            value = values[key]
            if value == "" or value.lower() in NOT_APPLICABLE:
                continue
            if _CONTROL.search(value):
                raise reader.error(row.number, f"{key.replace('_', ' ')} {value!r} contains control characters")
            if key == "system_prompt":
                check_quoted(reader, _strip_decorations(cells[headers.index(key)]), row.number, "System Prompt cell")
            check_value(reader, key, value, row.number)
            params[key] = value
        runs.append(Run(name=name, type=run_type, model=model, params=params, line=row.number))
    return runs, columns


def _read_models(reader: _Reader) -> dict[str, tuple[str, int]]:
    """Model name -> (path, line), from either generation's Models subsection.

    New: ``- **<Model>**: `<path>``` with property sub-bullets. Old: ``- **Location:** `dir```
    and ``- **Models Used:**`` with nested ``- <Model>: `<path>` ✓`` (or a bare name under
    the location).
    """
    resources = reader.section("resources") or []
    lines = reader.section("models", level=3, within=resources) or []
    models: dict[str, tuple[str, int]] = {}
    location = None
    structural = {"location", "models_used", "verified", "size", "notes", "format", "source", "status", "built_by"}
    parent = ""
    top_indent = None
    for indent, key, value, number in _bullets(lines):
        if top_indent is None or indent <= top_indent:
            top_indent = indent
            parent = normalise_key(key)
            nested = False
        else:
            nested = True
        if nested and parent != "models_used":
            continue  # a property of the model above (Verified, Size, ...)
        if not nested:
            if parent == "location":
                location = _first_path(value) or leading_value(value)
            if parent in structural:
                continue
        if key:
            name, path = _strip_decorations(key), _first_path(value)
        else:  # "- Llama-3.2-1B-Instruct ✓": a bare name under the location
            name, path = re.split(r"\s+[✓✔(]|\s+-\s", value)[0].strip().strip("`*"), _first_path(value)
        if not name:
            continue
        if path is None:
            if location is None:
                continue
            path = f"{location.rstrip('/')}/{name}"
        elif location and "/" not in path:
            path = f"{location.rstrip('/')}/{path}"
        models[name] = (path, number)
    return models


def _read_dataset(reader: _Reader) -> str | None:
    resources = reader.section("resources") or []
    lines = reader.section("dataset", level=3, within=resources) or []
    for _indent, key, value, _number in _bullets(lines):
        if normalise_key(key) in {"path", "location", "file"}:
            return _first_path(value) or leading_value(value)
    return _quick_reference(reader).get("dataset")


def _quick_reference(reader: _Reader) -> dict[str, str]:
    lines = reader.section("quick_reference") or []
    found = {}
    for _indent, key, value, _number in _bullets(lines):
        path = _first_path(value)
        if key and path:
            found[normalise_key(key)] = path
    return found


def _read_tasks(reader: _Reader) -> list[Task]:
    resources = reader.section("resources") or []
    lines = reader.section("evaluation_tasks", level=3, within=resources)
    if lines is None:
        return []
    tasks = []
    seen: dict[str, int] = {}
    for header_line, rows in reader.tables(lines)[:1]:
        headers = [normalise_key(_strip_decorations(h)) for h in _split_row(header_line.text)]
        headers = ["name" if h in {"task_name", "task", "name"} else h for h in headers]
        if "name" not in headers or "script" not in headers:
            raise reader.error(header_line.number, "the Evaluation Tasks table needs 'Task Name' and 'Script' columns")
        for row in rows:
            cells = _split_row(row.text)
            if len(cells) != len(headers):
                raise reader.error(row.number, f"the row has {len(cells)} cells but the header has {len(headers)}")
            values = dict(zip(headers, (cell_value(c) for c in cells), strict=True))
            name = values["name"]
            _check_safe_name(reader, name, row.number, "task name")
            if name in seen:
                raise reader.error(row.number, f"duplicate task {name!r} (first on line {seen[name]})")
            seen[name] = row.number
            script = values["script"]
            if not script or script.lower() in NOT_APPLICABLE:
                raise reader.error(row.number, f"task {name!r} has no script")
            tasks.append(Task(name, script, values.get("dataset", ""), values.get("description", ""), row.number))
    return tasks


def _read_config(reader: _Reader) -> tuple[dict[str, str], dict[str, int]]:
    lines = reader.section("configuration") or []
    config: dict[str, str] = {}
    where: dict[str, int] = {}
    for indent, key, value, number in _bullets(lines):
        if not key or indent > 1:
            continue
        name = CONFIG_ALIASES.get(normalise_key(key))
        if name is None:
            continue
        raw = value.strip()
        if name == "system_prompt":
            check_quoted(reader, raw, number, "System prompt")
            config[name] = leading_value(raw) if raw[:1] in "\"'“`" else raw
        elif name == "eval_epochs":
            config[name] = raw
        elif name == "checkpoint_dir":
            config[name] = _first_path(raw) or leading_value(raw)
        else:
            config[name] = leading_value(raw)
        where[name] = number
        if name in POSITIVE_INTS + POSITIVE_FLOATS + NON_NEGATIVE_INTS:
            if name == "lora_alpha" and not re.match(r"[\d.]", config[name]):
                del config[name]  # "Auto-set to 2 x rank": the default is the rule
                continue
            check_value(reader, name, config[name], number)
    return config, where


EPOCH_PHRASE = re.compile(r"epochs?\s*((?:\d+\s*(?:,|and|&|\+)?\s*(?:epoch\s*)?)+)", re.IGNORECASE)


# The epoch with the lowest validation loss, decided after training (checkpoint "best").
BEST_PHRASE = re.compile(
    r"\bbest\s+(?:by|on)\s+(?:the\s+)?val(?:idation)?\s+loss\b|\bbest\s+epochs?\b|\b(?:best|lowest)\s+val(?:idation)?\s+loss\b",
    re.IGNORECASE,
)
# ...also the bare word in a bullet or a matrix cell ("best and last"), not in prose
BEST_WORD = re.compile(r"\bbest\b", re.IGNORECASE)
BEST = "best"


def epochs_phrase(text: str, bare_best: bool = True) -> str | None:
    """ "last epoch" -> "last", "all epochs" -> "all", "epochs 0, 1" -> "0,1", "best by validation
    loss" / "best epoch" -> "best" (combinable: "best and last" -> "best,last"); None if absent.
    ``bare_best``: the word "best" alone counts (a bullet, a matrix cell; not the plan's prose)."""
    best = BEST_PHRASE.search(text) or (bare_best and BEST_WORD.search(text))
    if best:
        rest = BEST_WORD.sub(" ", BEST_PHRASE.sub(" ", text))
        other = _epochs_phrase(rest) if re.search(r"\w", rest) else None
        return BEST if other is None else f"{BEST},{other}"
    return _epochs_phrase(text)


def _epochs_phrase(text: str) -> str | None:
    lowered = text.lower()
    if re.search(r"\ball\s+(\w+\s+)?epochs?\b|\bevery\s+epoch|\beach\s+epoch", lowered) or lowered.strip() == "all":
        return "all"
    if re.search(r"\b(last|final)\b", lowered):
        return "last"
    match = EPOCH_PHRASE.search(text)
    if match:
        numbers = re.findall(r"\d+", match.group(1))
        return ",".join(str(int(n)) for n in numbers)
    bare = re.fullmatch(r"\s*\d+(\s*,\s*\d+)*\s*", text)
    if bare:
        return ",".join(str(int(n)) for n in re.findall(r"\d+", text))
    return None


def _read_eval_plan(reader: _Reader) -> tuple[str | None, dict[tuple[str, str], str | None], str | None]:
    """(``Epochs to evaluate`` bullet, Evaluation Matrix cells, the plan's prose) as phrases."""
    lines = reader.section("evaluation_plan")
    if lines is None:
        return None, {}, None
    stated = None
    for _indent, key, value, number in _bullets(lines):
        if normalise_key(key) in {"epochs_to_evaluate", "epochs", "evaluate_epochs"}:
            stated = epochs_phrase(value)
            if stated is None:
                raise reader.error(number, f"cannot read which epochs to evaluate from {value!r}")
            break
    matrix: dict[tuple[str, str], str | None] = {}
    matrix_lines = reader.section("evaluation_matrix", level=3, within=lines)
    for header_line, rows in reader.tables(matrix_lines or [])[:1]:
        headers = _split_row(header_line.text)
        tasks = [cell_value(h) for h in headers[1:]]
        for row in rows:
            cells = _split_row(row.text)
            if len(cells) != len(headers):
                raise reader.error(row.number, f"the row has {len(cells)} cells but the header has {len(headers)}")
            run = cell_value(cells[0])
            for task, cell in zip(tasks, cells[1:], strict=True):
                text = cell_value(cell)
                if normalise_key(task) in {"notes", "comment", "description"}:
                    continue
                if not text or text.lower() in NOT_APPLICABLE or text.startswith(("✗", "❌", "✘")) or text.lower() == "no":
                    continue
                rest = text.lstrip("✓✔ ").strip()
                if rest.lower() in {"yes", "y", "x"}:
                    rest = ""
                phrase = epochs_phrase(rest) if rest else None
                if rest and phrase is None:
                    raise reader.error(row.number, f"cannot read the epochs to evaluate from {text!r}")
                matrix[(run, task)] = phrase
    prose_lines = [line.text for line in lines if not line.text.strip().startswith("|") and not line.text.strip().startswith("#")]
    prose = " ".join(prose_lines)
    sentence = epochs_phrase(prose, bare_best=False) if re.search(r"epoch", prose, re.IGNORECASE) or BEST_PHRASE.search(prose) else None
    return stated, matrix, sentence


def read_summary(path: Path | str) -> Experiment:
    """Parse and validate one summary; raise :class:`SummaryError` on the first problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SummaryError(path, 0, "file not found") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise SummaryError(path, line, "the file is not valid UTF-8") from None
    return parse_summary(text, path)


def parse_summary(text: str, path: Path | str) -> Experiment:
    reader = _Reader(Path(path).absolute(), text)
    runs, columns = _read_runs(reader)
    models = _read_models(reader)
    for run in runs:
        if run.model not in models:
            raise reader.error(run.line, f"model {run.model!r} of run {run.name!r} has no path under '## Resources' -> '### Models'")
    tasks = _read_tasks(reader)
    config, config_lines = _read_config(reader)
    eval_epochs, matrix, eval_sentence = _read_eval_plan(reader)
    if eval_epochs is None and "eval_epochs" in config:
        eval_epochs = epochs_phrase(config["eval_epochs"])
        if eval_epochs is None:
            raise reader.error(config_lines["eval_epochs"], f"cannot read which epochs to evaluate from {config['eval_epochs']!r}")
    task_names = {task.name for task in tasks}
    run_names = {run.name for run in runs}
    for (run, task), _phrase in matrix.items():
        if run not in run_names:
            raise reader.error(_line_of(reader, run), f"the Evaluation Matrix names run {run!r}, which is not in All Runs")
        if task not in task_names:
            raise reader.error(_line_of(reader, task), f"the Evaluation Matrix names task {task!r}, which is not in Evaluation Tasks")
    return Experiment(
        path=reader.path,
        name=_read_title(reader),
        runs=runs,
        columns=columns,
        models={name: path for name, (path, _line) in models.items()},
        dataset=_read_dataset(reader),
        tasks=tasks,
        config=config,
        config_lines=config_lines,
        eval_epochs=eval_epochs,
        eval_matrix=matrix,
        eval_sentence=eval_sentence,
        stated_directory=_quick_reference(reader).get("experiment"),
    )


def _line_of(reader: _Reader, needle: str) -> int:
    section = reader.section("evaluation_plan") or reader.lines
    for line in section:
        if needle in line.text:
            return line.number
    return 1
