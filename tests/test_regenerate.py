"""``results/regenerate.sh``, the one command behind the README's Results: valid bash, and every
module, config and results file it names exists (a renamed study would otherwise only show
hours into a rerun)."""

import importlib
import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "results", "regenerate.sh")


def _script() -> str:
    with open(SCRIPT) as handle:
        return handle.read()


def test_script_is_valid_bash_and_needs_a_runs_folder():
    subprocess.run(["bash", "-n", SCRIPT], check=True)
    usage = subprocess.run(["bash", SCRIPT], capture_output=True, text=True, cwd=ROOT)
    assert usage.returncode != 0 and "usage: bash results/regenerate.sh RUNS" in usage.stderr


def test_every_named_module_config_and_readme_command_exists():
    text = _script()
    modules = re.findall(r"python -m ([\w.]+)", text)
    assert "mal_jax.studies.converge" in modules and "mal_jax.studies.ablation" in modules
    for module in modules:
        importlib.import_module(module)
    for config in re.findall(r"--config=(configs/\w+\.py)", text):
        assert os.path.exists(os.path.join(ROOT, config)), config
    # Every results file the script writes is one the README's Results section names.
    with open(os.path.join(ROOT, "README.md")) as handle:
        readme = handle.read()
    for written in set(re.findall(r"results/[\w/]+\.(?:json|png)", text)):
        assert written in readme or os.path.basename(written) in readme, written
