"""``dmc eval``: sample an artifact and its reference from identical seeds and compare.

Both sides run the artifact's recipe from the same initial noise and class labels, so
image i of one is the counterpart of image i of the other (paired RMSE / PSNR / SSIM).
The artifact's samples are also scored against the held-out digits (Frechet distance
with a bootstrap interval) and, for class-conditional models, by the digits classifier.

Images are sampled in global batches of ``batch_size`` (batch j holds images
``j*batch_size ...``, using the Pipeline's ``first=`` so image i always gets the same
noise). Under ``torchrun`` each rank takes a contiguous run of whole batches and rank 0
gathers per-image rows, so a sharded run computes exactly what one process does.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dmc.errors import DmcError

DEFAULT_N = 1000
DEFAULT_BATCH = 50
REFERENCE_SET = "digits-heldout"
EVAL_FORMAT = "dmc-eval"


def blas_one_thread():
    """Cap BLAS/OpenMP pools at one thread (sqrtm/eigh are ~100x slower when oversubscribed)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - ships with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(1)


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(f"[dmc] {msg}", file=sys.stderr, flush=True)


# --- what gets sampled ----------------------------------------------------------------


@dataclass
class Target:
    """Something that samples: an artifact (ONNX Runtime) or a model (torch, the artifact's recipe)."""

    spec: str
    kind: str  # "artifact" | "model"
    pipeline: object  # dmc.runtimes.pipeline.Pipeline, or a TextToImage around one
    info: dict
    prompts: list[str] | None = None  # text-to-image: image i is drawn for prompts[i mod len]

    @property
    def label(self) -> str:
        return f"{Path(self.spec).name or self.spec} ({'ORT' if self.kind == 'artifact' else 'torch'})"

    @property
    def sampler(self):
        """The backbone's sampler loop (the pipeline itself, unless it is a prompt pipeline)."""
        return getattr(self.pipeline, "backbone", self.pipeline)

    def prompts_for(self, first: int, count: int) -> list[str]:
        return [self.prompts[(first + i) % len(self.prompts)] for i in range(count)]

    def unit_images(self, first: int, count: int, seed: int, labels=None, on_call=None) -> np.ndarray:
        """Images ``first .. first+count-1`` as float ``[count, H, W, C]`` in [0, 1]: the samples, or for a
        prompt pipeline the VAE's decoding of the latents drawn for their prompts."""
        if self.prompts is None:
            return to_unit(self.pipeline.sample(count, seed, class_labels=labels, batch_size=count, first=first,
                                                on_call=on_call))
        latents = self.pipeline.latents(self.prompts_for(first, count), n=count, seed=seed, batch_size=count,
                                        first=first, on_call=on_call)
        return to_unit(self.pipeline.decode(latents))


def is_artifact(spec: str | Path) -> bool:
    p = Path(spec)
    return p.is_dir() and (p / "manifest.json").is_file()


def open_artifact(path: str | Path, threads: int | None = None, prompts: list[str] | None = None,
                  backend: str | None = None) -> Target:
    """An artifact on ``backend`` (default: its own, ``default_backend``) on the CPU; a text-to-image one
    draws for ``prompts`` (default ``EVAL_PROMPTS``)."""
    from dmc.runtimes import load
    from dmc.runtimes.text2image import TextToImage

    if not is_artifact(path):
        raise DmcError(f"{path}: not a dmc artifact (no manifest.json); build one with `dmc compress`")
    from dmc.artifact import read_manifest
    from dmc.runtimes.executor import cpu_providers, default_backend

    backend = backend or default_backend(read_manifest(path, verify=False))
    pipe = load(path, backend=backend, providers=cpu_providers(backend), threads=threads)
    m = pipe.manifest
    info = {"kind": "artifact", "path": str(path), "backend": backend, "precision": m.data.get("precision"),
            "graphs": sorted(m.graphs), "recipe": m.recipe.to_json(), "model_source": m.model.get("source")}
    if not isinstance(pipe, TextToImage):
        if prompts:
            raise DmcError(f"{path}: not a text-to-image artifact, so it takes no prompts")
        return Target(str(path), "artifact", pipe, info)
    from dmc.data.prompts import EVAL_PROMPTS

    return Target(str(path), "artifact", pipe, info, list(prompts or EVAL_PROMPTS))


def open_prompt_model(source: str, manifest, prompts: list[str], threads: int | None = None) -> Target:
    """The uncompressed pipeline at ``source`` in torch (text encoders, the backbone in the runtime's sampler
    loop under the artifact's recipe, the VAE decoder), drawing for the artifact's prompts. Tokenizing uses
    the artifact's shipped tokenizers (``manifest``'s), which the compile checked against transformers'."""
    from dmc.export.pipeline_parts import pipeline_root, torch_parts_executor
    from dmc.runtimes.text2image import TextToImage

    parts = torch_parts_executor(source, manifest.data["parts"])
    root = pipeline_root(source)
    sub = root / Path(manifest.model["source"]).name  # the backbone's subfolder (unet/, transformer/)
    backbone_source = str(sub) if Path(source) == root and sub.is_dir() else str(source)
    expect = manifest.model.get("source_sha256")
    model = open_model(backbone_source, manifest.recipe, threads, expect_sha256=expect,
                       training_schedule=manifest.data.get("training_schedule"), calls=_base_calls(manifest))
    pipe = TextToImage(manifest, model.pipeline, parts)
    return Target(str(root), "model", pipe, {**model.info, "source": str(root)}, list(prompts))


def _base_calls(manifest):
    from dmc.sampling.step_plan import base_calls

    return base_calls(manifest.data)


def _model_sha256(source: str) -> str | None:
    from dmc.models.loading import source_sha256

    try:
        return source_sha256(source)
    except DmcError:
        return None


def open_model(source: str, recipe, threads: int | None = None, expect_sha256: str | None = None,
               training_schedule: dict | None = None, calls: list | None = None) -> Target:
    """The uncompressed torch model in the runtime's sampler loop, under ``recipe`` (and the artifact's
    training schedule, when given); ``calls`` (an artifact's step plan) replaces the recipe's table."""
    import torch

    from dmc.compress.pipeline import reference_pipeline

    if threads:
        torch.set_num_threads(threads)
    sha = _model_sha256(source)
    pipe = reference_pipeline(source, recipe, training_schedule=training_schedule)
    if calls is not None:
        pipe.calls = calls
    info = {"kind": "model", "source": source, "sha256": sha, "recipe": recipe.to_json(),
            "step_plan": calls is not None,
            "matches_artifact_source": None if expect_sha256 is None else sha == expect_sha256}
    return Target(source, "model", pipe, info)


def open_reference(reference: str | None, artifact: Target, threads: int | None = None) -> Target:
    """``reference`` (a model source or an artifact; default: the model the artifact was compiled from)."""
    manifest = artifact.pipeline.manifest
    if reference is None:
        reference = manifest.model.get("source")
        if not reference or (reference not in _demo_names() and not Path(reference).exists()):
            raise DmcError(f"the artifact's source model {reference!r} is not available here; "
                           "pass --reference MODEL_OR_ARTIFACT")
    if is_artifact(reference):
        target = open_artifact(reference, threads, artifact.prompts)
        if (target.prompts is None) != (artifact.prompts is None):
            raise DmcError(f"reference artifact {reference} and the artifact differ in kind: one is a "
                           "text-to-image pipeline, the other is not")
        if target.pipeline.manifest.recipe != manifest.recipe:
            warnings.warn(f"reference artifact {reference} has recipe {target.pipeline.manifest.recipe}, "
                          f"the artifact {manifest.recipe}: pairs share seeds and labels only", stacklevel=2)
        return target
    if artifact.prompts is not None:
        target = open_prompt_model(reference, manifest, artifact.prompts, threads)
    else:
        target = open_model(reference, manifest.recipe, threads, expect_sha256=manifest.model.get("source_sha256"),
                            training_schedule=manifest.data.get("training_schedule"), calls=_base_calls(manifest))
    if target.info["matches_artifact_source"] is False:
        warnings.warn(f"reference model {reference} is not the file the artifact was compiled from "
                      "(sha256 differs): paired metrics include the weight difference", stacklevel=2)
    return target


def _demo_names() -> set[str]:
    from dmc.models.builtin import DEMO_MODELS

    return set(DEMO_MODELS)


# --- sampling plan (shared by single-process and torchrun) ------------------------------


def batch_plan(n: int, batch_size: int, rank: int = 0, world: int = 1) -> list[tuple[int, int]]:
    """``(first, count)`` of the global batches that ``rank`` samples: a contiguous run of whole batches."""
    batches = [(s, min(batch_size, n - s)) for s in range(0, n, batch_size)]
    per, extra = divmod(len(batches), world)
    lo = rank * per + min(rank, extra)
    return batches[lo:lo + per + (1 if rank < extra else 0)]


def to_unit(samples: np.ndarray) -> np.ndarray:
    """Model-space ``[n, C, H, W]`` in [-1, 1] -> float ``[n, H, W, C]`` in [0, 1] (clipped)."""
    return ((np.clip(samples.astype(np.float64), -1.0, 1.0) + 1.0) / 2.0).transpose(0, 2, 3, 1)


def _rows(artifact: Target, reference: Target, extractor, n: int, seed: int, batch_size: int,
          plan: list[tuple[int, int]], progress: bool) -> dict[str, np.ndarray]:
    """Per-image rows for this rank's batches: features, paired metrics, labels and predictions."""
    from dmc.evaluate.paired import paired_fidelity

    labels_all = artifact.sampler.labels_for(n)
    out: dict[str, list] = {k: [] for k in ("feat", "feat_ref", "metrics", "labels", "pred", "pred_ref")}
    done = 0
    for first, count in plan:
        labels = None if labels_all is None else labels_all[first:first + count]
        ua = artifact.unit_images(first, count, seed, labels)
        ur = reference.unit_images(first, count, seed, labels)
        pf = paired_fidelity(ua, ur)
        out["metrics"].append(np.stack([pf["rmse"], pf["psnr"], pf["ssim"]], axis=1))
        out["labels"].append(np.full(count, -1, np.int64) if labels is None else labels.astype(np.int64))
        if extractor is None:  # no Frechet features (a text-to-image eval without --features)
            out["feat"].append(np.zeros((count, 0)))  # every key present: torchrun gathers a fixed set
            out["feat_ref"].append(np.zeros((count, 0)))
            out["pred"].append(np.full(count, -1, np.int64))
            out["pred_ref"].append(np.full(count, -1, np.int64))
            done += count
            continue
        out["feat"].append(extractor(ua))
        out["feat_ref"].append(extractor(ur))
        pa, pr = extractor.predict(ua), extractor.predict(ur)
        out["pred"].append(np.full(count, -1, np.int64) if pa is None else np.asarray(pa, np.int64))
        out["pred_ref"].append(np.full(count, -1, np.int64) if pr is None else np.asarray(pr, np.int64))
        done += count
        _log(progress, f"sampled {done}/{sum(c for _, c in plan)} image pairs")
    if not plan:
        return {}
    return {k: np.concatenate(v) for k, v in out.items()}


def _classifier_summary(extractor, labels, pred, pred_ref, num_classes: int | None) -> dict | None:
    """Accuracy of the classifier on generated samples against the asked class (digits models only)."""
    if (labels < 0).any() or (pred < 0).any() or num_classes != 10:
        return None
    return {
        "classifier": extractor.name,
        "accuracy": float((pred == labels).mean()),
        "reference_accuracy": float((pred_ref == labels).mean()),
        "class_histogram": np.bincount(pred, minlength=10).tolist(),
    }


def summarize(rows: dict[str, np.ndarray], extractor, ref_feats: np.ndarray | None, n_boot: int,
              num_classes: int | None) -> dict:
    """The numbers ``dmc eval`` reports, from all images' rows (rank 0). ``ref_feats`` None (text-to-image):
    the Frechet distance is taken to the reference's own images, there being no data set to hold out."""
    from dmc.evaluate.frechet import frechet_with_ci

    rmse, psnr, ssim = rows["metrics"].T
    paired = _paired_summary(rmse, psnr, ssim)
    if extractor is None:
        return {"paired": paired, "frechet": None, "classifier": None}
    if ref_feats is None:
        with blas_one_thread():
            fd = frechet_with_ci(rows["feat"], rows["feat_ref"], n_boot=n_boot)
        frechet = {**{k: fd[k] for k in ("fd", "ci_low", "ci_high", "alpha", "n_boot", "n_gen", "n_ref")},
                   "ci_method": "bootstrap", "features": extractor.name,
                   "reference_set": "the reference's images (same prompts and seeds)",
                   "reference_model_fd": None, "reference_model_ci": None, "fd_delta": fd["fd"]}
        return {"paired": paired, "frechet": frechet, "classifier": None}
    # The labels are fixed by design (cycling), so resample within each class (see frechet_with_ci),
    # once every class has enough images for that to vary.
    labels = rows["labels"]
    strata = labels if (labels >= 0).all() and np.unique(labels, return_counts=True)[1].min() >= 5 else None
    with blas_one_thread():
        fd = frechet_with_ci(rows["feat"], ref_feats, n_boot=n_boot, strata=strata)
        fd_ref = frechet_with_ci(rows["feat_ref"], ref_feats, n_boot=n_boot, strata=strata)
    frechet = {
        "fd": fd["fd"], "ci_low": fd["ci_low"], "ci_high": fd["ci_high"], "alpha": fd["alpha"],
        "n_boot": fd["n_boot"], "n_gen": fd["n_gen"], "n_ref": fd["n_ref"],
        "ci_method": "bootstrap within class labels" if strata is not None else "bootstrap",
        "features": extractor.name, "reference_set": REFERENCE_SET,
        "reference_model_fd": fd_ref["fd"], "reference_model_ci": [fd_ref["ci_low"], fd_ref["ci_high"]],
        "fd_delta": fd["fd"] - fd_ref["fd"],
    }
    classifier = _classifier_summary(extractor, rows["labels"], rows["pred"], rows["pred_ref"], num_classes)
    return {"paired": paired, "frechet": frechet, "classifier": classifier}


def _paired_summary(rmse: np.ndarray, psnr: np.ndarray, ssim: np.ndarray) -> dict:
    return {
        "rmse_mean": float(rmse.mean()), "rmse_worst": float(rmse.max()),
        "psnr_mean": float(psnr.mean()), "psnr_worst": float(psnr.min()),
        "ssim_mean": float(ssim.mean()), "ssim_worst": float(ssim.min()),
        "worst_index": int(rmse.argmax()),
    }


def evaluate(artifact: str | Path, reference: str | None = None, n: int = DEFAULT_N, seed: int | None = None,
             features: str | None = None, batch_size: int = DEFAULT_BATCH, threads: int | None = None,
             n_boot: int = 200, per_image: bool = True, progress: bool = False,
             distributed: bool | None = None, prompts: list[str] | None = None) -> dict | None:
    """Evaluate ``artifact`` against ``reference`` (a model source or an artifact; default: its source model).

    A text-to-image artifact draws image i for ``prompts[i mod len]`` (default: the built-in
    ``EVAL_PROMPTS``) on both sides and compares decoded images; its Frechet distance, taken to the
    reference's images, needs ``features`` (there is no default extractor for natural images).

    Returns the report dict (see ``docs/ci.md``); under ``torchrun`` (``distributed``: None = detect from
    the environment) every rank samples its share and only rank 0 returns it (others return None).
    """
    from dmc.evaluate import distributed as dist_mod
    from dmc.evaluate.features import load_extractor
    from dmc.evaluate.frechet import reference_features

    if n < 2:
        raise DmcError("--n must be at least 2 (Frechet distance needs a covariance)")
    if batch_size < 1:
        raise DmcError("--batch-size must be at least 1")
    started = time.time()
    comm = dist_mod.Comm.from_env() if distributed is None or distributed else dist_mod.Comm.single()
    if distributed and comm.world == 1 and not dist_mod.launched():
        raise DmcError("distributed evaluation needs torchrun (no WORLD_SIZE in the environment)")
    caught: list[str] = []
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        art = open_artifact(artifact, threads, prompts)
        ref = open_reference(reference, art, threads)
    caught += [str(x.message) for x in w if issubclass(x.category, UserWarning)]
    seed = art.pipeline.recipe.seed if seed is None else int(seed)
    text_to_image = art.prompts is not None
    try:
        extractor = None if text_to_image and features is None else load_extractor(features)
    except ValueError as e:
        raise DmcError(str(e)) from None
    cond = art.sampler.cond
    num_classes = cond.get("num_classes") if cond.get("kind") == "class" else None
    plan = batch_plan(n, batch_size, comm.rank, comm.world)
    _log(progress and comm.rank == 0, f"sampling {n} image pairs (seed {seed}) on {comm.world} process(es)")
    rows = _rows(art, ref, extractor, n, seed, batch_size, plan, progress and comm.rank == 0)
    rows = comm.gather_rows(rows)
    if comm.rank != 0:
        return None
    _log(progress and extractor is not None, "computing Frechet distances")
    ref_feats = None if text_to_image or extractor is None else reference_features(extractor)
    result = {
        "format": EVAL_FORMAT, "format_version": 1,
        "artifact": str(artifact),
        "artifact_info": art.info,
        "reference": ref.info,
        "n": n, "seed": seed, "batch_size": batch_size,
        "class_labels": None if num_classes is None
        else f"cycling 0..{num_classes - 1} (image i gets i mod {num_classes})",
        "prompts": _prompts_info(art.prompts, prompts),
        **summarize(rows, extractor, ref_feats, n_boot, num_classes),
        "world_size": comm.world,
        "seconds": round(time.time() - started, 2),
        "warnings": caught,
    }
    if per_image:
        rmse, psnr, ssim = rows["metrics"].T
        result["per_image"] = {"rmse": rmse.tolist(), "psnr": psnr.tolist(), "ssim": ssim.tolist(),
                               "label": rows["labels"].tolist(), "predicted": rows["pred"].tolist()}
        if text_to_image:
            result["per_image"]["prompt"] = art.prompts_for(0, n)
    return result


def _prompts_info(used: list[str] | None, given: list[str] | None) -> dict | None:
    """What the eval drew for: enough to tell whether two documents used the same prompts."""
    if used is None:
        return None
    import hashlib

    digest = hashlib.sha256("\n".join(used).encode()).hexdigest()[:16]
    return {"count": len(used), "source": "given" if given else "built-in", "sha256_16": digest,
            "rule": "image i gets prompt i mod count"}


def format_eval(result: dict) -> str:
    """A human summary of ``evaluate``'s result."""
    p, f, c = result["paired"], result["frechet"], result.get("classifier")
    ref = result["reference"]
    lines = [
        f"artifact   {result['artifact']}",
        f"reference  {ref.get('path') or ref.get('source')} ({ref['kind']})",
        f"images     N={result['n']} seed={result['seed']} processes={result['world_size']}",
        f"paired     RMSE mean {p['rmse_mean']:.5f} worst {p['rmse_worst']:.5f} | "
        f"PSNR mean {p['psnr_mean']:.2f} dB worst {p['psnr_worst']:.2f} dB | "
        f"SSIM mean {p['ssim_mean']:.4f} worst {p['ssim_worst']:.4f}",
    ]
    if result.get("prompts"):
        q = result["prompts"]
        lines.insert(3, f"prompts    {q['count']} ({q['source']}); image i gets prompt i mod {q['count']}")
    if f is None:
        lines.append("frechet    not measured: a text-to-image eval needs --features (an ONNX embedding or "
                     "pytorch-fid Inception weights)")
    elif f.get("reference_model_fd") is None:
        lines.append(f"frechet    FD {f['fd']:.3f} [{f['ci_low']:.3f}, {f['ci_high']:.3f}] "
                     f"({1 - f['alpha']:.0%} bootstrap) to {f['reference_set']}, features {f['features']}")
    else:
        lines.append(
            f"frechet    FD {f['fd']:.3f} [{f['ci_low']:.3f}, {f['ci_high']:.3f}] ({1 - f['alpha']:.0%} bootstrap) "
            f"vs {f['reference_set']} (n_ref={f['n_ref']}), features {f['features']}; "
            f"reference model FD {f['reference_model_fd']:.3f} (delta {f['fd_delta']:+.3f})")
    if c:
        lines.append(f"classifier accuracy {c['accuracy']:.3f} (reference {c['reference_accuracy']:.3f}) "
                     f"against the asked class")
    for w in result.get("warnings", []):
        lines.append(f"warning    {w}")
    return "\n".join(lines)
