"""Train dmc's built-in demo diffusion policy on the reach-and-push task (``dmc.policies.demo_task``).

    python scripts/train_demo_policy.py --episodes 400 --minutes 12 --threads 1
    python scripts/train_demo_policy.py --net transformer --out /tmp/demo_policy_dpt --minutes 12 --threads 1

Demonstrations come from the task's scripted expert (some episodes executed with noise while the
expert's clean actions are kept as labels, so the policy sees, and learns to leave, off-path
states). The denoiser is dmc's own ``ConditionalUnet1d`` (``--net unet``, the default) or Diffusion
Policy's transformer ``TransformerForDiffusion`` (``--net transformer``, DP-T, saved under
``diffusion.transformer.`` with ``noise_net="transformer"``), built from the config dmc reads and
trained with LeRobot's recipe (epsilon
prediction under the DDPM forward process, MIN_MAX normalisation to [-1, 1], observation and
action windows as LeRobot's ``delta_timestamps`` build them), and saved in LeRobot's layout by
``dmc.policies.layout.write_policy``. The saved folder is then read back through dmc's loader and
run in closed loop (DDIM, as LeRobot samples) on held-out seeds. Never run by CI.
"""

from __future__ import annotations

import argparse
import copy
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dmc.policies import demo_task
from dmc.policies.layout import write_policy
from dmc.policies.lerobot import NOISE_NETS, read_policy, read_policy_config
from dmc.policies.model import NETWORKS, build_network, load_denoiser

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "dmc" / "policies" / "weights" / "demo_policy"
INPUTS = {demo_task.STATE_KEY: ("STATE", (demo_task.STATE_DIM,))}
UNET_CONFIG = {"down_dims": [32, 64, 128], "kernel_size": 5, "n_groups": 8, "diffusion_step_embed_dim": 64,
               "use_film_scale_modulation": True}
CONFIG = {"n_obs_steps": 2, "horizon": 16, "n_action_steps": 8, "noise_scheduler_type": "DDIM",
          "num_train_timesteps": 100, "num_inference_steps": 10,
          "beta_schedule": "squaredcos_cap_v2", "beta_start": 0.0001, "beta_end": 0.02,
          "prediction_type": "epsilon", "clip_sample": True, "clip_sample_range": 1.0}
EVAL_SEEDS = range(1000, 1050)  # held out: demonstrations use seeds 0..episodes-1
# per net: (lr, weight decay, batch); DP-T as Diffusion Policy trains it (lower lr, weight decay 1e-3),
# its batch halved so a 12-minute single-thread run still makes a few thousand steps
TRAINING = {"unet": (1e-3, 1e-6, 256), "transformer": (3e-4, 1e-3, 128)}


def demonstrations(episodes: int, noisy_fraction: float, noise: float, seed: int):
    """Per episode: (states [T, 4], expert actions [T, 2]). A noisy episode executes the expert's
    action plus Gaussian noise but records the clean action (DART)."""
    rng = np.random.default_rng(seed)
    out = []
    for episode in range(episodes):
        task = demo_task.ReachPushTask()
        obs = task.reset(episode)
        noisy = episode < noisy_fraction * episodes
        states, actions, done = [], [], False
        while not done:
            action = demo_task.expert_action(obs)
            states.append(obs)
            actions.append(action)
            executed = action + rng.normal(0, noise, 2) if noisy else action
            obs, _, done, _ = task.step(executed)
        out.append((np.stack(states), np.stack(actions)))
    return out


def windows(episodes, n_obs_steps: int, horizon: int):
    """LeRobot's training samples: for each step t, observations t-n_obs+1..t and actions
    t-n_obs+1..t-n_obs+horizon, indices outside the episode clamped to its first / last frame."""
    obs, act = [], []
    for states, actions in episodes:
        n = len(states)
        for t in range(n):
            obs.append(states[np.clip(np.arange(t - n_obs_steps + 1, t + 1), 0, n - 1)])
            act.append(actions[np.clip(np.arange(t - n_obs_steps + 1, t - n_obs_steps + 1 + horizon), 0, n - 1)])
    return np.stack(obs).astype(np.float32), np.stack(act).astype(np.float32)


def min_max(x: np.ndarray, stat: dict) -> np.ndarray:
    return 2 * (x - stat["min"]) / (stat["max"] - stat["min"]) - 1


def make_scheduler(config: dict, kind: str):
    import diffusers

    return getattr(diffusers, f"{kind}Scheduler")(
        num_train_timesteps=config["num_train_timesteps"], beta_start=config["beta_start"],
        beta_end=config["beta_end"], beta_schedule=config["beta_schedule"], clip_sample=config["clip_sample"],
        clip_sample_range=config["clip_sample_range"], prediction_type=config["prediction_type"])


def torch_policy(denoiser, stats: dict, config: dict, seed: int):
    """``act(history) -> [n_action_steps, 2]`` as LeRobot's ``predict_action_chunk`` does it:
    normalise, flatten the history into the condition, DDIM-sample the horizon, unnormalise, keep
    the actions from the current step on."""
    scheduler = make_scheduler(config, config["noise_scheduler_type"])
    generator = torch.Generator().manual_seed(seed)
    n_obs, horizon, n_act = config["n_obs_steps"], config["horizon"], config["n_action_steps"]
    state_stat, action_stat = stats[demo_task.STATE_KEY], stats["action"]

    @torch.no_grad()
    def act(history: dict) -> np.ndarray:
        cond = torch.from_numpy(min_max(history[demo_task.STATE_KEY], state_stat).astype(np.float32)).reshape(1, -1)
        x = torch.randn(1, horizon, demo_task.ACTION_DIM, generator=generator)
        scheduler.set_timesteps(config["num_inference_steps"])
        for t in scheduler.timesteps:
            eps = denoiser(x, torch.full((1,), int(t), dtype=torch.long), cond)
            x = scheduler.step(eps, t, x, generator=generator).prev_sample
        actions = (x[0].numpy() + 1) / 2 * (action_stat["max"] - action_stat["min"]) + action_stat["min"]
        return actions[n_obs - 1:n_obs - 1 + n_act]

    return act


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--episodes", type=int, default=400)
    ap.add_argument("--noisy-fraction", type=float, default=0.5, help="episodes executed with action noise")
    ap.add_argument("--noise", type=float, default=0.006, help="std of that noise (the agent steps at most 0.02)")
    ap.add_argument("--minutes", type=float, default=12.0, help="training time budget")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--net", choices=("unet", "transformer"), default="unet", help="the noise network")
    ap.add_argument("--n-layer", type=int, default=4, help="transformer: decoder layers")
    ap.add_argument("--n-head", type=int, default=4, help="transformer: attention heads")
    ap.add_argument("--n-emb", type=int, default=128, help="transformer: embedding width")
    ap.add_argument("--no-causal-attn", action="store_true", help="transformer: full (not causal) attention")
    ap.add_argument("--batch", type=int, default=None, help="default: 256 (unet), 128 (transformer)")
    ap.add_argument("--lr", type=float, default=None, help="default: 1e-3 (unet), 3e-4 (transformer)")
    ap.add_argument("--weight-decay", type=float, default=None, help="default: 1e-6 (unet), 1e-3 (transformer)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="lr warm-up steps; default: 200 (unet), 500 (transformer)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    lr, weight_decay, batch = TRAINING[args.net]
    lr = args.lr if args.lr is not None else lr
    weight_decay = args.weight_decay if args.weight_decay is not None else weight_decay
    batch = args.batch or batch
    warmup = args.warmup if args.warmup is not None else (200 if args.net == "unet" else 500)
    config = {**CONFIG, **(UNET_CONFIG if args.net == "unet" else {
        "noise_net": "transformer", "n_layer": args.n_layer, "n_head": args.n_head, "n_emb": args.n_emb,
        "causal_attn": not args.no_causal_attn, "p_drop_emb": 0.0, "p_drop_attn": 0.0})}
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    episodes = demonstrations(args.episodes, args.noisy_fraction, args.noise, args.seed)
    obs, act = windows(episodes, config["n_obs_steps"], config["horizon"])
    states = np.concatenate([s for s, _ in episodes])
    actions = np.concatenate([a for _, a in episodes])
    stats = {demo_task.STATE_KEY: {"min": states.min(0), "max": states.max(0)},
             "action": {"min": actions.min(0), "max": actions.max(0)}}
    print(f"{len(episodes)} demonstrations, {len(obs)} windows; mean length {len(states) / len(episodes):.1f} steps",
          flush=True)
    cond = torch.from_numpy(min_max(obs, stats[demo_task.STATE_KEY])).flatten(1)
    target = torch.from_numpy(min_max(act, stats["action"]))

    with tempfile.TemporaryDirectory() as tmp:  # the spec dmc will read, so the net is built as it loads
        write_policy(tmp, inputs=INPUTS, action_dim=demo_task.ACTION_DIM, stats=stats, state_dict={}, **config)
        spec = read_policy_config(tmp)
        net = build_network(spec).train()
        wrap = NETWORKS[spec.noise_net][1]  # the denoiser dmc runs: the transformer takes per-step tokens
        denoiser = wrap(net, spec.horizon, spec.action.shape[0], spec.global_cond_dim)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    params = sum(p.numel() for p in net.parameters())
    print(f"{args.net}: {params:,} parameters; batch {batch}, lr {lr:g}, weight decay {weight_decay:g}", flush=True)
    noise_scheduler = make_scheduler(config, "DDPM")
    if args.net == "transformer":  # Diffusion Policy's DP-T optimiser: no decay on biases, norms, positions
        decays = {n: p.ndim >= 2 and "pos_emb" not in n for n, p in net.named_parameters()}
        groups = [{"params": [p for n, p in net.named_parameters() if decays[n] == d],
                   "weight_decay": weight_decay if d else 0.0} for d in (True, False)]
        opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))
    else:
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    budget, start, step, losses = args.minutes * 60, time.time(), 0, []
    while (elapsed := time.time() - start) < budget:
        warm = min(1.0, (step + 1) / warmup)
        for g in opt.param_groups:
            g["lr"] = lr * warm * 0.5 * (1 + math.cos(math.pi * elapsed / budget))
        idx = torch.randint(0, len(target), (batch,))
        x0, c = target[idx], cond[idx]
        noise = torch.randn_like(x0)
        t = torch.randint(0, config["num_train_timesteps"], (batch,))
        loss = torch.nn.functional.mse_loss(denoiser(noise_scheduler.add_noise(x0, noise, t), t, c), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), net.parameters()):
                pe.lerp_(pm, 1 - decay)
        losses.append(loss.item())
        step += 1
        if step % 500 == 0:
            print(f"step {step} {elapsed:.0f}s loss {np.mean(losses[-200:]):.4f}", flush=True)
    train_s = time.time() - start
    print(f"trained {args.net} ({params:,} parameters) for {step} steps in {train_s / 60:.1f} min; "
          f"final loss (mean of last 200) {np.mean(losses[-200:]):.4f}", flush=True)

    prefix = NOISE_NETS[spec.noise_net].prefix
    state_dict = {f"{prefix}{k}": v for k, v in ema.state_dict().items()}
    write_policy(args.out, inputs=INPUTS, action_dim=demo_task.ACTION_DIM, stats=stats, state_dict=state_dict,
                 **config)
    spec = read_policy(args.out)  # evaluate what was saved, loaded the way dmc loads it
    denoiser = load_denoiser(spec)
    start = time.time()
    result = demo_task.success_rate(torch_policy(denoiser, stats, config, args.seed), EVAL_SEEDS,
                                    spec.n_obs_steps, spec.n_action_steps)
    low, high = result["wilson95"]
    print(f"wrote {args.out}; FP32 closed-loop success on seeds {EVAL_SEEDS.start}..{EVAL_SEEDS.stop - 1}: "
          f"{result['successes']}/{result['n']} = {result['rate']:.0%} (95 % Wilson {low:.0%}..{high:.0%}), "
          f"mean {result['mean_steps']:.1f} steps; eval {time.time() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
