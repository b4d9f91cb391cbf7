"""Training loop: learning, lr schedule, warm-up, seeded reproducibility, bit-exact resume,
output files and refusal to mix runs. Tiny ResNet-8 on 8x8 synthetic data, CPU."""

import csv
import json
import os
import shutil
from dataclasses import asdict, replace

import pytest
import torch

import models
import models.train as train_mod
from models.checkpoint import normalization_of
from models.data import DATASETS, DataNotFoundError
from models.locking import LockHeldError, file_lock
from models.train import LOCK_FILE, RunConflictError, TrainConfig, lr_at, main, train, warmup_enabled

# Synthetic data with the CIFAR augmentation switched on, so resume also covers the
# generator draws made by augment_batch.
AUGMENTED = replace(DATASETS["synthetic"], augment=True)


def tiny(out, **kw) -> TrainConfig:
    base = dict(model="resnet8", dataset="synthetic", data_kwargs={"image_size": 8, "size": 128},
                test_samples=32, epochs=2, batch_size=32, progress=False, out=str(out))
    return TrainConfig(**{**base, **kw})


def final_state(out) -> dict[str, torch.Tensor]:
    return models.read_checkpoint(out / "final.pt")["state_dict"]


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def no_times(history):
    return [{k: v for k, v in m.items() if k not in ("epoch_time_s", "images_per_s")} for m in history]


@pytest.fixture
def augmented(monkeypatch):
    monkeypatch.setitem(DATASETS, "synthetic", AUGMENTED)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted 2-epoch run (4 steps per epoch) that other tests compare against."""
    out = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(DATASETS, "synthetic", AUGMENTED)
        return out, train(tiny(out))


def test_learns_synthetic_data(tmp_path):
    history = train(tiny(tmp_path, epochs=3, batch_size=64, data_kwargs={"image_size": 8, "size": 512}))
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    assert history[-1]["test_error"] < 50  # chance is 90%


def test_lr_divided_by_ten_at_milestone_fractions_of_iterations(reference):
    config = tiny("unused", lr=0.2)
    assert [lr_at(config, s, 100) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx([0.2, 0.2, 0.02, 0.02, 0.002, 0.002])
    assert lr_at(config, 0, 100, warming=True) == pytest.approx(0.02)
    assert lr_at(config, 80, 100, warming=True) == pytest.approx(0.002)  # never above the schedule
    # The reference run reports the lr of each epoch's last step: step 3 and step 7 of 8.
    assert [m["lr"] for m in reference[1]] == pytest.approx([0.1, 0.001])


def test_warmup_auto_for_depth_110_and_up():
    assert warmup_enabled(TrainConfig("resnet110")) and warmup_enabled(TrainConfig("resnet1202"))
    assert warmup_enabled(TrainConfig("resnet110", noshort=True)) and warmup_enabled(TrainConfig("plain110"))
    assert not warmup_enabled(TrainConfig("resnet56")) and not warmup_enabled(TrainConfig("resnet56_noshort"))
    assert warmup_enabled(TrainConfig("resnet56", warmup=True))
    assert not warmup_enabled(TrainConfig("resnet110", warmup=False))


@pytest.mark.parametrize("noise, warm_at_end", [(1.0, False), (1e3, True)])
def test_warmup_ends_only_when_training_error_drops_below_80(tmp_path, noise, warm_at_end):
    # One epoch, so the unlearnable data (noise 1e3, error ~90%) cannot be memorized either.
    data = {"image_size": 8, "size": 512, "noise": noise}
    history = train(tiny(tmp_path, lr=0.5, batch_size=16, epochs=1, warmup=True, milestones=(), data_kwargs=data))
    warm_error = models.read_checkpoint(tmp_path / "final.pt")["extra"]["warmup_error"]
    assert (warm_error is not None) == warm_at_end
    assert history[-1]["lr"] == pytest.approx(0.05 if warm_at_end else 0.5)
    assert (history[-1]["train_error"] > 80) == warm_at_end


def test_same_seed_same_weights_other_seed_other_weights(reference, tmp_path, augmented):
    ref_out, ref_history = reference
    history = train(tiny(tmp_path / "same"))
    assert_same_state(final_state(tmp_path / "same"), final_state(ref_out))
    assert no_times(history) == no_times(ref_history)
    train(tiny(tmp_path / "other", seed=1, epochs=1))
    other = models.read_checkpoint(tmp_path / "other" / "epoch_1.pt")["state_dict"]
    first = models.read_checkpoint(ref_out / "epoch_1.pt")["state_dict"]
    assert not torch.equal(other["conv1.weight"], first["conv1.weight"])


def test_resume_after_crash_equals_uninterrupted_run(reference, tmp_path, augmented, monkeypatch):
    ref_out, ref_history = reference
    evaluate, calls = train_mod.evaluate, []

    def crash_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(train_mod, "evaluate", crash_in_second_epoch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny(tmp_path))
    assert (tmp_path / "epoch_1.pt").exists() and not (tmp_path / "final.pt").exists()
    monkeypatch.setattr(train_mod, "evaluate", evaluate)
    history = train(tiny(tmp_path))
    assert_same_state(final_state(tmp_path), final_state(ref_out))
    assert no_times(history) == no_times(ref_history)
    momentum = models.read_checkpoint(tmp_path / "final.pt")["extra"]["optimizer"]["state"]
    ref_momentum = models.read_checkpoint(ref_out / "final.pt")["extra"]["optimizer"]["state"]
    assert all(torch.equal(momentum[i]["momentum_buffer"], ref_momentum[i]["momentum_buffer"]) for i in ref_momentum)


def test_run_directory_contents(reference):
    out, history = reference
    keys = ["epoch", "lr", "train_loss", "train_error", "test_loss", "test_error", "epoch_time_s", "images_per_s"]
    assert json.loads((out / "metrics.json").read_text()) == history and list(history[0]) == keys
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [{k: float(v) for k, v in r.items()} for r in rows] == history
    ck = models.read_checkpoint(out / "epoch_2.pt")
    assert ck["meta"]["epoch"] == 2 and ck["meta"]["history"] == history and ck["meta"]["metrics"] == history[-1]
    assert ck["meta"]["config"]["model"] == "resnet8" and ck["meta"]["dataset"] == "synthetic"
    assert ck["meta"]["normalization"] == "torchvision" == normalization_of(ck["meta"])
    assert {"optimizer", "generator", "rng", "warmup_error"} <= set(ck["extra"])
    model, meta = models.load_checkpoint(out / "final.pt")
    assert model.spec.name == "resnet8" and meta["epoch"] == 2
    assert_same_state(model.state_dict(), ck["state_dict"])
    init = models.read_checkpoint(out / "epoch_0.pt")  # where the path starts: the seeded initialization
    torch.manual_seed(0)
    assert init["meta"]["epoch"] == 0 and init["meta"]["history"] == []
    assert_same_state(init["state_dict"], models.build("resnet8").state_dict())
    assert train(tiny(out)) == history  # a finished run is not trained again


def test_conflicting_run_is_refused_unless_forced(reference, tmp_path):
    out, _ = reference
    with pytest.raises(RunConflictError, match=r"lr: 0\.1 there vs 0\.05 now.*--force"):
        train(tiny(out, lr=0.05))
    with pytest.raises(RunConflictError, match="model"):
        train(tiny(out, model="resnet8_noshort"))
    with pytest.raises(RunConflictError, match="epochs: 2 there vs 1 now"):
        train(tiny(out, epochs=1))
    shutil.copytree(out, tmp_path / "copy")
    history = train(tiny(tmp_path / "copy", lr=0.05, epochs=1, force=True))
    assert len(history) == 1 and not (tmp_path / "copy" / "epoch_2.pt").exists()


def test_cli(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--model", "resnet9000", "--dataset", "synthetic", "--out", str(tmp_path / "bad")])
    assert exit_.value.code == 2 and capsys.readouterr().err.startswith("error: unknown model 'resnet9000'")
    main(["--model", "resnet8", "--dataset", "synthetic", "--data-kw", "image_size=8", "--data-kw", "size=64",
          "--test-samples", "32", "--epochs", "1", "--batch-size", "64", "--no-progress", "--out", str(tmp_path / "ok")])
    assert "test accuracy" in capsys.readouterr().out
    assert json.loads((tmp_path / "ok" / "metrics.json").read_text())[0]["epoch"] == 1


def test_train_eval_samples_measure_the_final_weights_in_eval_mode(tmp_path):
    """The tier's training error: eval mode on the first N training images, after each epoch."""
    from models.data import load_device_data
    from models.train import evaluate

    history = train(tiny(tmp_path, train_eval_samples=48))
    model, _ = models.load_checkpoint(tmp_path / "final.pt")
    first = load_device_data("synthetic", "unused", "train", 48, "cpu", image_size=8, size=128)
    loss, error = evaluate(model, first)
    assert history[-1]["train_loss_eval"] == pytest.approx(loss, rel=1e-5)
    assert history[-1]["train_error_eval"] == pytest.approx(error)
    assert "train_error_eval" not in train(tiny(tmp_path / "plain"))[-1]  # off by default


def _stamps(out):
    """(name, inode, mtime) of every run file: any rewrite or deletion changes it."""
    return sorted((p.name, p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir() if p.name != LOCK_FILE)


def test_force_checks_everything_before_deleting_and_keeps_an_identical_run(reference, tmp_path, augmented):
    """Before: --force deleted every epoch file first, so a typo left an empty directory."""
    out = tmp_path / "copy"
    shutil.copytree(reference[0], out)
    before = _stamps(out)
    assert len(before) == 6  # epoch_0..2, final, metrics.json, metrics.csv
    with pytest.raises(ValueError, match="bad options"):
        train(tiny(out, model_kwargs={"bogus": 1}, force=True))
    with pytest.raises(DataNotFoundError):
        train(tiny(out, dataset="mnist", data_kwargs={}, data_root=str(tmp_path / "nonexistent"), force=True))
    assert _stamps(out) == before
    # The same configuration with --force has nothing to overwrite: it resumes (here: is done).
    assert train(tiny(out, force=True)) == reference[1]
    assert _stamps(out) == before


def test_more_epochs_is_another_run_not_a_resume(reference, tmp_path, augmented):
    """Before: --epochs 4 on a 2-epoch run trained epochs 3-4 at 0.001, while a fresh 4-epoch
    run uses 0.1, 0.1, 0.01, 0.001, and final.pt claimed the standard schedule."""
    out = tmp_path / "copy"
    shutil.copytree(reference[0], out)
    with pytest.raises(RunConflictError, match=r"epochs: 2 there vs 4 now.*another schedule"):
        train(tiny(out, epochs=4))
    assert not (out / "epoch_3.pt").exists()
    # A checkpoint written before a field existed still matches a config using its default.
    old = {k: v for k, v in asdict(tiny(out)).items() if k != "normalization"}
    assert train_mod._identity(old) == train_mod._identity(tiny(out))


def test_two_runs_into_one_directory_never_both_run(tmp_path, monkeypatch, capsys):
    """Before: two runs into one --out both ran and mixed their files."""
    evaluate, seen = train_mod.evaluate, []

    def second_run_meanwhile(*args, **kwargs):
        if not seen:  # while the first run is in its first epoch
            with pytest.raises(LockHeldError) as err:
                train(tiny(tmp_path, lr=0.05, epochs=1))
            seen.append(str(err.value))
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(train_mod, "evaluate", second_run_meanwhile)
    history = train(tiny(tmp_path))
    assert len(history) == 2 and f"another training run is running here: {tmp_path / LOCK_FILE} is locked " \
        f"by process {os.getpid()}" in seen[0]
    assert models.read_checkpoint(tmp_path / "final.pt")["meta"]["config"]["lr"] == 0.1
    assert (tmp_path / LOCK_FILE).exists()  # kept: deleting a lock file races
    capsys.readouterr()
    with file_lock(tmp_path / LOCK_FILE), pytest.raises(SystemExit) as exit_:
        main(["--model", "resnet8", "--dataset", "synthetic", "--data-kw", "image_size=8", "--out", str(tmp_path)])
    assert exit_.value.code == 2 and capsys.readouterr().err.startswith("error: another training run is running here")


def test_normalization_is_a_checked_config_field():
    assert TrainConfig("resnet8", normalization="loss-landscape").normalization == "loss-landscape"
    with pytest.raises(ValueError, match="only for cifar10"):
        TrainConfig("resnet8", dataset="synthetic", normalization="loss-landscape")


def test_data_root_defaults_to_the_environment_variable(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RESNET_TOOLKIT_DATA", str(tmp_path / "shared"))
    assert TrainConfig("resnet8").data_root == str(tmp_path / "shared")
    with pytest.raises(SystemExit) as exit_:
        main(["--model", "resnet8", "--dataset", "mnist", "--out", str(tmp_path / "run")])
    msg = capsys.readouterr().err
    assert exit_.value.code == 2 and msg.count("\n") == 1
    assert os.path.join(str(tmp_path / "shared"), "MNIST", "raw") in msg
    assert "--data-root" in msg and "$RESNET_TOOLKIT_DATA" in msg and "--download" in msg


def test_ctrl_c_says_how_to_resume(tmp_path, monkeypatch, capsys):
    evaluate, calls = train_mod.evaluate, []

    def interrupt_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(train_mod, "evaluate", interrupt_in_second_epoch)
    argv = ["--model", "resnet8", "--dataset", "synthetic", "--data-kw", "image_size=8", "--data-kw", "size=64",
            "--test-samples", "32", "--epochs", "2", "--batch-size", "64", "--no-progress", "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 130
    err = capsys.readouterr().err.strip()
    assert err == f"interrupted: {tmp_path / 'epoch_1.pt'} (epoch 1) is kept; run the same command again to resume from there"
    monkeypatch.setattr(train_mod, "evaluate", evaluate)
    main(argv)
    assert "after 2 epochs" in capsys.readouterr().out


def test_unwritable_run_directory_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    argv = ["--model", "resnet8", "--dataset", "synthetic", "--data-kw", "image_size=8", "--data-kw", "size=32",
            "--epochs", "1", "--no-progress"]
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--out", str(tmp_path / "a_file" / "run")])
    assert exit_.value.code == 2 and capsys.readouterr().err.startswith(f"error: cannot write the run directory {tmp_path / 'a_file' / 'run'}: ")
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories")
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--out", str(tmp_path / "ro")])
    assert exit_.value.code == 2 and "Permission denied; choose a writable --out" in capsys.readouterr().err


def test_augment_is_a_checked_config_field_that_old_runs_resume_without(reference, tmp_path):
    with pytest.raises(ValueError, match="unknown augment 'rotate'"):
        tiny(tmp_path, augment="rotate")
    # A checkpoint written before the field existed has no "augment": it means the data set's recipe.
    out, _ = reference
    ck = models.read_checkpoint(out / "final.pt")
    old = {k: v for k, v in ck["meta"]["config"].items() if k != "augment"}
    assert train_mod._identity(old) == train_mod._identity(tiny(out))


def test_crop_fill_is_a_black_pixel_in_normalized_units():
    (fill,) = train_mod.crop_fill("mnist", "torchvision")
    mean, std = DATASETS["mnist"].mean[0], DATASETS["mnist"].std[0]
    assert fill == pytest.approx((0.0 - mean) / std) and fill < -0.4


def test_crop_augmentation_changes_the_run_and_is_seeded(tmp_path):
    runs = [train(tiny(tmp_path / name, augment=aug, epochs=1)) for name, aug in
            (("a", "crop"), ("b", "crop"), ("none", "none"))]
    a, b, none = (final_state(tmp_path / n) for n in ("a", "b", "none"))
    assert_same_state(a, b)
    assert any(not torch.equal(a[k], none[k]) for k in a if a[k].is_floating_point())
    assert no_times(runs[0]) == no_times(runs[1])
