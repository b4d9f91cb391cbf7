"""Stochastic depth (Huang et al. 2016): the linear decay rule, expectation kept at test time,
row vs batch semantics, and dropped branches skipped in batch mode."""
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

import models
from models.blocks import BasicBlock, DropPath, linear_decay
from models.ode import PreActResBlock
from odenets.stochastic_depth import TimingConfig, branch_counter, survival_probabilities, time_training_steps


@pytest.fixture(autouse=True)
def seeded():
    # Drop decisions come from the global RNG (as torchvision's StochasticDepth); keep it private.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def four_sigma(p, n):
    return 4 * math.sqrt(p * (1 - p) / n)


def test_linear_decay_rule_in_resnet110():
    model = models.build("resnet110", drop_path=0.5)
    p = survival_probabilities(model)
    L = 54  # (110 - 2) / 2 residual blocks
    assert len(p) == L
    assert p == pytest.approx([1 - l / L * (1 - 0.5) for l in range(1, L + 1)])
    assert p[-1] == 0.5 and p[0] == pytest.approx(1 - 0.5 / 54)
    assert linear_decay(4, 0.2) == pytest.approx([0.05, 0.1, 0.15, 0.2])
    assert survival_probabilities(models.build("resnet_mnist", in_channels=1, drop_path=0.3)) == \
        pytest.approx([1 - l / 6 * 0.3 for l in range(1, 7)])


@pytest.mark.parametrize("scale_at", ["test", "train"])
def test_row_mode_keeps_the_expectation(scale_at):
    drop = DropPath(0.3, "row", scale_at)
    branch = torch.full((20000, 3), 2.0)
    drop.train()
    out = drop(branch)
    kept = (out[:, 0] != 0).float()
    assert (out == out[:, :1]).all()  # one decision per sample (row), not per element
    assert abs(kept.mean().item() - 0.7) < four_sigma(0.7, 20000)
    drop.eval()
    expected = drop(branch)  # test time: 2 * 0.7 (scale at test) or 2 (scaled while training)
    assert expected[0, 0].item() == pytest.approx(1.4 if scale_at == "test" else 2.0)
    tol = 2.0 * four_sigma(0.7, 20000) * (1 if scale_at == "test" else 1 / 0.7)
    assert (out.mean(0) - expected[0]).abs().max().item() < tol


def test_batch_mode_drops_whole_batches_standalone():
    # Regression: DropPath(mode="batch") used on its own never dropped anything.
    drop = DropPath(0.4, "batch", "train").train()
    branch = torch.ones(5, 2)
    outs = torch.stack([drop(branch) for _ in range(3000)])
    per_draw = outs.flatten(1)
    assert ((per_draw == 0).all(1) | (per_draw == 1 / 0.6).all(1)).all()  # all or nothing
    dropped = (per_draw == 0).all(1).float().mean().item()
    assert abs(dropped - 0.4) < four_sigma(0.4, 3000)
    assert abs(outs.mean().item() - 1.0) < four_sigma(0.4, 3000) / 0.6  # expectation kept


@pytest.mark.parametrize("mode", ["row", "batch"])
def test_preact_block_mean_training_output_equals_eval_output(mode):
    block = PreActResBlock(4, 4, drop_prob=0.25, drop_mode=mode)  # no nonlinearity after the sum
    x = torch.randn(1, 4, 5, 5)
    draws = 4000
    block.eval()
    with torch.no_grad():
        expected = block(x)
        if mode == "row":
            out = block.train()(x.expand(draws, -1, -1, -1))
        else:
            block.train()
            out = torch.cat([block(x) for _ in range(draws)])
    branch = (expected - x) / 0.75  # eval adds p * branch to the identity
    tol = four_sigma(0.75, draws) * branch.abs().max().item()
    assert (out.mean(0, keepdim=True) - expected).abs().max().item() < tol
    kept = ~torch.isclose(out, x.expand_as(out)).flatten(1).all(1)
    assert torch.allclose(out[kept], (x + branch).expand(int(kept.sum()), -1, -1, -1), atol=1e-5)


def test_basic_block_batch_mode_skips_the_branch_and_matches_eval_scaling():
    block = BasicBlock(4, 4, drop_prob=0.5, drop_mode="batch")
    block.bn1.eval(), block.bn2.eval()  # running statistics, so train and eval branches agree
    x = torch.randn(3, 4, 6, 6)
    with torch.no_grad():
        branch = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))
        block.drop_path.eval()
        assert torch.allclose(block(x), F.relu(x + 0.5 * branch), atol=1e-6)  # Huang et al.: scale at test
        block.drop_path.train()
        computed = []
        handle = block.conv1.register_forward_hook(lambda *_: computed.append(1))
        outs = [block(x) for _ in range(2000)]
        handle.remove()
    skipped = [torch.equal(o, F.relu(x)) for o in outs]
    assert all(s or torch.allclose(o, F.relu(x + branch), atol=1e-6) for s, o in zip(skipped, outs))
    assert len(computed) == 2000 - sum(skipped)  # a dropped branch is never computed
    assert abs(sum(skipped) / 2000 - 0.5) < four_sigma(0.5, 2000)


def test_batch_mode_computes_mean_survival_of_the_branches():
    model = models.build("resnet20", drop_path=0.5, drop_mode="batch").train()
    p = survival_probabilities(model)
    count = [0]
    remove = branch_counter(model, lambda: count.__setitem__(0, count[0] + 1))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        for _ in range(300):
            model(x)
    remove()
    expected = sum(p) * 300
    sigma = math.sqrt(sum(q * (1 - q) for q in p) * 300)
    assert abs(count[0] - expected) < 4 * sigma
    row = models.build("resnet20", drop_path=0.5, drop_mode="row").train()
    count[0] = 0
    remove = branch_counter(row, lambda: count.__setitem__(0, count[0] + 1))
    with torch.no_grad():
        row(x)
    remove()
    assert count[0] == len(p)  # row mode computes every branch


def test_timing_benchmark_reports_branch_fractions():
    doc = time_training_steps(TimingConfig(model="resnet8", drop_path=0.5, steps=2, warmup=0, batch_size=4,
                                           image_size=8))
    rows = {r["variant"]: r for r in doc["rows"]}
    assert rows["constant depth"]["ratio_to_constant"] == 1.0 and rows["constant depth"]["branches_computed"] == 1
    assert rows["stochastic depth, row mode"]["branches_computed"] == 1
    assert rows["stochastic depth, batch mode"]["mean_survival"] == pytest.approx(1 - 0.5 * (1 + 2 + 3) / 3 / 3)
    with pytest.raises(ValueError, match="modes"):
        TimingConfig(modes=("rows",))


def test_bad_options_are_rejected_with_what_is_accepted():
    with pytest.raises(ValueError, match="'row'\\|'batch'"):
        DropPath(0.1, mode="rows")
    with pytest.raises(ValueError, match="\\[0, 1\\)"):
        models.build("resnet20", drop_path=1.0)
    with pytest.raises(ValueError, match="noshort"):  # a plain net has no shortcut to keep
        models.build("resnet20_noshort", drop_path=0.2)


def test_cpu_tier_times_interleaved_and_tests_the_error_over_seeds(tmp_path, monkeypatch):
    """The cpu tier: per-depth rows with the paired step-time ratio and the fraction of branches
    computed, and the error claim over seeds (difference of means with its SE), never the training
    logs' non-interleaved time ratio."""
    from studies import stochastic_depth as study
    from studies.stats import mean_diff_se

    assert study.paired_ratio([2.0, 3.0, 4.0], [2.0, 2.0, 2.0]) == pytest.approx((1.5, 0.5 / 3 ** 0.5))  # sd 0.5, n 3
    monkeypatch.setattr(study, "TIMING_DEPTHS", (8,))
    monkeypatch.setitem(study.TIMING, "steps", 2)
    monkeypatch.setitem(study.TIMING, "warmup", 0)
    monkeypatch.setitem(study.TIMING, "batch_size", 2)
    monkeypatch.setitem(study.TIMING, "image_size", 8)
    monkeypatch.setitem(study.ERROR_RUNS, "cpu", ((8, 2), (20, 1)))
    smoke_recipe = study.training_recipe
    monkeypatch.setattr(study, "training_recipe", lambda args, **kw: replace(
        smoke_recipe(replace(args, mode="smoke"), **kw), train_eval_samples=16))
    result = study.main(["--cpu", "--out", str(tmp_path), "--runs", str(tmp_path / "runs")])
    (row,) = result["timing"]
    assert result["tier"] == "cpu" and row["depth"] == 8 and row["steps"] == 2
    assert 0 <= row["branches_computed"] <= 1 and row["expected_branches_computed"] == pytest.approx(1 - study.expected_saving(8))
    assert result["seeds"] == [0, 1] and list(result["depths"]) == ["8", "20"]
    eight, twenty = result["depths"]["8"], result["depths"]["20"]
    assert eight["seeds"] == [0, 1] and [len(v) for v in eight["test_error_pct"].values()] == [2, 2]
    assert twenty["seeds"] == [0] and all(r["model"] == "resnet20" for rs in twenty["nets"].values() for r in rs)
    for rs in eight["nets"].values():
        assert [r["seed"] for r in rs] == [0, 1] and all("relative_train_time" not in r for r in rs)
        assert all(r["eval_train_error"] == r["history"][-1]["train_error_eval"] for r in rs)
    diff, se = mean_diff_se(eight["test_error_pct"]["stochastic depth"], eight["test_error_pct"]["constant depth"])
    readme = (tmp_path / "README.md").read_text()
    assert f"difference {diff:+.2f} ± {se:.2f} points" in readme and "one seed: no spread measured" in readme
    assert "## Constant vs stochastic depth, ResNet-8" in readme and "## Constant vs stochastic depth, ResNet-20" in readme
    assert "from the per-epoch logs" not in readme and "Interleaved step timing" in readme
