"""``snaketune design``: write an ``experiment_summary.md`` from a grid, or add runs to one.

A design is factors with levels (``LoRA Rank=4,8,16``), crossed into the full product;
``paired`` factors are zipped together (their levels go in step) and the zipped tuples are
crossed with the product. Several models are one more crossed factor (``Model``) unless the
grid names ``Model`` itself. Every model also gets a control row unless asked not to.

``--extend`` adds only the combinations an existing summary lacks and never changes a byte of
it: new rows are inserted after the last row of the All Runs table (and of the Evaluation
Matrix, if there is one, so the new runs are evaluated like their siblings), then the file is
replaced atomically. A combination is already there when an existing run has the same value
for every factor of the grid, a run's value being what the workflow trains it with (its row,
else the summary's Configuration, else config.yaml), compared by meaning (``1e-4`` equals
``0.0001``). Factors the grid does not name are ignored, so reordered or extra columns never
duplicate a run. A model without a control gets one if the summary has controls at all.

Both modes check everything before writing: each value must survive a Markdown table cell,
the generated text must parse back into exactly the designed runs, and the workflow must be
able to plan it (known models, sane numbers). Tables are located with the parser's own
reader, so the lines edited are the lines the parser reads.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import yaml

from snaketune.finetune import MANIFEST
from snaketune.naming import ABBREVIATIONS, load_registry, run_directories, short_model_name
from snaketune.parse import (
    COLUMN_ALIASES,
    CONFIG_ALIASES,
    INFORMATIONAL_COLUMNS,
    NON_NEGATIVE_INTS,
    NOT_APPLICABLE,
    POSITIVE_FLOATS,
    POSITIVE_INTS,
    Experiment,
    Run,
    SummaryError,
    _Reader,
    _split_row,
    _strip_decorations,
    cell_value,
    check_value,
    normalise_key,
    parse_summary,
)
from snaketune.plan import BUILTIN_TASK, ExperimentPlan, plan_experiment, resolve_path
from snaketune.render import write_atomic
from snaketune.scaffold import eval_log_name

# The factors a row can set and the workflow reads (plan.py), with their column headers.
FACTOR_HEADERS = {
    "model": "Model",
    "lora_rank": "LoRA Rank",
    "learning_rate": "Learning Rate",
    "batch_size": "Batch Size",
    "lora_alpha": "LoRA Alpha",
    "epochs": "Epochs",
    "seed": "Seed",
    "system_prompt": "System Prompt",
    "dataset": "Dataset",
}
# "|" would end a table cell and a newline the row; backticks delimit paths.
_UNWRITABLE = re.compile(r"[|`\x00-\x1f\x7f]")
_LINE_END = re.compile(r"\r\n|\r|\n")
_UNSAFE_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")
_NOTES_COLUMNS = {"notes", "comment", "description"}


class DesignError(ValueError):
    """Bad input for a design; nothing has been written."""


@dataclass(frozen=True)
class Factor:
    key: str  # parameter key as the parser names it ("lora_rank"); "model" for the Model column
    levels: tuple[str, ...]

    @property
    def header(self) -> str:
        return FACTOR_HEADERS[self.key]


@dataclass
class Grid:
    crossed: list[Factor]
    paired: list[Factor] = field(default_factory=list)

    @property
    def factors(self) -> list[Factor]:
        return self.crossed + self.paired

    @property
    def columns(self) -> list[str]:
        """Parameter columns in the order the user gave them (the Model column is separate)."""
        return [factor.key for factor in self.factors if factor.key != "model"]

    def combinations(self) -> list[dict[str, str]]:
        """Every run of the grid: the crossed product, each with every zipped paired tuple."""
        zipped = list(zip(*(factor.levels for factor in self.paired), strict=True)) if self.paired else [()]
        found = []
        for crossed_values in itertools.product(*(factor.levels for factor in self.crossed)):
            for paired_values in zipped:
                combination = dict(zip((factor.key for factor in self.crossed), crossed_values, strict=True))
                combination.update(zip((factor.key for factor in self.paired), paired_values, strict=True))
                found.append(combination)
        return found

    def describe(self) -> str:
        parts = [f"{factor.header} ({', '.join(factor.levels)})" for factor in self.crossed if len(factor.levels) > 1]
        if len(self.paired) == 1:
            parts.append(f"{self.paired[0].header} ({', '.join(self.paired[0].levels)})")
        elif self.paired:
            names = ", ".join(factor.header for factor in self.paired)
            tuples = ", ".join("(" + ", ".join(values) + ")" for values in zip(*(f.levels for f in self.paired), strict=True))
            parts.append(f"paired ({names}): {tuples}")
        return " × ".join(parts) or "one run per model"


@dataclass
class Outcome:
    """What a design command did: the text it wrote (None if nothing), and what to tell the user."""

    text: str | None
    written: Path | None
    messages: list[str]
    inserted: list[str] = field(default_factory=list)  # --extend: the lines added, in file order


# ---- reading the user's input -------------------------------------------------------------


class _Complaint:
    """Lets parse.check_value (written for summary lines) report against a command-line option."""

    def __init__(self, where: str):
        self.where = where

    def error(self, _line: int, problem: str) -> DesignError:
        return DesignError(f"{self.where}: {problem}")


def factor_key(name: str, where: str) -> str:
    """``"LoRA Rank"``, ``"rank"``, ``"lora_ranks"`` -> ``"lora_rank"``; unknown names are an error."""
    key = normalise_key(name)
    key = COLUMN_ALIASES.get(key, key)
    if CONFIG_ALIASES.get(key) in FACTOR_HEADERS:
        key = CONFIG_ALIASES[key]
    if key not in FACTOR_HEADERS:
        known = ", ".join(FACTOR_HEADERS.values())
        raise DesignError(f"{where}: unknown factor {name.strip()!r}; known factors: {known}")
    return key


def check_text(value: str, where: str) -> str:
    """A value that must reach the Markdown file unchanged."""
    value = value.strip()
    if not value:
        raise DesignError(f"{where}: empty value")
    bad = _UNWRITABLE.search(value)
    if bad:
        raise DesignError(f"{where}: {value!r} contains {bad.group()!r}, which cannot be written into the summary's Markdown")
    return value


def check_level(key: str, value: str, where: str) -> str:
    value = check_text(value, where)
    if value.lower() in NOT_APPLICABLE:
        raise DesignError(f"{where}: {value!r} means 'not applicable' in a summary; give a real value")
    if cell_value(value) != value:
        raise DesignError(f"{where}: {value!r} would lose its quotes or decorations in a table cell")
    check_value(_Complaint(where), key, value, 0)
    return value


def same_value(key: str, first: str, second: str, base: Path) -> bool:
    """Whether two spellings of a parameter mean the same run (``1e-4`` == ``0.0001``, ``08`` == ``8``)."""
    if key in POSITIVE_INTS or key in NON_NEGATIVE_INTS:
        return int(first) == int(second)
    if key in POSITIVE_FLOATS:
        return float(first) == float(second)
    if key == "dataset":
        return resolve_path(first, base) == resolve_path(second, base)
    return first == second


def parse_factor(text: str, where: str) -> tuple[str, list[str]]:
    """``"LoRA Rank=4,8"`` -> ``("lora_rank", ["4", "8"])``."""
    name, equals, values = text.partition("=")
    if not equals or not name.strip():
        raise DesignError(f"{where} {text!r}: expected 'Factor=value1,value2'")
    return factor_key(name, f"{where} {text!r}"), values.split(",")


def read_grid_file(path: Path) -> tuple[list[tuple[str, list[str], str]], list[tuple[str, list[str], str]]]:
    """``{grid: {LoRA Rank: [4, 8]}, paired: {...}}`` -> (crossed, paired) as (key, levels, where)."""
    try:
        # BaseLoader keeps every scalar as written: 1e-5 stays "1e-5", 0.0001 stays "0.0001"
        data = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=yaml.BaseLoader)
    except (OSError, yaml.YAMLError) as error:
        raise DesignError(f"--grid-file {path}: {error}") from None
    if not isinstance(data, dict) or not data or set(data) - {"grid", "paired"}:
        raise DesignError(f"--grid-file {path}: expected a mapping with 'grid' and/or 'paired' (each: factor -> list of levels)")
    found: dict[str, list[tuple[str, list[str], str]]] = {"grid": [], "paired": []}
    for section, factors in data.items():
        if factors in ("", None):
            continue
        if not isinstance(factors, dict):
            raise DesignError(f"--grid-file {path}: '{section}' must map factor names to lists of levels")
        for name, levels in factors.items():
            where = f"--grid-file {path}: {section}.{name}"
            if isinstance(levels, str):
                levels = [levels]
            if not isinstance(levels, list) or not all(isinstance(level, str) for level in levels):
                raise DesignError(f"{where}: expected a list of values")
            found[section].append((factor_key(name, where), levels, where))
    return found["grid"], found["paired"]


def build_grid(grid: list[str], paired: list[str], grid_file: Path | None, models: list[str], base: Path) -> Grid:
    """Check the factors and their levels; add the models as a crossed factor unless named."""
    crossed_specs = [(*parse_factor(text, "--grid"), f"--grid {text!r}") for text in grid]
    paired_specs = [(*parse_factor(text, "--paired"), f"--paired {text!r}") for text in paired]
    if grid_file is not None:
        from_file_crossed, from_file_paired = read_grid_file(grid_file)
        crossed_specs += from_file_crossed
        paired_specs += from_file_paired
    seen: dict[str, str] = {}
    factors: dict[str, list[Factor]] = {"crossed": [], "paired": []}
    for kind, specs in (("crossed", crossed_specs), ("paired", paired_specs)):
        for key, raw_levels, where in specs:
            if key in seen:
                raise DesignError(f"{where}: factor {FACTOR_HEADERS[key]!r} is already given by {seen[key]}")
            seen[key] = where
            levels: list[str] = []
            for raw in raw_levels:
                level = check_level(key, raw, f"{where}: {FACTOR_HEADERS[key]}")
                if key == "model" and level not in models:
                    raise DesignError(f"{where}: model {level!r} is not one of the models ({', '.join(models)}); add it with --model")
                twin = next((other for other in levels if same_value(key, other, level, base)), None)
                if twin is not None:
                    raise DesignError(f"{where}: level {level!r} repeats {twin!r}")
                levels.append(level)
            factors[kind].append(Factor(key, tuple(levels)))
    sizes = {factor.header: len(factor.levels) for factor in factors["paired"]}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{name} has {size}" for name, size in sizes.items())
        raise DesignError(f"--paired factors are zipped together, so they need the same number of levels: {listed}")
    if "model" not in seen:
        factors["crossed"].insert(0, Factor("model", tuple(models)))
    return Grid(factors["crossed"], factors["paired"])


def parse_assignments(values: list[str], option: str, what: str, path_component: bool) -> dict[str, str]:
    """``["name=path", ...]`` -> ``{name: path}`` (checked: writable, no repeats; a task name
    becomes part of file names, so it must also be one safe path component)."""
    found: dict[str, str] = {}
    for text in values:
        name, equals, target = text.partition("=")
        where = f"{option} {text!r}"
        if not equals:
            raise DesignError(f"{where}: expected NAME={what}")
        name, target = check_text(name, where), check_text(target, where)
        if name in found:
            raise DesignError(f"{where}: {name!r} is given twice")
        if "*" in name:  # it is written as a bold bullet key: **name**
            raise DesignError(f"{where}: name {name!r} contains '*'")
        if path_component and (_UNSAFE_NAME.search(name) or name.startswith("-") or ".." in name):
            raise DesignError(f"{where}: name {name!r} must be one path component without '/', '..', a leading '-' or control characters")
        found[name] = target
    return found


# ---- names, rows and completeness ---------------------------------------------------------


def _descriptive_name(combination: dict[str, str]) -> str:
    """All of a run's values in a name; naming.py falls back to it when nothing varies."""
    parts = [short_model_name(combination["model"])]
    parts += [ABBREVIATIONS.get(key, key.replace("_", "")) + value for key, value in combination.items() if key != "model"]
    return "_".join(parts)


def _unique(name: str, taken: set[str]) -> str:
    candidate, suffix = name, 2
    while candidate in taken:
        candidate, suffix = f"{name}-{suffix}", suffix + 1
    taken.add(candidate)
    return candidate


def _run_names(experiment: Experiment, new_runs: list[Run], taken: set[str], registry: dict[str, str]) -> list[str]:
    """The Run Name of each new run: the directory naming.py gives it, unique among ``taken``."""
    # naming.py keys runs by name, so the provisional names must be unique too
    provisional_taken = {run.name for run in experiment.runs}
    provisional = [Run(_unique(run.name, provisional_taken), run.type, run.model, run.params, run.line) for run in new_runs]
    directories = run_directories(dataclasses.replace(experiment, runs=experiment.runs + provisional), registry)
    return [_unique(directories[run.name], taken) for run in provisional]


def table_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def completed(plan: ExperimentPlan) -> set[str]:
    """Run names with nothing left to do, judged like the DAG: the training marker and every
    planned evaluation log exist."""
    done = set()
    for run in plan.runs:
        folder = plan.directory / run.run_dir
        trained = not run.fine_tuned or (folder / MANIFEST).is_file()
        evaluated = all((folder / "eval" / "logs" / eval_log_name(e.task, e.checkpoint)).is_file() for e in run.evaluations)
        if trained and evaluated:
            done.add(run.name)
    return done


def _plan(text: str, path: Path, config: dict, what: str) -> tuple[Experiment, ExperimentPlan]:
    """Parse and plan the text about to be written, exactly as the workflow will."""
    try:
        experiment = parse_summary(text, path)
        return experiment, plan_experiment(experiment, config, load_registry(experiment.directory))
    except SummaryError as error:
        raise DesignError(
            f"the {what} would be rejected by the workflow: {error.problem} (line {error.line} of the text to write)"
        ) from None


def _write(path: Path, text: str) -> None:
    """Atomic replace, keeping the permissions of the file it replaces (umask for a new one)."""
    if path.exists():
        mode = path.stat().st_mode & 0o777
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    write_atomic(path, text, mode=mode)


def _default_config() -> dict:
    from snaketune.workflow import workflow_config

    return workflow_config()


# ---- a new summary ------------------------------------------------------------------------


def new_summary(
    *,
    out: Path | None,
    name: str | None,
    models: list[str],
    dataset: str | None,
    tasks: list[str] = (),
    epochs: int | None,
    grid: list[str] = (),
    paired: list[str] = (),
    grid_file: Path | None = None,
    controls: bool = True,
    force: bool = False,
    config: dict | None = None,
    today: date | None = None,
) -> Outcome:
    """Write a new summary (the current generation of the format) for the design."""
    required = (("--out", out), ("--name", name), ("--model", models), ("--dataset", dataset), ("--epochs", epochs))
    missing = [option for option, value in required if value is None or (isinstance(value, str | list | tuple) and not value)]
    if missing:
        raise DesignError(f"a new design needs {', '.join(missing)} (or use --extend EXISTING.md)")
    out = Path(out).absolute()
    if out.is_dir():
        raise DesignError(f"--out {out} is a directory; give the summary file, e.g. {out / 'experiment_summary.md'}")
    if out.exists() and not force:
        raise DesignError(f"{out} exists: use --extend {out} to add runs to it, or --force to replace it")
    name = check_text(name, "--name")
    if name.startswith("#"):
        raise DesignError(f"--name {name!r}: must not start with '#'")
    model_paths = parse_assignments(models, "--model", "PATH", path_component=False)
    task_scripts = parse_assignments(list(tasks), "--task", "SCRIPT", path_component=True)
    dataset = check_text(dataset, "--dataset")
    if epochs <= 0:
        raise DesignError(f"--epochs must be positive, got {epochs}")
    design = build_grid(list(grid), list(paired), grid_file, list(model_paths), out.parent)

    combinations = design.combinations()
    columns = design.columns
    placeholders = [
        Run(_descriptive_name(combination), "fine-tuned", combination["model"], {k: combination[k] for k in columns}, 0)
        for combination in combinations
    ]
    control_models = list(model_paths) if controls else []
    placeholders += [Run(f"{short_model_name(model)}_base", "control", model, {}, 0) for model in control_models]
    skeleton = Experiment(out, name, [], columns, model_paths, dataset, [], {"epochs": str(epochs)}, {}, None)
    names = _run_names(skeleton, placeholders, set(), load_registry(out.parent))
    runs = [Run(run_name, run.type, run.model, run.params, 0) for run_name, run in zip(names, placeholders, strict=True)]

    text = render_summary(name, runs, columns, model_paths, dataset, task_scripts, epochs, design, today or date.today())
    experiment, plan = _plan(text, out, config or _default_config(), "designed summary")
    _check_reads_back(experiment, name, runs, model_paths, dataset, task_scripts, epochs)
    _write(out, text)
    fine_tuned = sum(run.type == "fine-tuned" for run in runs)
    evaluations = sum(len(run.evaluations) for run in plan.runs)
    messages = [f"wrote {out}: {fine_tuned} fine-tuned + {len(runs) - fine_tuned} control run(s), {evaluations} evaluation(s)"]
    if not task_scripts:
        messages.append("no --task: the summary plans training only")
    return Outcome(text, out, messages)


def render_summary(
    name: str,
    runs: list[Run],
    columns: list[str],
    models: dict[str, str],
    dataset: str,
    tasks: dict[str, str],
    epochs: int,
    grid: Grid,
    today: date,
) -> str:
    fine_tuned = [run for run in runs if run.type == "fine-tuned"]
    controls = [run for run in runs if run.type == "control"]
    headers = ["Run Name", "Model", *(FACTOR_HEADERS[key] for key in columns), "Type", "Est. Time"]
    lines = [
        f"# Experiment: {name}",
        "",
        "## Overview",
        "- **Type:** experiment",
        f"- **Runs:** {len(fine_tuned)} fine-tuned + {len(controls)} control = {len(runs)} total",
        f"- **Design:** {grid.describe()}",
        f"- **Created:** {today.isoformat()} by `snaketune design`",
        "",
        "## All Runs",
        table_row(headers),
        "|" + "|".join("-" * (len(header) + 2) for header in headers) + "|",
    ]
    for run in fine_tuned:
        lines.append(table_row([run.name, run.model, *(run.params[key] for key in columns), "Fine-tuned", "-"]))
    for run in controls:
        lines.append(table_row([run.name, run.model, *("-" for _ in columns), "Control", "N/A"]))
    lines += ["", "## Resources", "", "### Models"]
    lines += [f"- **{model}**: `{path}`" for model, path in models.items()]
    data_format = "JSON" if dataset.endswith((".json", ".jsonl")) else "Parquet"
    lines += ["", "### Dataset", f"- **Path:** `{dataset}`", f"- **Format:** {data_format}"]
    if tasks:
        lines += [
            "",
            "### Evaluation Tasks",
            "| Task Name | Script | Dataset | Description |",
            "|-----------|--------|---------|-------------|",
        ]
        for task, script in tasks.items():
            shown, description = (script, "built-in exact-match task") if script == BUILTIN_TASK else (f"`{script}`", "")
            lines.append(table_row([task, shown, f"{Path(dataset).name} (test)", description]))
    lines += ["", "## Evaluation Plan"]
    if tasks:
        when = "the last epoch" if "epochs" in columns else f"the last epoch (epoch {epochs - 1}, 0-indexed)"
        base = "; the controls on the base model" if controls else ""
        lines.append(f"All runs will be evaluated on {', '.join(tasks)} at {when}{base}.")
    else:
        lines.append("No evaluation tasks: the workflow trains the runs and evaluates nothing.")
    lines += [
        "",
        "## Configuration",
        "",
        "### Training",
        f"- **Epochs:** {epochs}",
        "",
        "Settings not given here or in the All Runs table come from the workflow's config/config.yaml.",
        "",
    ]
    return "\n".join(lines)


def _check_reads_back(experiment: Experiment, name: str, runs: list[Run], models: dict, dataset: str, tasks: dict, epochs: int) -> None:
    """The parser must read back exactly what was designed (a value it would reinterpret is refused)."""
    comparisons = [
        ("experiment name", experiment.name, name),
        ("runs", [(r.name, r.type, r.model, r.params) for r in experiment.runs], [(r.name, r.type, r.model, r.params) for r in runs]),
        ("models", experiment.models, models),
        ("dataset", experiment.dataset, dataset),
        ("tasks", {t.name: t.script for t in experiment.tasks}, tasks),
        ("epochs", experiment.config.get("epochs"), str(epochs)),
    ]
    for what, read, designed in comparisons:
        if read != designed:
            raise DesignError(
                f"the {what} would not read back unchanged from the summary ({designed!r} reads as {read!r}); use plainer values"
            )


# ---- extending a summary ------------------------------------------------------------------


def effective_value(experiment: Experiment, params: dict[str, str], key: str, defaults: dict) -> str:
    """A row's value of a factor as the workflow reads it: the row, the summary's
    Configuration, then config.yaml (LoRA alpha: 2 x rank)."""
    if key in params:
        return params[key]
    if key == "dataset":
        return experiment.dataset or ""
    if key in experiment.config:
        return experiment.config[key]
    if key == "lora_alpha":
        return str(2 * int(effective_value(experiment, params, "lora_rank", defaults)))
    value = defaults.get(key)
    return "" if value is None else str(value)


def _table(reader: _Reader, lines) -> tuple[list[str], list] | None:
    """(raw header cells, data lines) of the first table among ``lines``."""
    tables = reader.tables(lines or [])
    if not tables:
        return None
    header, rows = tables[0]
    return _split_row(header.text), rows


def _insert_after(text: str, line_number: int, rows: list[str]) -> str:
    """Insert lines after line ``line_number`` (1-based, counted like the parser), with that
    line's own line ending, touching no other byte."""
    ends = list(_LINE_END.finditer(text))
    if line_number <= len(ends):
        end = ends[line_number - 1]
        return text[: end.end()] + "".join(row + end.group() for row in rows) + text[end.end() :]
    newline = ends[-1].group() if ends else "\n"  # the last line has no line ending
    return text + "".join(newline + row for row in rows)


def _shared(values: list[str], fallback: str) -> str:
    """The value every existing row agrees on, else the fallback."""
    return values[0] if values and len(set(values)) == 1 else fallback


def extend_summary(
    existing: Path,
    *,
    grid: list[str] = (),
    paired: list[str] = (),
    grid_file: Path | None = None,
    models: list[str] = (),
    controls: bool = True,
    out: Path | None = None,
    config: dict | None = None,
) -> Outcome:
    """Add the grid's new combinations to ``existing``, keeping every existing byte."""
    existing = Path(existing).absolute()
    out = existing if out is None else Path(out).absolute()
    config = config or _default_config()
    try:
        original = existing.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise DesignError(f"--extend {existing}: file not found") from None
    except UnicodeDecodeError:
        raise DesignError(f"--extend {existing}: the file is not valid UTF-8") from None
    body = original.removeprefix("\ufeff")  # a BOM is kept in the bytes written, but the parser reads without it
    try:
        experiment = parse_summary(body, existing)
    except SummaryError as error:
        raise DesignError(str(error)) from None

    design_models = _extend_models(experiment, models)
    base = experiment.directory
    design = build_grid(list(grid), list(paired), grid_file, design_models, base)
    defaults = config["training"]
    combinations = design.combinations()
    new_combinations = _not_yet_run(experiment, combinations, defaults)
    # a model new to the runs gets a control only where the summary already has controls
    controlled = {run.model for run in experiment.controls}
    wants_controls = controls and bool(controlled)
    new_controls = [model for model in dict.fromkeys(c["model"] for c in combinations) if wants_controls and model not in controlled]
    already = len(combinations) - len(new_combinations)
    if not new_combinations and not new_controls:
        return Outcome(
            None, None, [f"nothing new: all {len(combinations)} combination(s) of the grid are already in {existing}; nothing written"]
        )

    reader = _Reader(existing, body)
    header_cells, table_lines = _table(reader, reader.section("all_runs"))
    headers = [COLUMN_ALIASES.get(k, k) for k in (normalise_key(_strip_decorations(h)) for h in header_cells)]
    # the parser made one run per table line, in order
    fine_tuned_rows = [
        dict(zip(headers, map(cell_value, _split_row(line.text)), strict=True))
        for line, run in zip(table_lines, experiment.runs, strict=True)
        if run.type == "fine-tuned"
    ]

    new_runs = [
        Run(_descriptive_name(c), "fine-tuned", c["model"], _row_parameters(experiment, headers, fine_tuned_rows, c, defaults), 0)
        for c in new_combinations
    ]
    new_runs += [Run(f"{short_model_name(model)}_base", "control", model, {}, 0) for model in new_controls]
    taken = {run.name for run in experiment.runs}
    names = _run_names(experiment, new_runs, set(taken), load_registry(base))
    new_runs = [Run(name, run.type, run.model, run.params, 0) for name, run in zip(names, new_runs, strict=True)]

    inserted_runs = [_all_runs_row(headers, run) for run in new_runs]
    insertions = [(table_lines[-1].number, inserted_runs)]
    plan_lines = reader.section("evaluation_plan")  # the parser reads a matrix only there
    matrix = None if plan_lines is None else _table(reader, reader.section("evaluation_matrix", level=3, within=plan_lines))
    inserted_matrix: list[str] = []
    if matrix is not None:
        inserted_matrix = _matrix_rows(experiment, matrix, new_runs)
        insertions.append((matrix[1][-1].number, inserted_matrix))
    text = original
    for line_number, rows in sorted(insertions, reverse=True):  # bottom first: earlier line numbers stay valid
        text = _insert_after(text, line_number, rows)

    extended, plan = _plan(text.removeprefix("\ufeff"), out, config, "extended summary")
    designed = [(r.name, r.type, r.model, r.params) for r in experiment.runs + new_runs]
    if [(r.name, r.type, r.model, r.params) for r in extended.runs] != designed:
        raise DesignError("the new rows would not read back unchanged from the summary; use plainer values")
    _write(out, text)

    done = completed(plan)
    new_names = {run.name for run in new_runs}
    complete = len(done - new_names)
    waiting = len(plan.runs) - complete - len(new_runs)
    still = f", {waiting} in the summary but not complete" if waiting else ""
    messages = [
        f"wrote {out}: added {len(new_runs)} run(s) ({_listing(names)}); "
        f"{already} of the grid's {len(combinations)} combination(s) were already there",
        f"{len(plan.runs)} planned: {complete} already complete{still}, {len(new_runs)} new",
    ]
    if inserted_matrix:
        messages.insert(1, f"added {len(inserted_matrix)} row(s) to the Evaluation Matrix")
    ordered = [line for _number, rows in sorted(insertions) for line in rows]
    return Outcome(text, out, messages, ordered)


def _not_yet_run(experiment: Experiment, combinations: list[dict[str, str]], defaults: dict) -> list[dict[str, str]]:
    """The combinations no fine-tuned run of the summary already has: compared on the grid's
    factors only, by the value the workflow trains each existing run with."""
    base = experiment.directory
    keys = list(combinations[0]) if combinations else []
    existing = [
        {key: run.model if key == "model" else effective_value(experiment, run.params, key, defaults) for key in keys}
        for run in experiment.fine_tuned
    ]
    return [
        combination
        for combination in combinations
        if not any(all(same_value(key, value, values[key], base) for key, value in combination.items()) for values in existing)
    ]


def _row_parameters(
    experiment: Experiment, headers: list[str], fine_tuned_rows: list[dict[str, str]], combination: dict[str, str], defaults: dict
) -> dict[str, str]:
    """The parameter cells of a new row. A column the grid leaves alone gets what every
    existing fine-tuned row agrees on (else stays empty: the common value). A factor the table
    has no column for is refused unless rows without the column already mean that value."""
    params = {}
    for column in experiment.columns:
        if column in combination:
            params[column] = combination[column]
        else:
            value = _shared([row[column] for row in fine_tuned_rows], "")
            if value and value.lower() not in NOT_APPLICABLE:
                params[column] = value
    for key, value in combination.items():
        if key == "model" or key in headers:
            continue
        implied = effective_value(experiment, params, key, defaults)
        if not same_value(key, value, implied, experiment.directory):
            header = FACTOR_HEADERS[key]
            raise DesignError(
                f"the All Runs table of {experiment.path} has no {header!r} column, and new runs need {header} = {value} "
                f"(runs without the column get {implied or 'the default'}); --extend never rewrites existing rows: "
                "add the column by hand, or leave that level out"
            )
    return params


def _listing(names: list[str], most: int = 8) -> str:
    return ", ".join(names) if len(names) <= most else ", ".join(names[:most]) + f", … ({len(names) - most} more)"


def _extend_models(experiment: Experiment, models: list[str]) -> list[str]:
    """The models the grid crosses: those named (already in the summary), else those the
    existing fine-tuned runs use."""
    if not models:
        used = [run.model for run in experiment.fine_tuned] or [run.model for run in experiment.runs]
        return list(dict.fromkeys(used))
    chosen = []
    for text in models:
        name, equals, path = text.partition("=")
        name = name.strip()
        if name not in experiment.models:
            raise DesignError(
                f"--model {text!r}: {name!r} is not under '### Models' of {experiment.path}; --extend only adds rows, so add the model there first"
            )
        if equals and path.strip() != experiment.models[name]:
            raise DesignError(f"--model {text!r}: the summary gives {name!r} the path {experiment.models[name]!r}")
        chosen.append(name)
    return list(dict.fromkeys(chosen))


def _all_runs_row(headers: list[str], run: Run) -> str:
    cells = []
    for header in headers:
        if header == "run_name":
            cells.append(run.name)
        elif header == "model":
            cells.append(run.model)
        elif header == "type":
            cells.append("Fine-tuned" if run.type == "fine-tuned" else "Control")
        elif header == "est_time":
            cells.append("-" if run.type == "fine-tuned" else "N/A")
        elif header in INFORMATIONAL_COLUMNS:
            cells.append("")
        else:
            cells.append(run.params.get(header, "" if run.type == "fine-tuned" else "-"))
    return table_row(cells)


def _matrix_rows(experiment: Experiment, matrix: tuple[list[str], list], new_runs: list[Run]) -> list[str]:
    """Evaluation Matrix rows for new runs: each cell as the existing runs of the same type
    agree, else evaluated (``✓``) for a task and empty for a notes column."""
    header_cells, lines = matrix
    types = {run.name: run.type for run in experiment.runs}
    existing = [_split_row(line.text) for line in lines]
    rows = []
    for run in new_runs:
        siblings = [cells for cells in existing if types.get(cell_value(cells[0])) == run.type]
        cells = [run.name]
        for column, header in enumerate(header_cells[1:], start=1):
            fallback = "" if normalise_key(cell_value(header)) in _NOTES_COLUMNS else "✓"
            cells.append(_shared([sibling[column] for sibling in siblings if len(sibling) == len(header_cells)], fallback))
        rows.append(table_row(cells))
    return rows
