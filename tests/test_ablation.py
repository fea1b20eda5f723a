"""The estimator ablation: runner on a micro budget, controlled arms, report tables/plots, exact regeneration."""
from __future__ import annotations

import dataclasses

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from rvqcodec import cli
from rvqcodec.model import Codec
from rvqcodec.training.ablation.report import format_stat, load_results, mean_std, pca_2d, render_report
from rvqcodec.training.ablation.results import read_snapshots
from rvqcodec.training.ablation.runner import prepare_run_dir
from rvqcodec.training.ablation.spec import load_spec, read_saved_spec, spec_from_dict
from rvqcodec.training.config import config_from_dict, flat_dict
from rvqcodec.training.trainer import Trainer

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPE = REPO_ROOT / "recipes" / "ablation" / "estimators.yaml"
ARMS = ["ste_detached", "rotation_live"]  # differ in estimator and residual wiring, share k-means + dead codes
STEPS = 6
# A very small codec (K = 64, 4 stages of 6 bits at 50 frames/s -> 0.3 kbps per stage), short crops, 2 eval files.
MICRO = [
    "ablation.seeds=[0]", f"ablation.arms=[{','.join(ARMS)}]", "ablation.eval_max_files=2",
    "ablation.eval_max_seconds=2", "ablation.eval_n_q=[1,2,4]",
    "model.channels=4", "model.latent_dim=32", "model.n_residual_units=1", "model.n_q=4", "model.codebook_size=64",
    "data.segment_seconds=0.5", "data.batch_size=2", "data.max_valid_files=1", "data.max_valid_seconds=2",
    "train.valid_bitrates=[1.2]", f"train.steps={STEPS}", "train.log_every=2", "optim.warmup_steps=0",
    "train.kmeans_init_seconds=16",  # k-means on 800 frames (12 per code) for 64 codes, not the default 120 s
]
PLOTS = ["utilization_by_stage.png", "training_utilization.png", "training_rel_qe.png", "training_losses.png",
         "scalability.png", *(f"codebooks_{arm}.png" for arm in ARMS)]


def micro_args(run_dir: Path, speech_root: Path, *extra: str) -> list[str]:
    return ["ablation", str(RECIPE), f"ablation.run_dir={run_dir}", f"data.root={speech_root}", *MICRO, *extra,
            "--no-progress"]


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory, speech_root) -> Path:
    run_dir = tmp_path_factory.mktemp("ablation") / "run"
    assert cli.main(micro_args(run_dir, speech_root)) == 0
    return run_dir


def section(report: str, heading: str) -> list[str]:
    """The lines of the report section whose heading starts with ``heading`` (up to the next ``## ``)."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def run_path(run_dir: Path, arm: str, seed: int = 0) -> Path:
    return run_dir / "runs" / arm / f"seed{seed}"


# ------------------------------------------------------------------------------------------ the micro ablation


def test_report_has_every_table_and_plot(micro_run):
    report = (micro_run / "report.md").read_text()
    for heading in ("## Arms", "## Reconstruction at full bitrate (n_q = 4)", "### PESQ-WB ↑", "### mel distance ↓",
                    "### utilisation (%)", "### PPL / K", "### rel. QE", "## Per-arm tables", "## Definitions"):
        assert heading in report, heading
    lines = report.splitlines()
    for arm in ARMS:
        # full-bitrate row: finite mel, MR-STFT, SI-SDR, PESQ, latent SNR, s/step; 0 diverged of 1 seed
        row = next(line for line in section(report, "## Reconstruction") if line.startswith(f"| `{arm}` |"))
        assert row.endswith("| 0 | 0/1 |")  # no skipped steps, no diverged seed
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 9
        for cell in cells[1:7]:
            float(cell)  # a number, not "—"
        # per-arm table: 4 stage rows with 6 numeric columns
        start = lines.index(next(line for line in lines if line.startswith(f"### `{arm}`: ")))
        stage_rows = [line for line in lines[start:start + 8] if line.startswith("| s") and "stage" not in line]
        assert [r.split("|")[1].strip() for r in stage_rows] == ["s1", "s2", "s3", "s4"]
        for r in stage_rows:
            values = [float(c) for c in r.strip("|").split("|")[1:]]
            assert 0 < values[0] <= 100  # utilisation (%)
            assert 0 < values[1] <= 1  # normalised perplexity
    # scalability columns: the requested n_q, with their bitrates (K = 64 -> 6 bits x 50 frames/s = 0.3 kbps)
    assert "| arm | n_q = 1 (0.3 kbps) | n_q = 2 (0.6 kbps) | n_q = 4 (1.2 kbps) |" in report
    for name in PLOTS:
        png = micro_run / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000, name
        assert f"](plots/{name})" in report
    # no absolute path besides the recorded command line
    assert str(micro_run) not in report.replace(f"ablation.run_dir={micro_run}", "")


def test_evaluation_covers_the_whole_eval_set(micro_run):
    for arm in ARMS:
        result = json.loads((run_path(micro_run, arm) / "eval.json").read_text())
        assert result["files"] == 2 and result["n_q_list"] == [1, 2, 4] and result["full_n_q"] == 4
        # every frame of the 2 files (2 s each at 50 frames/s) passed every stage
        assert result["frames"] == 200 and all(s["frames"] == 200 for s in result["stages"])
        # latent SNR is the product of the per-stage residual-energy ratios
        rel = [s["rel_qe"] for s in result["stages"]]
        assert math.isclose(result["latent_snr_db"], -10 * math.log10(math.prod(rel)), rel_tol=1e-9)
        assert all(0 < r < 1.5 for r in rel)
        # decoding more stages cannot be evaluated at more than the model has
        assert set(result["by_n_q"]) == {"1", "2", "4"}
        status = json.loads((run_path(micro_run, arm) / "status.json").read_text())
        assert status["state"] == "complete" and status["step"] == STEPS


def test_arms_differ_only_in_the_fields_they_declare(micro_run):
    saved = yaml.safe_load((micro_run / "ablation.yaml").read_text())
    declared = {a["name"]: a["set"] for a in saved["arms"]}
    configs = {arm: flat_dict(yaml.safe_load((run_path(micro_run, arm) / "config.yaml").read_text())) for arm in ARMS}
    a, b = (configs[arm] for arm in ARMS)
    assert a.keys() == b.keys()
    differing = {key for key in a if a[key] != b[key]}
    assert differing == {"train.run_dir", "model.estimator", "model.residual_grad"}
    for arm in ARMS:
        for key, value in declared[arm].items():
            assert configs[arm][key] == value, (arm, key)
        assert configs[arm]["train.seed"] == 0 and configs[arm]["model.n_q"] == 4  # overrides reach every arm


def test_runs_of_a_seed_share_initialisation_data_and_forward_pass(micro_run):
    snaps = {arm: read_snapshots(run_path(micro_run, arm)) for arm in ARMS}
    for arm in ARMS:
        assert [s["step"] for s in snaps[arm]] == [1, STEPS // 2, STEPS]
        assert tuple(snaps[arm][0]["embed"].shape) == (4, 64, 32)
        assert bool(snaps[arm][0]["initialized"].all())
    first, second = (snaps[arm] for arm in ARMS)
    # After step 1 (k-means init on the first batch + one EMA update) the codebooks are bit-identical: same
    # weights, same batch, same forward; the estimators only change gradients, which reach the codebooks later.
    assert torch.equal(first[0]["embed"], second[0]["embed"])
    assert torch.equal(first[0]["cluster_size"], second[0]["cluster_size"])
    assert not torch.equal(first[-1]["embed"], second[-1]["embed"])


def test_report_only_regenerates_identically_from_saved_runs(micro_run, tmp_path):
    copy = tmp_path / "moved"
    shutil.copytree(micro_run, copy)
    for name in PLOTS:
        (copy / "plots" / name).unlink()
    assert cli.main(["ablation", "--report-only", str(copy)]) == 0
    assert (copy / "report.md").read_bytes() == (micro_run / "report.md").read_bytes()
    for name in PLOTS:  # fixed style, no metadata: the same pixels and bytes
        assert (copy / "plots" / name).read_bytes() == (micro_run / "plots" / name).read_bytes(), name


def test_rerun_trains_nothing_and_rewrites_the_same_report(micro_run, speech_root, capsys):
    codec = run_path(micro_run, ARMS[0]) / "codec.pt"
    before = (codec.stat().st_mtime_ns, (micro_run / "report.md").read_bytes())
    assert cli.main(micro_args(micro_run, speech_root)) == 0
    assert "2 already done, 0 to train" in capsys.readouterr().err
    assert (codec.stat().st_mtime_ns, (micro_run / "report.md").read_bytes()) == before


def test_a_changed_ablation_does_not_reuse_the_run_dir(micro_run, speech_root, capsys):
    assert cli.main(micro_args(micro_run, speech_root, "optim.lr=5e-4")) == 2
    err = capsys.readouterr().err
    assert "holds a different ablation" in err and "training_overrides" in err and len(err.strip().splitlines()) == 1


def test_an_ablation_may_grow_by_arms_but_not_change_one(micro_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(micro_run, copy, ignore=shutil.ignore_patterns("*.png"))
    saved = read_saved_spec(copy)
    saved = dataclasses.replace(saved, settings=dataclasses.replace(saved.settings, run_dir=str(copy)))
    extra = dataclasses.replace(saved.arms[0], name="extra", label="one more arm")
    grown = dataclasses.replace(saved, arms=[*saved.arms, extra])
    prepare_run_dir(grown)  # finished runs stay valid: only the new arm would train
    assert [arm.name for arm in read_saved_spec(copy).arms] == [*(arm.name for arm in saved.arms), "extra"]
    changed = dataclasses.replace(grown, arms=[dataclasses.replace(grown.arms[0], label="relabelled"),
                                               *grown.arms[1:]])
    with pytest.raises(ValueError, match="holds a different ablation"):
        prepare_run_dir(changed)


def test_an_ablation_may_grow_by_selected_arms_and_seeds_but_not_drop_one(micro_run, tmp_path):
    """``ablation.arms`` / ``ablation.seeds`` that keep every saved one and add more: the finished runs stay (a
    third seed, or an arm of the file not selected before); dropping a seed or changing another setting is refused."""
    copy = tmp_path / "run"
    shutil.copytree(micro_run, copy, ignore=shutil.ignore_patterns("*.png"))
    saved = read_saved_spec(copy)
    saved = dataclasses.replace(saved, settings=dataclasses.replace(saved.settings, run_dir=str(copy)))
    extra = dataclasses.replace(saved.arms[0], name="extra", label="one more arm")
    first = [arm.name for arm in saved.selected_arms()]
    with_file_arm = dataclasses.replace(saved, arms=[*saved.arms, extra],
                                        settings=dataclasses.replace(saved.settings, arms=first))
    prepare_run_dir(with_file_arm)  # the same selection, one more arm in the file
    seeds = [*saved.settings.seeds, max(saved.settings.seeds) + 1]
    grown = dataclasses.replace(with_file_arm, settings=dataclasses.replace(
        with_file_arm.settings, arms=[*first, "extra"], seeds=seeds))
    prepare_run_dir(grown)
    assert read_saved_spec(copy).settings.seeds == seeds
    assert read_saved_spec(copy).settings.arms == [*first, "extra"]
    for shrunk in (dataclasses.replace(grown.settings, seeds=seeds[1:]),
                   dataclasses.replace(grown.settings, arms=[*first[1:], "extra"]),
                   dataclasses.replace(grown.settings, eval_max_seconds=1.0)):
        with pytest.raises(ValueError, match="holds a different ablation"):
            prepare_run_dir(dataclasses.replace(grown, settings=shrunk))


def test_diverged_and_missing_seeds_are_counted_not_averaged(micro_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(micro_run, copy, ignore=shutil.ignore_patterns("*.png"))
    diverged = run_path(copy, ARMS[1])
    (diverged / "eval.json").unlink()
    (diverged / "status.json").write_text(json.dumps({"state": "diverged", "step": 3, "skipped_steps": 10,
                                                      "message": "non-finite"}))
    shutil.rmtree(run_path(copy, ARMS[0]))
    spec, results = load_results(copy)
    assert [r.state for r in results[ARMS[0]]] == ["missing"] and [r.state for r in results[ARMS[1]]] == ["diverged"]
    text = render_report(spec, results, plots={})
    assert "- runs: 0 finished, 1 diverged, 1 not run (of 2)" in text
    arms_row = next(line for line in section(text, "## Arms") if line.startswith(f"| `{ARMS[1]}` |"))
    assert arms_row.endswith("| 0/1 | 1/1 |")
    full = next(line for line in section(text, "## Reconstruction") if line.startswith(f"| `{ARMS[1]}` |"))
    cells = [c.strip() for c in full.strip("|").split("|")]
    assert cells[1:6] == ["—"] * 5 and cells[7] == "10"


# ------------------------------------------------------------------------------------------ numbers


def test_mean_std_is_the_sample_statistic_over_finite_values():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0, 3)
    mean, std, n = mean_std([4.0, None, math.nan, math.inf])
    assert (mean, n) == (4.0, 1) and math.isnan(std)
    assert format_stat([1.0, 2.0, 3.0], ".2f", expected=3) == "2.00 ± 1.00"
    assert format_stat([0.5, None], ".1f", expected=2, scale=100) == "50.0 (n=1)"
    assert format_stat([None, math.nan], ".3f", expected=2) == "—"
    assert format_stat([-1e-5, 1e-5], ".3f", expected=2) == "0.000 ± 0.000"
    assert format_stat([2e-4], ".3g", expected=1) == "0.0002"


def test_pca_projection_keeps_planar_geometry_and_is_deterministic():
    rng = np.random.default_rng(0)
    plane = rng.normal(size=(2, 6))
    coords = rng.normal(size=(50, 2)) * [3.0, 1.0]
    points = coords @ plane + rng.normal(size=6)  # rank-2 data, shifted
    mean, basis = pca_2d(points)
    assert np.allclose(basis @ basis.T, np.eye(2), atol=1e-12)
    projected = (points - mean) @ basis.T

    def distances(x):
        return np.linalg.norm(x[:, None] - x[None], axis=-1)

    assert np.allclose(distances(projected), distances(points), atol=1e-9)
    # same answer (signs included) whatever the row order
    perm = rng.permutation(50)
    mean2, basis2 = pca_2d(points[perm])
    assert np.allclose(basis2, basis, atol=1e-12) and np.allclose(mean2, mean)
    # degenerate input: a single code dimension
    _, basis1 = pca_2d(rng.normal(size=(10, 1)))
    assert basis1.shape == (2, 1) and basis1[1, 0] == 0.0


# ------------------------------------------------------------------------------------------ user mistakes


@pytest.mark.parametrize("extra, message", [
    (["model.estimator=ste"], "is what the arms vary"),
    (["train.seed=3"], "sets train.seed per run"),
    (["ablation.arms=[nope]"], "unknown arm(s) nope"),
    (["ablation.seeds=[0,0]"], "must not repeat a seed"),
    (["ablation.colour=red"], "unknown ablation key(s) ablation.colour"),
    (["model.n_q=2"], "train.valid_bitrates has 1.2 kbps"),
    (["model.estimatorr=ste"], "unknown config key"),
])
def test_bad_overrides_fail_in_one_line_before_training(tmp_path, speech_root, capsys, extra, message):
    run_dir = tmp_path / "never"
    assert cli.main(micro_args(run_dir, speech_root, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not run_dir.exists()


def test_bad_invocations(tmp_path, capsys):
    assert cli.main(["ablation", "--report-only", str(tmp_path)]) == 2
    assert "not an ablation run folder" in capsys.readouterr().err
    assert cli.main(["ablation", str(RECIPE), "--report-only", str(tmp_path)]) == 2
    assert "takes no config file" in capsys.readouterr().err
    assert cli.main(["ablation", str(tmp_path / "missing.yaml")]) == 2
    assert "ablation file not found" in capsys.readouterr().err
    assert cli.main(["ablation"]) == 2


@pytest.mark.parametrize("arms, message", [
    ([{"name": "a", "set": {"model.estimator": "ste"}}, {"name": "a", "set": {}}], "two arms are named 'a'"),
    ([{"name": "a/b", "set": {}}], "needs a 'name'"),
    ([{"name": "a", "set": {"estimator": "ste"}}], "bad key 'estimator'"),
    ([{"name": "a", "set": {"train.run_dir": "x"}}], "which the runner sets per run"),
    ([{"name": "a", "set": {"model.estimator": "bogus"}}], "model.estimator must be one of"),
    ([{"name": "a", "sets": {}}], "unknown key(s) sets"),
])
def test_bad_ablation_files_are_rejected(arms, message):
    training = {"model": {"preset": "tiny", "n_q": 8}, "train": {"valid_bitrates": [4.0]}}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        spec_from_dict({"training": training, "arms": arms})


def test_snapshot_stops_do_not_change_training(micro_run, speech_root, tmp_path):
    """The runner stops ``fit`` at the snapshot steps; one uninterrupted ``fit`` must give the same codec."""
    spec = read_saved_spec(micro_run)
    arm = next(a for a in spec.arms if a.name == ARMS[1])
    tree = spec.run_tree(arm, 0)
    tree["train"]["run_dir"] = str(tmp_path / "straight")
    Trainer(config_from_dict(tree, spec.training_overrides), show_progress=False).fit()
    straight = Codec.load(tmp_path / "straight" / "codec.pt")
    stopped = Codec.load(run_path(micro_run, ARMS[1]) / "codec.pt")
    assert straight.model_id == stopped.model_id


def test_a_folder_without_finished_runs_takes_a_corrected_ablation(tmp_path, speech_root, capsys):
    run_dir = tmp_path / "run"
    assert cli.main(micro_args(run_dir, speech_root, f"data.root={tmp_path / 'no-such-root'}")) == 2
    assert "not found" in capsys.readouterr().err  # the first run failed on the data root, before training
    assert (run_dir / "ablation.yaml").is_file()
    fixed = load_spec(RECIPE, [f"ablation.run_dir={run_dir}", f"data.root={speech_root}", *MICRO])
    prepare_run_dir(fixed)  # nothing finished there yet: the corrected ablation replaces the saved one
    assert read_saved_spec(run_dir).identity() == fixed.identity()


# ------------------------------------------------------------------------------------------ shared warm-up


def test_a_shared_autoencoder_warm_up_is_trained_once_per_seed_and_every_arm_starts_from_it(
        tmp_path, speech_root, capsys):
    run_dir = tmp_path / "run"
    args = micro_args(run_dir, speech_root, "ablation.ae_warmup_steps=3", "train.kmeans_init_seconds=4")
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert "shared autoencoder warm-up (3 steps) for seed(s) 0" in err
    warm = Codec.load(run_dir / "warmup" / "seed0" / "codec.pt")
    assert not any(layer.codebook.is_initialized() for layer in warm.quantizer.layers)  # quantizer never ran
    assert Codec.read_checkpoint(run_dir / "warmup" / "seed0" / "codec.pt")["meta"]["lineage"]["steps"] == 3
    for arm in ARMS:  # the arms carry the warm-up's lineage: they started from its weights
        meta = Codec.read_checkpoint(run_path(run_dir, arm) / "codec.pt")["meta"]
        assert meta["lineage"]["steps"] == 3 + STEPS
        log = [json.loads(line) for line in (run_path(run_dir, arm) / "log.jsonl").read_text().splitlines()]
        assert all("valid/ae/mel" not in r for r in log)  # no warm-up of their own
    report = (run_dir / "report.md").read_text()
    assert "shared autoencoder warm-up: 3 steps per seed" in report and "minutes of training wall-clock" in report
    assert cli.main(args) == 0  # nothing left to train, the warm-up included
    assert "warm-up" not in capsys.readouterr().err


def test_gradient_and_transform_codebook_arms_start_from_the_shared_warm_up_and_learn(tmp_path, speech_root):
    """Arms that learn their codebooks by the codebook loss (``grad``, ``transform``) start from the EMA warm-up,
    are k-means-initialised like the others, and their codes then move by gradient: the saved codes differ from
    the step-1 snapshot (``grad``), the shared map leaves the identity and the snapshot holds the transformed codes
    (``transform``)."""
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["arms"] = [{"name": f"rotation_{learning}",
                       "set": {"model.estimator": "rotation", "model.codebook_learning": learning}}
                      for learning in ("grad", "transform")]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run_dir = tmp_path / "run"
    args = ["ablation", str(path), f"ablation.run_dir={run_dir}", f"data.root={speech_root}", *MICRO,
            "ablation.arms=[rotation_grad,rotation_transform]", "ablation.ae_warmup_steps=2",
            "train.kmeans_init_seconds=4", "--no-progress"]
    assert cli.main(args) == 0
    for learning in ("grad", "transform"):
        run = run_path(run_dir, f"rotation_{learning}")
        codec = Codec.load(run / "codec.pt")
        books = [layer.codebook for layer in codec.quantizer.layers]
        assert all(b.learning == learning and b.is_initialized() for b in books)
        snapshots = read_snapshots(run)
        first, last = snapshots[0], snapshots[-1]
        final = torch.stack([b.vectors().detach().float() for b in books])
        torch.testing.assert_close(last["embed"], final)
        assert (final - first["embed"]).abs().amax() > 1e-4  # the codes moved after step 1
        if learning == "transform":
            eye = torch.eye(books[0].dim)
            assert all((b.transform.detach() - eye).abs().amax() > 1e-5 for b in books)
    assert "rotation_grad" in (run_dir / "report.md").read_text()


@pytest.mark.parametrize("extra, message", [
    (["train.init_from=x.pt"], "override 'train.init_from=x.pt' sets train.init_from"),
    (["model.channels=8"], None),  # shared by every arm: fine
])
def test_shared_warm_up_refuses_what_would_not_start_from_it(tmp_path, speech_root, extra, message):
    args = [f"ablation.run_dir={tmp_path / 'r'}", f"data.root={speech_root}", *MICRO, "ablation.ae_warmup_steps=2",
            *extra]
    if message is None:
        load_spec(RECIPE, args)
    else:
        with pytest.raises(ValueError, match=message):
            load_spec(RECIPE, args)
    arms = [{"name": "a", "set": {"model.estimator": "ste"}}, {"name": "b", "set": {"model.n_q": 4}}]
    training = {"model": {"preset": "tiny", "n_q": 8}, "train": {"valid_bitrates": [0.5]}}
    with pytest.raises(ValueError, match="arm 'b' changes n_q, so it cannot start from the shared warm-up"):
        spec_from_dict({"ablation": {"ae_warmup_steps": 2}, "training": training, "arms": arms})
