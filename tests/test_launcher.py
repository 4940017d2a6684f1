"""looplab's launcher (`hydra/launcher=looplab`, the default): each job's config as Hydra's
basic launcher composes it, from one composition per combination of config groups.

Both launchers run the real `looplab-train -m ...` in a subprocess, as a user types it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

# Groups (one swept), values (swept, null, a quoted string with a space), and a Hydra setting
# that changes how the override dirname is made.
SWEEP = [
    "experiment=seed",
    "update=manual,sgd",
    "model.width=0,4",
    "train.lr=0.1,0.01",
    "train.epochs=1",
    "train.batch_size=null",
    "tracking.enabled=false",
    "tracking.experiment='my sweep'",
    "hydra.job.config.override_dirname.exclude_keys=[train.epochs]",
]


def job_files(sweep_dir: Path, launcher: str) -> dict[str, dict]:
    """Every job's .hydra/ files, less what names the launcher or the sweep folder."""
    found = {}
    for path in sorted(sweep_dir.glob("*/.hydra/*.yaml")):
        text = path.read_text().replace(str(sweep_dir), "SWEEP_DIR")
        data = yaml.safe_load(text)
        if path.name == "hydra.yaml":
            hydra = data["hydra"]
            hydra.pop("launcher")
            assert hydra["runtime"]["choices"].pop("hydra/launcher") == launcher
            hydra["overrides"]["hydra"].remove(f"hydra/launcher={launcher}")
        found[str(path.relative_to(sweep_dir))] = data
    return found


# A value, then an override Hydra applies after it to the same key: every job trains 1 epoch
# (0 epochs would be refused by the sweep's check).
IN_ORDER = ["train.epochs=0,2", "++train.epochs=1", "update=manual,sgd", "tracking.enabled=false"]


def sweep_job_files(run_cli, tmp_path: Path, sweep: list[str]) -> dict[str, dict[str, dict]]:
    """The jobs' .hydra/ files of the same sweep on Hydra's basic launcher and on looplab's."""
    files = {}
    for launcher in ("basic", "looplab"):
        sweep_dir = tmp_path / launcher
        done = run_cli("-m", f"hydra/launcher={launcher}", *sweep, f"hydra.sweep.dir={sweep_dir}")
        assert done.returncode == 0, done.stderr
        files[launcher] = job_files(sweep_dir, launcher)
    return files


def test_every_job_gets_the_config_hydras_basic_launcher_composes(run_cli, tmp_path) -> None:
    """Faults: a job given another job's values or groups (a composition shared too widely),
    a value set otherwise than Hydra sets it (null, a quoted string), `hydra.overrides.task`
    or `hydra.job.override_dirname` left as the shared composition's, the override dirname's
    exclude_keys ignored."""
    files = sweep_job_files(run_cli, tmp_path, SWEEP)
    assert len(files["basic"]) == 8 * 3  # config.yaml, hydra.yaml, overrides.yaml a job
    assert files["looplab"] == files["basic"]
    dirnames = {
        files["basic"][f"{n}/.hydra/hydra.yaml"]["hydra"]["job"]["override_dirname"]
        for n in range(8)
    }
    assert len(dirnames) == 8 and not any("epochs" in name for name in dirnames)


def test_an_override_after_a_value_is_applied_after_it(run_cli, tmp_path) -> None:
    """Faults: `++key` (or `+key`, `~key`) applied before a value typed ahead of it, as part
    of a shared composition, by the launcher (the job keeps its own value) or by the sweep's
    check (it refuses the sweep over a value Hydra overrides)."""
    files = sweep_job_files(run_cli, tmp_path, IN_ORDER)
    assert files["looplab"] == files["basic"]
    epochs = {files["looplab"][f"{n}/.hydra/config.yaml"]["train"]["epochs"] for n in range(4)}
    assert epochs == {1}


def test_a_sweep_is_composed_once_per_combination_of_groups(run_cli, tmp_path) -> None:
    """Fault: every job composed from scratch (about 55 ms a job here, more than the rest of
    what Hydra spends on it), the saving `make bench`'s sweep rows measure."""
    done = run_cli(
        "-m",
        "update=manual,sgd",
        "seed=1,2,3",
        "train.epochs=1",
        "tracking.enabled=false",
        "hydra.verbose=hydra_plugins.looplab_launcher.launcher",
    )
    assert done.returncode == 0, done.stderr
    composed = [line for line in done.stderr.splitlines() if "composed the config of" in line]
    assert len(composed) == 2, composed
    assert "update=manual" in composed[0] and "update=sgd" in composed[1]
