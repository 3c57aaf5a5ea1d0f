"""Write tests/fixtures/lerobot/: tiny diffusion policies saved by LeRobot itself, with golden actions.

Run once in an environment that has LeRobot (it is not a dmc dependency, and its torch pin differs):

    python -m venv /tmp/lrvenv && . /tmp/lrvenv/bin/activate
    pip install torch==2.14.1 torchvision==0.29.1 && pip install --no-deps lerobot==0.4.4
    pip install draccus==0.10.0 einops "diffusers<0.36" "huggingface-hub<0.36" datasets accelerate \
        imageio pyserial av gymnasium termcolor deepdiff jsonlines
    python scripts/make_lerobot_fixture.py tests/fixtures/lerobot

Each policy folder is what ``policy.save_pretrained`` and the processors' ``save_pretrained`` write.
``golden.safetensors`` beside it holds raw observations, the initial noise, the noise every DDPM
step drew (captured from diffusers' ``randn_tensor``) and LeRobot's action chunk for them
(``preprocessor -> DiffusionModel.generate_actions -> postprocessor``), so dmc's tests check the
loaded weights, the normalisation, the compiled sampler and the chunking against LeRobot's
own numbers without LeRobot installed.
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors
import diffusers.schedulers.scheduling_ddpm as ddpm_module

IMAGE_CASE = {  # PushT's image layout (resnet18, GroupNorm, 32 keypoints, 84x84 crop): 45 MB, not committed
    "image-ddim": dict(env=0, image=(3, 96, 96), crop=(84, 84), scheduler="DDIM", steps=5, film=True),
}
CASES = {
    # PushT keypoints layout: agent position + 16 keypoint coordinates, DDPM as LeRobot's default
    "keypoints-ddpm": dict(env=16, scheduler="DDPM", steps=10, film=True),
    # DDIM, bias-only FiLM, one observation step, a 4-wide environment state
    "env4-ddim": dict(env=4, scheduler="DDIM", steps=8, film=False, n_obs=1),
}


def build(name: str, case: dict, out: Path) -> None:
    torch.manual_seed(hash(name) % 1000)
    inputs = {"observation.state": PolicyFeature(type=FeatureType.STATE, shape=(2,))}
    if case["env"]:  # LeRobot requires images or an environment state
        inputs["observation.environment_state"] = PolicyFeature(type=FeatureType.ENV, shape=(case["env"],))
    if case.get("image"):
        inputs["observation.image"] = PolicyFeature(type=FeatureType.VISUAL, shape=case["image"])
    cfg = DiffusionConfig(input_features=inputs,
                          output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(2,))},
                          down_dims=(8, 16), n_groups=2, diffusion_step_embed_dim=8, kernel_size=3, horizon=8,
                          n_obs_steps=case.get("n_obs", 2), n_action_steps=4, noise_scheduler_type=case["scheduler"],
                          num_inference_steps=case["steps"], use_film_scale_modulation=case["film"], device="cpu",
                          crop_shape=case.get("crop"))
    policy = DiffusionPolicy(cfg).eval()
    with torch.no_grad():  # fresh LeRobot init leaves some layers near zero: make every weight matter
        for p in policy.parameters():
            p.add_(0.2 * torch.randn_like(p))
    stats = {"observation.state": {"min": torch.tensor([0.0, 10.0]), "max": torch.tensor([512.0, 500.0])},
             "action": {"min": torch.tensor([12.0, 20.0]), "max": torch.tensor([500.0, 490.0])}}
    if case.get("image"):
        stats["observation.image"] = {"mean": torch.tensor([0.4, 0.5, 0.6]).reshape(3, 1, 1),
                                      "std": torch.tensor([0.2, 0.25, 0.3]).reshape(3, 1, 1)}
    if case["env"]:
        stats["observation.environment_state"] = {"min": torch.zeros(case["env"]),
                                                  "max": torch.full((case["env"],), 512.0)}
    pre, post = make_diffusion_pre_post_processors(cfg, stats)
    folder = out / name
    policy.save_pretrained(folder)
    pre.save_pretrained(folder)
    post.save_pretrained(folder)

    n_obs = cfg.n_obs_steps
    g = torch.Generator().manual_seed(7)
    raw = {k: torch.rand(3, n_obs, *f.shape, generator=g) if f.type == FeatureType.VISUAL else
           stats[k]["min"] + (stats[k]["max"] - stats[k]["min"]) * torch.rand(3, n_obs, *f.shape, generator=g)
           for k, f in inputs.items()}
    noise = torch.randn(3, cfg.horizon, 2, generator=g)
    drawn = []
    original = ddpm_module.randn_tensor

    def recording(*args, **kwargs):
        z = original(*args, **kwargs)
        drawn.append(z.clone())
        return z

    ddpm_module.randn_tensor = recording
    try:
        batch = pre(dict(raw))
        if cfg.image_features:  # what DiffusionPolicy.select_action does before generate_actions
            batch["observation.images"] = torch.stack([batch[k] for k in cfg.image_features], dim=-4)
        with torch.no_grad():
            actions = policy.diffusion.generate_actions(dict(batch), noise=noise.clone())
        chunk = post(actions)
    finally:
        ddpm_module.randn_tensor = original
    tensors = {f"raw.{k}": v.contiguous() for k, v in raw.items()}
    tensors.update({"noise": noise, "actions": chunk.contiguous()})
    tensors.update({f"step_noise.{i}": z.contiguous() for i, z in enumerate(drawn)})
    save_file(tensors, str(folder / "golden.safetensors"))
    print(name, {k: tuple(v.shape) for k, v in tensors.items()})


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/lerobot")
    cases = IMAGE_CASE if "--image" in sys.argv else CASES  # --image: the 45 MB image policy (kept out of git)
    for name, case in cases.items():
        build(name, case, out)
