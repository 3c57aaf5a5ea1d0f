"""Policies judged by task success: the demo task, ``dmc eval POLICY`` (closed-loop episodes, Wilson
interval, action error against a reference) and ``dmc check`` gating on the success rate."""

import json

import numpy as np
import pytest

from dmc.compress.pipeline import CompileOptions, compile_model
from dmc.evaluate.gate import Thresholds, check
from dmc.policies import demo_task


def test_the_scripted_expert_solves_the_demo_task():
    stats = demo_task.success_rate(demo_task.expert_policy, range(40), n_obs_steps=2, n_action_steps=1)
    assert stats["successes"] >= 38
    low, high = stats["wilson95"]
    assert low < stats["rate"] <= high
    idle = demo_task.success_rate(lambda h: h["observation.state"][-1:, :2], range(10), 2, 1)  # agent stays put
    assert idle["successes"] == 0


def test_wilson_interval():
    low, high = demo_task.wilson_interval(0, 50)
    assert low == 0 and 0.05 < high < 0.08  # the rule of three's neighbourhood
    low, high = demo_task.wilson_interval(25, 50)
    assert low == pytest.approx(1 - high) and 0.36 < low < 0.37


def _policy_eval(rate, episodes=50, seed=1000, task="reach-push"):
    k = round(rate * episodes)
    low, high = demo_task.wilson_interval(k, episodes)
    return {"format": "dmc-eval", "kind": "policy", "task": task, "episodes": episodes, "seed": seed,
            "rollout": {"successes": k, "success_rate": k / episodes, "ci_low": low, "ci_high": high}}


def _policy_bench(median_s, noise=0.02):
    return {"format": "dmc-bench", "kind": "policy", "median_s": median_s, "noise": noise}


@pytest.mark.parametrize("current, passed", [(0.80, True), (0.72, True), (0.66, False)])
def test_gate_fails_on_a_success_drop(current, passed):
    result = check({"format": "dmc-measurement", "eval": _policy_eval(0.8), "bench": _policy_bench(0.1)},
                   {"format": "dmc-measurement", "eval": _policy_eval(current), "bench": _policy_bench(0.1)},
                   Thresholds(max_success_drop=0.1))
    rows = {r["name"]: r for r in result["checks"]}
    assert set(rows) == {"success_drop", "latency_ratio"}  # no image rows for a policy
    assert result["passed"] is passed and rows["success_drop"]["status"] == ("passed" if passed else "failed")


def test_gate_on_policy_latency_floor_and_mismatched_episodes():
    base = {"format": "dmc-measurement", "eval": _policy_eval(0.8), "bench": _policy_bench(0.10)}
    slow = {"format": "dmc-measurement", "eval": _policy_eval(0.8, seed=7), "bench": _policy_bench(0.13)}
    result = check(base, slow, Thresholds(min_success_rate=0.9))
    status = {r["name"]: r["status"] for r in result["checks"]}
    assert status == {"success_drop": "passed", "min_success_rate": "failed", "latency_ratio": "failed"}
    assert any("seed differs" in n for n in result["notes"])


@pytest.fixture(scope="module")
def demo_policies(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-policy")
    fp32 = compile_model("demo-policy", root / "fp32.dmc", CompileOptions(verify_images=2))
    return {"fp32": fp32, "root": root}


def test_eval_reports_task_success_with_its_interval(demo_policies, run_cli):
    code, out, err = run_cli("eval", demo_policies["fp32"], "--episodes", "12", "--reference", demo_policies["fp32"],
                             "--json")
    assert code == 0, err
    doc = json.loads(out)
    ro = doc["rollout"]
    assert doc["kind"] == "policy" and doc["task"] == "reach-push" and doc["episodes"] == 12
    assert len(ro["per_episode"]) == 12 and ro["successes"] == sum(ro["per_episode"])
    assert ro["ci_low"] <= ro["success_rate"] <= ro["ci_high"]
    assert ro["successes"] >= 6  # the trained demo policy solves most episodes (FP32 ~0.9 over 50)
    assert doc["actions"]["rmse"] == 0 and doc["actions"]["psnr_db"] == 100  # against itself, same noise


def test_check_gates_a_policy_on_task_success(demo_policies, run_cli, tmp_path):
    """The same artifact reproduces its baseline exactly (seeded episodes); a policy that lost its
    training (same config and statistics, random weights) fails the gate on success."""
    import shutil

    from dmc.policies.layout import random_weights
    from dmc.policies.lerobot import policy_folder

    baseline = tmp_path / "baseline.json"
    fp32 = demo_policies["fp32"]
    code, _, err = run_cli("check", fp32, "--write-baseline", baseline, "--n", "8", "--repeats", "3")
    assert code == 0, err
    code, out, err = run_cli("check", fp32, "--baseline", baseline, "--max-latency-ratio", "off")
    assert code == 0, out + err
    assert "success_drop" in out and "PASSED" in out

    broken = tmp_path / "broken"
    shutil.copytree(policy_folder("demo-policy"), broken)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in random_weights(broken, seed=3).items()}, str(broken / "model.safetensors"))
    art = compile_model(str(broken), tmp_path / "broken.dmc", CompileOptions(verify_images=1))
    code, out, err = run_cli("check", art, "--baseline", baseline, "--max-latency-ratio", "off")
    assert code == 1 and "success_drop" in out and "FAILED" in out


def test_eval_refuses_a_policy_that_does_not_fit_the_task(tmp_path, run_cli):
    from tests.test_policy_transformer import write_transformer_policy

    art = compile_model(str(write_transformer_policy(tmp_path / "p")), tmp_path / "p.dmc", CompileOptions(verify_images=1))
    code, _, err = run_cli("eval", art, "--episodes", "2")
    assert code != 0 and "task reach-push observes observation.state [4]" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run_cli("eval", art, "--episodes", "2", "--task", "pusht")
    assert code != 0 and "unknown task 'pusht'" in err


def test_demo_task_is_deterministic_and_torch_free():
    import subprocess
    import sys

    a = demo_task.rollout(demo_task.expert_policy, 5, 2, 1)
    b = demo_task.rollout(demo_task.expert_policy, 5, 2, 1)
    assert a == b and np.isfinite(a["final_distance"])
    code = "import sys, dmc.policies.demo_task, dmc.evaluate.policy_eval; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
