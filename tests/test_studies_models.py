"""Studies 1-4 and 10 (degradation, layer responses, vanishing gradients, shortcut options,
stochastic depth): their --smoke runs end to end, and the measurements they rest on."""
import json
import math

import numpy as np
import pytest
import torch

import models
from studies import degradation, layer_responses, shortcut_options, stochastic_depth, vanishing_gradients



@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One run cache for the module, so studies reuse each other's smoke nets as they do for real."""
    return tmp_path_factory.mktemp("runs")


def smoke(study, tmp_path, runs):
    out = tmp_path / study.NAME
    result = study.main(["--smoke", "--out", str(out), "--runs", str(runs)])
    assert (out / "README.md").is_file() and (out / "results.json").is_file()
    assert json.loads((out / "results.json").read_text())["study"] == study.NAME
    for line in (out / "README.md").read_text().splitlines():
        if line.startswith("!["):
            assert (out / line[line.index("(") + 1:-1]).stat().st_size > 10_000  # a real PNG
    return result


def check_run(net, epochs):
    assert len(net["history"]) == epochs
    for h in net["history"]:
        assert 0 <= h["train_error"] <= 100 and 0 <= h["test_error"] <= 100
        assert math.isfinite(h["train_loss"]) and math.isfinite(h["test_loss"])
    name = net["model"]
    assert net["params"] == models.count_params(models.build(name, **net.get("model_kwargs", {})))


def test_degradation_smoke(tmp_path, runs):
    result = smoke(degradation, tmp_path, runs)
    labels = [n["label"] for n in result["nets"]]
    assert labels == ["ResNet-8", "ResNet-20", "plain-8", "plain-20"]  # one seed in smoke
    assert result["tier"] == "smoke" and result["seeds"] == [0]
    assert set(result["final_train_error_pct"]) == {"plain8", "plain20", "resnet8", "resnet20"}
    assert result["final_train_error_pct"]["plain20"] == [result["nets"][3]["final_train_error"]]
    assert result["test_samples"] == result["train_samples"] == 96  # synthetic size 96
    for net in result["nets"]:
        check_run(net, result["epochs"])
        assert net["model"].endswith("_noshort") != net["residual"]
    # A plain twin has exactly the parameters of its ResNet (option A adds none).
    params = {n["label"]: n["params"] for n in result["nets"]}
    assert params["plain-20"] == params["ResNet-20"] == 269_722
    assert set(result["verdict"]) >= {"plain_deeper_is_worse", "residual_deeper_not_worse"}


def test_layer_responses_smoke(tmp_path, runs):
    result = smoke(layer_responses, tmp_path, runs)
    for net in result["nets"]:
        assert len(net["std"]) == net["depth"] - 1  # every 3x3 conv: stem + 2 per block
        assert all(math.isfinite(s) and s > 0 for s in net["std"])


def test_response_std_matches_direct_computation():
    from models.data import DeviceData
    model = models.build("resnet8_noshort", in_channels=1).eval()
    for m in model.modules():  # non-trivial BN so that the std is not ~1 by construction
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0), m.weight.data.uniform_(0.5, 2.0), m.bias.data.uniform_(-1, 1)
    g = torch.Generator().manual_seed(0)
    data = DeviceData(torch.randn(10, 1, 8, 8, generator=g), torch.zeros(10, dtype=torch.long))
    layers = layer_responses.conv3x3_responses(model)
    assert layers == ["bn1", "layer1.0.bn1", "layer1.0.bn2", "layer2.0.bn1", "layer2.0.bn2",
                      "layer3.0.bn1", "layer3.0.bn2"]
    stds = layer_responses.response_std(model, data, layers, batch_size=3)  # uneven batches
    with torch.no_grad():
        stem = model.bn1(model.conv1(data.x))
        block = model.layer1[0].bn1(model.layer1[0].conv1(torch.relu(stem)))
    assert stds["bn1"] == pytest.approx(stem.double().std(unbiased=False).item(), rel=1e-6)
    assert stds["layer1.0.bn1"] == pytest.approx(block.double().std(unbiased=False).item(), rel=1e-6)


def test_vanishing_gradients_smoke(tmp_path, runs):
    result = smoke(vanishing_gradients, tmp_path, runs)
    # the keys every results.json carries (claim_out reads "tier" to protect another tier's folder)
    assert result["tier"] == "smoke" and result["seeds"] == [0] and result["train_samples"] is None
    L = result["settings"]["chain_depth"]
    for key, r in result["chain"].items():
        a = r["a"]
        if r["variant"] == "plain":  # Y = a^L X, forward and backward
            assert r["output_over_input"] == pytest.approx(a ** L, rel=1e-12)
            assert r["backward_gain"] == pytest.approx(a ** L, rel=1e-12)
        elif r["variant"] == "residual":
            assert r["output_over_input"] == pytest.approx((1 + a) ** L, rel=1e-12)
        elif r["variant"] == "plain+BN":
            assert r["forward_std"] == pytest.approx([1.0] * (L + 1), rel=1e-9)
        else:  # skip + BN: std grows by exactly 1 per layer
            assert r["forward_std"] == pytest.approx([1.0 + l for l in range(L + 1)], rel=1e-9)
    assert result["chain"]["plain a=0.5"]["output_over_input"] == pytest.approx(8.88e-16, rel=1e-3)
    assert result["chain"]["plain a=1.5"]["output_over_input"] == pytest.approx(6.38e8, rel=1e-3)
    for r in [*result["mlp"].values(), *result["cnn"].values()]:
        assert all(math.isfinite(g) and g > 0 for g in r["grad_norms"])
    assert len(result["cnn"]["resnet20"]["grad_norms"]) == 19


def test_layer_grad_norm_matches_finite_difference():
    """The norm is of the right gradient: the loss slope along the gradient equals its norm."""
    torch.manual_seed(0)
    net = vanishing_gradients.Stack(12, 8, 4, 3, "sigmoid", residual=True, bn=True).double()
    x, y = torch.randn(16, 12, dtype=torch.float64), torch.randint(3, (16,))
    norm = vanishing_gradients.layer_grad_norms(net, x, y, ["hidden.1.weight"])[0]
    w = net.hidden[1].weight
    direction = w.grad / w.grad.norm()
    eps, base = 1e-5, w.detach().clone()
    losses = []
    for sign in (1, -1):
        with torch.no_grad():
            w.copy_(base + sign * eps * direction)
            losses.append(torch.nn.functional.cross_entropy(net(x), y).item())
    assert (losses[0] - losses[1]) / (2 * eps) == pytest.approx(norm, rel=1e-6)


def test_shortcut_options_smoke(tmp_path, runs):
    result = smoke(shortcut_options, tmp_path, runs)
    for net in result["nets"]:
        check_run(net, result["epochs"])
    p = {o: s["params"] for o, s in result["summary"].items()}
    assert p["plain"] == p["A"] < p["B"] < p["C"]
    macs = result["macs_per_image"]  # zero-padding is free, projections are not
    assert macs["plain"] == macs["A"] < macs["B"] < macs["C"]
    big = result["imagenet_resnet34_params"]
    assert big["B"] == 21_797_672  # torchvision's resnet34 (option B)
    assert big["plain"] == big["A"] < big["B"] < big["C"]


def test_stochastic_depth_smoke(tmp_path, runs):
    result = smoke(stochastic_depth, tmp_path, runs)
    (depth,) = result["depths"].values()
    (const,), (sd,) = depth["nets"]["constant depth"], depth["nets"]["stochastic depth"]
    assert depth["test_error_pct"] == {"constant depth": [const["final_test_error"]],
                                       "stochastic depth": [sd["final_test_error"]]}
    for net in (const, sd):
        check_run(net, result["epochs"])
    assert sd["model_kwargs"] == {"drop_path": 0.5, "drop_mode": "batch"}
    assert const["params"] == sd["params"]  # dropping blocks adds no parameters
    assert const["relative_train_time"] == 1.0 and sd["relative_train_time"] > 0
    assert all(0 <= net["eval_train_error"] <= 100 for net in (const, sd))


def test_expected_saving_is_huang_et_al_25_percent():
    # Linear decay to p_L = 0.5 over L = 54 blocks: mean drop = 0.5 (L + 1) / (2 L).
    assert stochastic_depth.expected_saving(110) == pytest.approx(0.5 * 55 / 108)
    assert stochastic_depth.expected_saving(1202) == pytest.approx(0.25, abs=1e-3)


def test_train_cached_reuses_a_finished_run_and_keys_what_matters(tmp_path):
    from dataclasses import replace

    from models.train import TrainConfig
    from studies.cache import run_key, train_cached

    config = TrainConfig(model="resnet8", dataset="synthetic", data_kwargs={"image_size": 8, "size": 32},
                         epochs=1, batch_size=16, device="cpu", progress=False)
    history, run = train_cached(config, tmp_path)
    stamp = (run / "final.pt").stat().st_mtime_ns
    again, run2 = train_cached(replace(config, progress=True, data_root="elsewhere"), tmp_path)
    assert run2 == run and again == history and (run / "final.pt").stat().st_mtime_ns == stamp
    assert run_key(replace(config, epochs=2)) != run_key(config)  # the lr schedule depends on it
    assert run_key(replace(config, lr=0.05)) != run_key(config)
    assert run_key(replace(config, noshort=True)).startswith("resnet8_noshort_synthetic_")


def test_full_modes_use_the_papers_settings():
    """Full mode is the same code with the papers' recipes (it cannot run here: no CIFAR-10, no GPU)."""
    from studies.common import parse_args
    from studies.recipes import training_recipe

    args = parse_args("degradation", "", ["--device", "cpu"])
    he = training_recipe(args)  # He et al. 2016: 64k iterations of batch 128 = 164 epochs
    assert (he.dataset, he.epochs, he.batch_size, he.lr, he.momentum, he.weight_decay, he.milestones) == \
        ("cifar10", 164, 128, 0.1, 0.9, 1e-4, (0.5, 0.75))
    ((depth, _),) = stochastic_depth.ERROR_RUNS["full"]
    sd = training_recipe(args, model=f"resnet{depth}", **stochastic_depth.OVERRIDES["full"])
    assert (sd.model, sd.epochs) == ("resnet110", 500)  # Huang et al.: lr /10 at epochs 250 and 375
    assert stochastic_depth.VARIANTS["stochastic depth"] == {"drop_path": 0.5, "drop_mode": "batch"}
    assert degradation.DEPTHS["full"] == (20, 32, 44, 56) and shortcut_options.DEPTH["full"] == 32
    assert (110, True) in layer_responses.NETS["full"]


def test_other_tiers_never_overwrite_the_committed_results(tmp_path):
    """A --quick or --smoke try writes under runs/ by default, and refuses a folder holding the
    committed (cpu) tier's results.json unless --overwrite is given."""
    from studies.common import REPO, claim_out, default_out, parse_args, TierConflictError

    assert default_out("degradation", "cpu") == REPO / "results" / "degradation"
    assert default_out("degradation", "quick") == REPO / "runs" / "quick" / "degradation"
    (tmp_path / "results.json").write_text(json.dumps({"tier": "cpu"}))
    with pytest.raises(TierConflictError, match="--overwrite"):
        claim_out(tmp_path, "quick", overwrite=False)
    claim_out(tmp_path, "cpu", overwrite=False)  # the same tier refreshes its own results
    claim_out(tmp_path, "quick", overwrite=True)
    with pytest.raises(SystemExit) as exit_:
        parse_args("degradation", "", ["--smoke", "--out", str(tmp_path)])
    assert exit_.value.code == 2


def test_run_key_ignores_fields_left_at_their_defaults():
    """A field added to TrainConfig later (default = old behaviour) keeps every cached net's key."""
    from dataclasses import field as dc_field, make_dataclass

    from models.train import TrainConfig
    from studies.cache import run_key

    config = TrainConfig(model="resnet8", dataset="synthetic", epochs=1)
    Grown = make_dataclass("Grown", [("new_option", int, dc_field(default=0))], bases=(TrainConfig,), frozen=True)
    assert run_key(Grown(model="resnet8", dataset="synthetic", epochs=1)) == run_key(config)
    assert run_key(Grown(model="resnet8", dataset="synthetic", epochs=1, new_option=1)) != run_key(config)


def test_published_nets_are_restored_instead_of_retrained(tmp_path, monkeypatch):
    """A committed results/<study>/nets/<run_key>.pt makes a fresh clone's run cache complete: same
    weights and history, no optimizer state in the committed file."""
    from models.train import TrainConfig
    from studies import cache

    config = TrainConfig(model="resnet8", dataset="synthetic", data_kwargs={"image_size": 8, "size": 32},
                         epochs=1, batch_size=16, device="cpu", progress=False)
    history, run = cache.train_cached(config, tmp_path / "runs")
    repo = tmp_path / "repo"
    monkeypatch.setattr(cache, "REPO", repo)
    record = cache.trained_record(config, tmp_path / "runs", label="ResNet-8")
    cache.publish_records([record], repo / "results" / "some_study", "One epoch on synthetic images.")
    published = repo / "results" / "some_study" / "nets" / f"{run.name}.pt"
    assert record["published"].endswith(f"results/some_study/nets/{run.name}.pt")
    listing = (published.parent / "README.md").read_text()
    assert f"| `{run.name}.pt` | ResNet-8 | 0 | {record['history'][-1]['train_error']:.2f} |" in listing
    assert published.name == f"{run.name}.pt" and models.read_checkpoint(published)["extra"] == {}
    monkeypatch.setattr(cache, "train", lambda *_: pytest.fail("retrained a published net"))
    again, run2 = cache.train_cached(config, tmp_path / "fresh_runs")
    assert again == history
    for a, b in zip(models.read_checkpoint(run / "final.pt")["state_dict"].values(),
                    models.read_checkpoint(run2 / "final.pt")["state_dict"].values()):
        assert torch.equal(a, b)


def test_quick_readmes_say_they_do_not_test_the_claim(tmp_path):
    """A quick-tier README opens with the caveat; the committed cpu tier's does not carry it."""
    from studies.common import StudyArgs
    from studies.report import QUICK_CAVEAT, write_readme

    for mode, expected in (("quick", True), ("cpu", False)):
        out = tmp_path / mode
        out.mkdir()
        write_readme(StudyArgs("x", mode, out, "data", "cpu", 0, {}), "T", "C", {}, [], "seen")
        assert ((out / "README.md").read_text().split("\n")[2] == QUICK_CAVEAT) is expected


def test_every_study_defines_every_tier():
    """`--cpu` (and every other tier flag) is offered by every study, so each per-tier table of
    every study module must name every tier; a missing one was a KeyError after the flag parsed."""
    import importlib
    import pkgutil

    import studies
    from studies.common import TIERS

    not_cpu: set[tuple[str, str]] = set()
    tables = 0
    for info in pkgutil.iter_modules(studies.__path__):
        module = importlib.import_module(f"studies.{info.name}")
        for name, value in vars(module).items():
            if isinstance(value, dict) and {"quick", "smoke"} <= set(value):
                tables += 1
                need = set(TIERS) - {"cpu"} if (info.name, name) in not_cpu else set(TIERS)
                assert need <= set(value), f"studies.{info.name}.{name} lacks {need - set(value)}"
    assert tables >= 15  # the tables of all studies and recipes were found


def test_last_epoch_loss_change_prefers_the_eval_mode_loss():
    from studies.stats import last_epoch_loss_change

    h = [{"train_loss": 1.0, "train_loss_eval": 0.04}, {"train_loss": 0.5, "train_loss_eval": 0.03}]
    assert last_epoch_loss_change({"history": h}) == pytest.approx(-25.0)
    assert last_epoch_loss_change({"history": [{k: v for k, v in e.items() if k == "train_loss"} for e in h]}) \
        == pytest.approx(-50.0)
    assert math.isnan(last_epoch_loss_change({"history": h[:1]}))


def test_a_surface_of_a_trained_net_resumes_on_its_published_copy(tmp_path, monkeypatch):
    """A committed surface scanned at a freshly trained net must be found again by a fresh clone,
    which has only the published copy of the net (same weights, another file: no resume state, another
    archive name): rescanning it computes nothing."""
    from models.train import TrainConfig
    from studies import cache, scans
    from studies.common import StudyArgs

    config = TrainConfig(model="resnet8", dataset="synthetic", data_kwargs={"image_size": 8, "size": 32},
                         epochs=1, batch_size=16, device="cpu", progress=False)
    repo = tmp_path / "repo"
    monkeypatch.setattr(cache, "REPO", repo)
    surface = tmp_path / "surface.h5"

    def rescan(runs):
        record = cache.trained_record(config, runs, label="ResNet-8")
        args = StudyArgs("x", "smoke", tmp_path, "data", "cpu", 0, {}, runs)
        return record, scans.scan_run(args, cache.run_path(record), surface, x="-1:1:3", y="-1:1:3")

    record, first = rescan(tmp_path / "runs")
    cache.publish_records([record], repo / "results" / "some_study", "One epoch on synthetic images.")
    forced = []
    real_scan = scans.scan
    monkeypatch.setattr(scans, "scan", lambda c: forced.append(c.force) or real_scan(c))
    _, again = rescan(tmp_path / "fresh_runs")
    assert forced == [False]  # resumed, not recomputed
    assert np.array_equal(again.surface.values["train_loss"], first.surface.values["train_loss"])


def test_layer_responses_claims_the_deeper_resnet_smaller_only_beyond_the_seed_spread():
    """The cpu run's ResNet-56 (0.9527, 0.9462) vs ResNet-20 (0.9514, 0.9499): a mean 0.002 lower
    with a seed sd of 0.005 is not "smaller in deeper ResNets"."""
    def rec(depth, residual, seed, mean_std):
        return {"depth": depth, "residual": residual, "seed": seed, "mean_std": mean_std,
                "layers": ["layer1.0.bn1", "layer1.0.bn2"], "std": [mean_std, mean_std]}

    values = {(20, False): (0.9831, 0.9711), (56, False): (1.011, 0.999),
              (20, True): (0.9514, 0.9499), (56, True): (0.9527, 0.9462)}
    records = [rec(d, r, s, v[s]) for (d, r), v in values.items() for s in (0, 1)]
    v = layer_responses.verdict(records)
    assert v["residual_smaller_beyond_seed_spread"] and not v["deeper_resnet_smaller_beyond_seed_spread"]
    text = layer_responses.describe(v)
    assert "Deeper ResNet has smaller responses: yes" not in text
    assert "within the seed spread" in text
    wide = {**values, (56, True): (0.90, 0.901)}
    v = layer_responses.verdict([rec(d, r, s, x[s]) for (d, r), x in wide.items() for s in (0, 1)])
    assert v["deeper_resnet_smaller_beyond_seed_spread"]
    assert "Deeper ResNet has smaller responses: yes, beyond the seed spread" in layer_responses.describe(v)


def test_shortcut_prose_ranks_options_only_beyond_the_seed_spread():
    """Five seeds whose A/B/C means differ by less than their spread: the README states the
    means' ranking as not claimed, and gives each option's gain over plain with the SE of the
    difference of means (Welch), which is what a reviewer compares."""
    from studies.stats import mean_diff_se

    def records(option, errors):
        return [{"option": option, "params": 1, "final_test_error": e, "train_images_per_s": 1.0,
                 "history": [{"train_error": 0.1}]} for e in errors]

    runs = {"plain": [1.0, 1.1, 0.9, 1.2, 1.0], "A": [0.80, 0.90, 0.85, 0.95, 0.75],
            "B": [0.82, 0.88, 0.80, 0.90, 0.85], "C": [0.70, 0.95, 0.85, 0.80, 0.90]}
    summary = shortcut_options.summarize([r for o, e in runs.items() for r in records(o, e)])
    text = shortcut_options.describe(summary)
    diff, se = mean_diff_se(runs["plain"], runs["A"])
    assert diff == pytest.approx(0.19) and se == pytest.approx(
        math.sqrt(np.var(runs["plain"], ddof=1) / 5 + np.var(runs["A"], ddof=1) / 5))
    assert f"A {-diff:+.2f} ± {se:.2f}" in text
    assert "none (no order among the options is claimed)" in text
    assert "within the seed spread, not claimed" in text and "best first" not in text
    # Clearly separated options are claimed, and their ranking is then stated as measured.
    runs.update(A=[2.0, 2.1, 2.05, 2.0, 2.1], B=[1.5, 1.55, 1.6, 1.5, 1.52], C=[0.5, 0.52, 0.55, 0.5, 0.51])
    text = shortcut_options.describe(shortcut_options.summarize([r for o, e in runs.items() for r in records(o, e)]))
    assert all(p in text for p in ("B < A", "C < A", "C < B")) and "C < B < A (the paper: C < B < A)" in text
    assert "within the seed spread" not in text
