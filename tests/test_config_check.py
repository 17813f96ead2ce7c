"""A misspelt config key is an error naming the key and the one meant, at every level."""

from __future__ import annotations

import copy
import subprocess

import pytest
from e2e_helpers import REPO, SNAKEMAKE, row, snakemake, write_summary

from snaketune.config_check import ConfigError, check_config, load_schema, unknown_keys


def test_the_shipped_config_has_no_unknown_key(config):
    check_config(config)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda c: c["training"].update(learnin_rate=1),
            "unknown config key 'training.learnin_rate'; did you mean 'training.learning_rate'?",
        ),
        (lambda c: c.update(output_dir_bse="/x"), "unknown config key 'output_dir_bse'; did you mean 'output_dir_base'?"),
        (
            lambda c: c["resources"]["finetune"].update(gpu=2),
            "unknown config key 'resources.finetune.gpu'; did you mean 'resources.finetune.gpus'?",
        ),
        (lambda c: c["evaluation"].update(max_token=3), "'evaluation.max_token'; did you mean 'evaluation.max_tokens'?"),
        (lambda c: c["models"][0].update(bulder="x"), "unknown config key 'models[0].bulder'; did you mean 'models[0].builder'?"),
        (lambda c: c["wandb"].update(zzz=1), "unknown config key 'wandb.zzz' (known: project, entity)"),
    ],
)
def test_unknown_keys_are_named_with_the_closest_known_one(config, edit, message):
    changed = copy.deepcopy(config)
    edit(changed)
    with pytest.raises(ConfigError) as error:
        check_config(changed)
    assert message in str(error.value)


def test_tokenizer_arguments_stay_open(config):
    """A models entry's tokenizer holds torchtune's own keyword arguments: any name is allowed."""
    changed = copy.deepcopy(config)
    changed["models"][0]["tokenizer"]["prompt_template"] = "x"
    assert unknown_keys(changed, load_schema()) == []


@pytest.mark.e2e
def test_the_workflow_refuses_a_misspelt_key_from_config_and_configfile(tmp_path, demo_assets):
    summary = write_summary(tmp_path / "exp", demo_assets, [row("only", 8, "1e-3")])
    # one --config (a second one would replace it): the key, then the experiment
    given = subprocess.run(
        [str(SNAKEMAKE), "-n", "--config", 'training={"learnin_rate": 1}', f"experiment={summary}"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert given.returncode != 0
    assert "unknown config key 'training.learnin_rate'; did you mean 'training.learning_rate'?" in given.stdout + given.stderr
    configfile = tmp_path / "cluster.yaml"
    configfile.write_text("resources:\n  finetune:\n    partiton: gpu\n")
    from_file = snakemake(summary, "-n", "--configfile", str(configfile), check=False)
    assert from_file.returncode != 0
    assert "'resources.finetune.partiton'; did you mean 'resources.finetune.partition'?" in from_file.stdout + from_file.stderr
    assert not (tmp_path / "exp" / ".snaketune").exists()  # nothing written
