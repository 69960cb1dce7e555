"""The prepared GPU check of medlsam: everything the CUDA path does, in one run, one table.

Run through ``scripts/gpu_check.sh`` (about 5-8 minutes on one H100); ``--device cpu --tiny``
is a dry run of the same steps with tiny models on the CPU (the test suite runs it). Each check
prints one row: PASS, FAIL (one-line reason) or SKIP, its seconds and what it measured; the exit
status is 1 when any check failed. Checks:

``cuda-tests``   the CUDA tests (``pytest -m gpu``) with TF32 off and on
``sam``          full-size random ViT-B built as ``sam_model_registry`` builds it, 8 slices in
                 fp32 and bf16, fused vs stock encoder: seconds and peak memory per slice,
                 embedding differences
``medlam``       width-24 random MedLAM, batch 16, fc and all features in fp16 and fp32:
                 NaN/inf, peak memory; MSS similarity and offsets on the device vs the CPU
``localize``     ``medlsam-localize`` on a synthetic cohort twice on the device (identical?)
                 and once on the CPU (boxes that differ)
``infer``        ``medlsam-infer`` the same way (random ViT-B checkpoint; ``classic`` with
                 ``--tiny``), plus MedLAM fp32 and SAM bf16/fp16 runs: boxes and mask voxels
                 that differ from the published-precision run
``train``        30 training steps at width 24 with all MSS scales: data vs compute seconds,
                 save at 15, resume, compare with the uninterrupted run
``benchmark``    ``python -m medlsam.bench --quick`` on the device: seconds, peak GPU memory
``overlap``      ``scripts/measure_slice_overlap.py``: slice preparation hidden behind the
                 encoder, threads vs processes

    python scripts/gpu_check.py [--device cuda] [--tiny] [--only sam,medlam] [--budget 460]
        [--work DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


class Skip(Exception):
    """A check that cannot run here (no CUDA, out of time)."""


@dataclass
class Context:
    device: str
    tiny: bool
    work: Path
    deadline: float
    results: dict = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def run(self, args: list[str], timeout: float, env: dict | None = None) -> str:
        """Run a command (its output returned); a non-zero exit raises with its last line."""
        timeout = min(timeout, max(5.0, self.left()))
        try:
            done = subprocess.run(
                args,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=timeout,
                env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            )
        except subprocess.TimeoutExpired as err:
            raise RuntimeError(f"{' '.join(args[1:4])}: timed out after {timeout:.0f} s") from err
        out = done.stdout + done.stderr
        if done.returncode != 0:
            last = [line for line in out.strip().splitlines() if line.strip()][-1:] or ["?"]
            raise RuntimeError(f"{' '.join(args[1:4])}: exit {done.returncode}: {last[0][:200]}")
        return out


def peak_mb(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


# --------------------------------------------------------------------------------------------
# checks


def check_cuda_tests(ctx: Context) -> str:
    if not ctx.cuda:
        raise Skip("needs CUDA")
    parts = []
    for tf32 in ("0", "1"):
        out = ctx.run(
            [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"],
            timeout=180,
            env={"MEDLSAM_TF32": tf32},
        )
        parts.append(f"TF32 {'on' if tf32 == '1' else 'off'}: {out.strip().splitlines()[-1]}")
    return "; ".join(parts)


def _sam_model(tiny: bool):
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    if tiny:
        from infer_helpers import tiny_sam

        return tiny_sam()  # windowed attention only: seconds on a CPU
    return sam_model_registry["vit_b"]()  # random weights, built the normal way


def check_sam(ctx: Context) -> str:
    from medlsam.segment import SamSegmenter

    model, slices = _sam_model(ctx.tiny), 1 if ctx.tiny else 8
    images = np.random.default_rng(0).integers(0, 256, (slices, 1024, 1024, 3), dtype=np.uint8)
    emb, parts = {}, []
    for encoder in ("fast", "stock"):
        for precision in ("fp32", "bf16") if ctx.cuda else ("fp32",):
            seg = SamSegmenter(
                copy.deepcopy(model),
                ctx.device,
                batch_size=slices,
                precision=precision,
                fast_encoder=encoder == "fast",
            )
            seg.encode(images[:1])  # warm-up
            reset_peak(ctx.device)
            began = time.perf_counter()
            out = seg.encode(images)  # synchronised inside
            per_slice = (time.perf_counter() - began) / slices
            emb[encoder, precision] = out.cpu()
            ctx.results[f"sam_{encoder}_{precision}"] = {
                "s_per_slice": round(per_slice, 4),
                "peak_mb": peak_mb(ctx.device),
            }
            parts.append(
                f"{encoder}/{precision} {per_slice * 1000:.0f} ms/slice "
                f"{peak_mb(ctx.device) or '-'} MiB"
            )
            del seg, out
    ref = emb["stock", "fp32"]
    scale = float(ref.abs().max())
    fast_diff = float((emb["fast", "fp32"] - ref).abs().max()) / scale
    parts.append(f"fast vs stock fp32 max diff {fast_diff:.1e} of scale")
    ctx.results["sam_fast_vs_stock_rel"] = fast_diff
    if fast_diff > 1e-2:
        raise RuntimeError(f"fused encoder differs from stock by {fast_diff:.2e} of scale")
    if ("fast", "bf16") in emb:
        rel = float((emb["fast", "bf16"] - ref).norm() / ref.norm())
        ctx.results["sam_bf16_rel_error"] = rel
        parts.append(f"bf16 relative error {rel:.3f}")
        if rel > 0.1:
            raise RuntimeError(f"bf16 embeddings are {rel:.2f} off fp32 (relative)")
    return "; ".join(parts)


def check_medlam(ctx: Context) -> str:
    from medlsam.localization.matching import mss_offsets, similarity_map
    from medlsam.localization.network import FEATURE_NAMES, MedLAM

    torch.manual_seed(0)
    width, batch = (2, 2) if ctx.tiny else (24, 16)
    model = MedLAM(width).to(ctx.device).eval()
    x = torch.rand(batch, 1, 64, 64, 64, device=ctx.device)
    parts, outs = [], {}
    for precision in ("fp16", "fp32") if ctx.cuda else ("fp32",):
        reset_peak(ctx.device)
        began = time.perf_counter()
        with (
            torch.inference_mode(),
            torch.autocast("cuda", torch.float16, enabled=precision == "fp16" and ctx.cuda),
        ):
            out = {k: v.float() for k, v in model(x, fc=True, features=FEATURE_NAMES).items()}
        if ctx.cuda:
            torch.cuda.synchronize(ctx.device)
        bad = [k for k, v in out.items() if not torch.isfinite(v).all()]
        if bad:
            raise RuntimeError(f"{precision}: NaN or inf in {bad}")
        outs[precision] = out
        parts.append(
            f"{precision} batch {batch}: {time.perf_counter() - began:.2f} s, "
            f"peak {peak_mb(ctx.device) or '-'} MiB"
        )
        ctx.results[f"medlam_{precision}_peak_mb"] = peak_mb(ctx.device)
    feats = outs["fp32"]
    templates = {s: feats[s][:, :, :8, :8, :8].flip(0) for s in FEATURE_NAMES}
    here = similarity_map(feats, templates, FEATURE_NAMES)
    cpu = similarity_map(
        {k: v.cpu() for k, v in feats.items()},
        {k: v.cpu() for k, v in templates.items()},
        FEATURE_NAMES,
    )
    diff = float((here.cpu() - cpu).abs().max())
    moved = int((mss_offsets(here) != mss_offsets(cpu)).any(axis=1).sum())
    parts.append(
        f"similarity {ctx.device} vs cpu max diff {diff:.1e}, MSS offsets moved {moved}/{batch}"
    )
    if diff > 1e-3:
        raise RuntimeError(f"similarity map differs from the CPU by {diff:.2e}")
    if "fp16" in outs:
        rel = float((outs["fp16"]["fc_position"] - feats["fc_position"]).abs().max())
        parts.append(f"fc fp16 vs fp32 max diff {rel:.1e}")
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------
# the command-line tools on a synthetic cohort

#: the organs the cohort runs use (fewer organs: fewer slices for the CPU run)
ORGANS = {1: "liver", 2: "spleen", 4: "kidney_left"}


def make_cohort(ctx: Context) -> Path:
    out = ctx.work / "cohort"
    if not (out / "config.txt").is_file():
        shape = ["48", "48", "32"] if ctx.tiny else ["96", "96", "60"]
        demo = ROOT / "medlsam" / "data" / "medlam_demo.pth"
        ctx.run(
            [
                sys.executable,
                "-m",
                "medlsam.synth",
                "--out",
                str(out),
                "--n",
                "2",
                "--supports",
                "1",
                "--seed",
                "5",
                "--shape",
                *shape,
                "--medlam",
                str(demo),
                "--quiet",
            ],
            timeout=120,
        )
    return out


def write_config(cohort: Path, name: str, sam_checkpoint: Path | None, tiny: bool = False) -> Path:
    """A copy of the cohort's config with fewer organs and, given a checkpoint, SAM ViT-B
    (``tiny``: WPL boxes, MSS on the coarsest feature scale only)."""
    lines = []
    for line in (cohort / "config.txt").read_text().splitlines():
        key = line.split("=")[0].strip()
        if key == "fg_class":
            line = f"fg_class = [{', '.join(str(c) for c in ORGANS)}]"
        elif key == "fg_class_name":
            line = f"fg_class_name = [{', '.join(ORGANS.values())}]"
        elif key == "feature_scale_ls" and tiny:
            line = "feature_scale_ls = [feature0]"
        elif key == "bbox_mode" and tiny:
            line = "bbox_mode = WPL"
        elif key == "slice_interval" and tiny:
            line = "slice_interval = False"
        elif key == "backend" and sam_checkpoint is not None:
            line = "backend = sam_vit_b"
        lines.append(line)
        if line.strip() == "[weight]" and sam_checkpoint is not None:
            lines.append(f"vit_load_path = {sam_checkpoint}")
    path = cohort / f"config_{name}.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def read_outputs(folder: Path) -> tuple[dict, dict]:
    """``({case: {class: [[min, max], ...]}}, {case: label array})`` of a run folder."""
    boxes, labels = {}, {}
    for path in sorted(folder.glob("*.boxes.json")):
        doc = json.loads(path.read_text())
        case = path.name[: -len(".boxes.json")]
        boxes[case] = {
            c: [[b["min"], b["max"]] for b in v["boxes"]] for c, v in doc["classes"].items()
        }
        npz = folder / f"{case}.npz"
        if npz.is_file():
            labels[case] = np.load(npz)["label"]
    if not boxes:
        raise RuntimeError(f"{folder}: no boxes written")
    return boxes, labels


def differences(a: Path, b: Path) -> tuple[int, int, float]:
    """Boxes that differ (of all), and the share of label voxels that differ, between runs."""
    boxes_a, labels_a = read_outputs(a)
    boxes_b, labels_b = read_outputs(b)
    pairs = [(x, boxes_b[case][c]) for case, organs in boxes_a.items() for c, x in organs.items()]
    differing = sum(x != y for x, y in pairs)
    total = sum(max(len(x), len(y)) for x, y in pairs)
    voxels = [float((labels_a[c] != labels_b[c]).mean()) for c in labels_a]
    return differing, total, float(np.mean(voxels)) if voxels else 0.0


def check_localize(ctx: Context) -> str:
    config = write_config(make_cohort(ctx), "localize", None, ctx.tiny)
    runs = {}
    for name, device in (("a", ctx.device), ("b", ctx.device), ("cpu", "cpu")):
        if name == "cpu" and not ctx.cuda:
            continue
        runs[name] = ctx.work / "localize" / name
        ctx.run(
            [
                sys.executable,
                "-m",
                "medlsam.cli.localize",
                "--config",
                str(config),
                "--output",
                str(runs[name]),
                "--device",
                device,
                "--quiet",
            ],
            timeout=180,
        )
    same, total, _ = differences(runs["a"], runs["b"])
    text = f"{ctx.device} twice: {same} of {total} boxes differ"
    if same:
        raise RuntimeError(text)
    if "cpu" in runs:
        moved, total, _ = differences(runs["a"], runs["cpu"])
        ctx.results["localize_boxes_differing_cpu"] = [moved, total]
        text += f"; vs CPU fp32: {moved} of {total} boxes differ"
    return text


def random_sam_checkpoint(ctx: Context) -> Path | None:
    if ctx.tiny:
        return None  # classic backend: no SAM
    path = ctx.work / "sam_vit_b_random.pth"
    if not path.is_file():
        torch.save(_sam_model(False).state_dict(), path)
    return path


def check_infer(ctx: Context) -> str:
    config = write_config(make_cohort(ctx), "infer", random_sam_checkpoint(ctx), ctx.tiny)
    variants = [("a", ctx.device, []), ("b", ctx.device, [])]
    if ctx.cuda:
        variants += [
            ("cpu", "cpu", []),
            ("medlam_fp32", ctx.device, ["--medlam-precision", "fp32"]),
            ("sam_bf16", ctx.device, ["--sam-precision", "bf16"]),
            ("sam_fp16", ctx.device, ["--sam-precision", "fp16"]),
        ]
    folders = {}
    for name, device, extra in variants:
        folders[name] = ctx.work / "infer" / name
        ctx.run(
            [
                sys.executable,
                "-m",
                "medlsam.cli.infer",
                "--config",
                str(config),
                "--output",
                str(folders[name]),
                "--device",
                device,
                "--quiet",
                *extra,
            ],
            timeout=240,
        )
    moved, total, voxels = differences(folders["a"], folders["b"])
    parts = [f"{ctx.device} twice: {moved}/{total} boxes, {voxels:.2%} voxels differ"]
    if moved or voxels:
        raise RuntimeError(parts[0])
    for name in ("cpu", "medlam_fp32", "sam_bf16", "sam_fp16"):
        if name in folders:
            moved, total, voxels = differences(folders["a"], folders[name])
            ctx.results[f"infer_vs_{name}"] = {"boxes": [moved, total], "voxels": voxels}
            parts.append(f"vs {name}: {moved}/{total} boxes, {voxels:.3%} voxels")
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------
# training, benchmark, overlap

TRAIN_CONFIG = """[data]
train_image_list = train.txt
iter_num = {steps}
batch_size = {batch}
distance_ratio = [1500, 600, 600]
valid_pairs = 4
interpolation = linear
num_workers = {workers}
[network]
base_feature_number = {width}
drop_rate = 0.2
[training]
learning_rate = 1e-4
maximal_epoch = 1
print_step = 5
save_every = {steps}
random_seed = 2023
model_save_name = run/MedLAM
mss_scales = {scales}
mss_anchors = 8
freeze_first_stage = {freeze}
"""


def _trainer(config, name: str, device: str, **changes):
    from dataclasses import replace

    from medlsam.train.trainer import Trainer

    folder = config.model_save_name.parent.parent / name
    return Trainer(replace(config, model_save_name=folder / "MedLAM", **changes), device)


def check_train(ctx: Context) -> str:
    from medlsam.train.config import load_train_config

    folder = ctx.work / "train"
    folder.mkdir(parents=True, exist_ok=True)
    images = sorted((make_cohort(ctx) / "images").glob("*.nii.gz"))
    (folder / "train.txt").write_text("".join(f"{p}\n" for p in images))
    # --tiny: width 2, 4 steps of batch 2, MSS on the coarsest scale, first stage frozen
    tiny = ctx.tiny
    width, steps = (2, 4) if tiny else (24, 30)
    text = TRAIN_CONFIG.format(
        steps=steps,
        width=width,
        batch=2 if tiny else 4,
        workers=0 if tiny else 4,
        scales="[feature0]" if tiny else "[feature0, feature1, feature2]",
        freeze=tiny,
    )
    (folder / "train.cfg").write_text(text)
    config = load_train_config(folder / "train.cfg")
    if ctx.cuda:  # the comparison below is of resuming, not of kernel non-determinism
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    straight = _trainer(config, "straight", ctx.device)
    result = straight.fit(steps=steps, progress=False)
    part = _trainer(config, "part", ctx.device)
    part.fit(steps=steps // 2, progress=False)
    resumed = _trainer(config, "resumed", ctx.device)
    resumed.resume(part.paths["state"])
    resumed.fit(steps=steps, progress=False)
    diff = max(
        float((a.detach() - b.detach()).abs().max())
        for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True)
    )
    timing = getattr(straight, "timing", {})
    ctx.results["train"] = {
        "steps": steps,
        "seconds": round(result.seconds, 2),
        "resume_max_diff": diff,
        **timing,
    }
    text = (
        f"{steps} steps width {width}: {result.seconds:.1f} s "
        f"(data wait {timing.get('data_s', float('nan')):.1f} s, "
        f"compute {timing.get('compute_s', float('nan')):.1f} s); "
        f"resumed vs uninterrupted max diff {diff:.1e}"
    )
    if ctx.cuda:
        amp = _trainer(config, "amp", ctx.device, amp=True)
        amp_result = amp.fit(steps=min(steps, 10), progress=False)
        text += f"; AMP {amp_result.steps} steps loss {amp_result.last_loss:.4g}"
    if not diff <= 1e-4:
        raise RuntimeError(text)
    return text


def check_benchmark(ctx: Context) -> str:
    if not ctx.cuda:
        raise Skip("the quick benchmark takes minutes on a CPU")
    out = ctx.work / "benchmark.json"
    ctx.run(
        [
            sys.executable,
            "-m",
            "medlsam.bench",
            "--quick",
            "--device",
            ctx.device,
            "--json",
            str(out),
        ],
        timeout=300,
    )
    report = json.loads(out.read_text())
    ctx.results["benchmark"] = report
    stages = report.get("stages", {})
    top = sorted(stages.items(), key=lambda kv: -kv[1])[:3]
    return (
        f"{report['seconds_total']:.1f} s, peak GPU {report.get('peak_gpu_mb')} MiB; "
        + ", ".join(f"{k} {v:.1f} s" for k, v in top)
    )


def check_overlap(ctx: Context) -> str:
    out = ctx.work / "overlap.json"
    size = (
        ["--slices", "4", "--batch", "2", "--workers", "2", "--kinds", "thread"]
        if ctx.tiny
        else ["--slices", "48", "--batch", "8", "--workers", "1", "4"]
    )
    ctx.run(
        [sys.executable, "scripts/measure_slice_overlap.py", *size, "--json", str(out)], timeout=180
    )
    report = json.loads(out.read_text())
    ctx.results["overlap"] = report
    rows = ", ".join(
        f"{r['kind']} x{r['workers']} {r['wall_s']} s (hidden {r['hidden']})"
        for r in report["layouts"]
    )
    return f"{report['prep_per_slice_s']} s/slice serial; {rows}"


CHECKS: dict[str, Callable[[Context], str]] = {
    "cuda-tests": check_cuda_tests,
    "sam": check_sam,
    "medlam": check_medlam,
    "localize": check_localize,
    "infer": check_infer,
    "train": check_train,
    "benchmark": check_benchmark,
    "overlap": check_overlap,
}


def run_checks(ctx: Context, names: list[str]) -> list[tuple[str, str, float, str]]:
    rows = []
    for name in names:
        began = time.perf_counter()
        try:
            if ctx.left() < 10:
                raise Skip("out of time")
            status, detail = "PASS", CHECKS[name](ctx)
        except Skip as why:
            status, detail = "SKIP", str(why)
        except Exception as err:  # one row per failure, the other checks go on
            first = (str(err).strip().splitlines() or [""])[0]
            status, detail = "FAIL", f"{type(err).__name__}: {first}"[:300]
        rows.append((name, status, time.perf_counter() - began, detail))
        print(f"[{status}] {name} ({rows[-1][2]:.1f} s): {detail}", flush=True)
    return rows


def print_table(rows: list[tuple[str, str, float, str]], header: str) -> None:
    print(f"\n{header}\n| check | status | s | result |\n| --- | --- | ---: | --- |")
    for name, status, seconds, detail in rows:
        print(f"| {name} | {status} | {seconds:.1f} | {detail} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    p.add_argument("--tiny", action="store_true", help="tiny models and cohort (a dry run)")
    p.add_argument("--only", help="comma-separated checks: " + ", ".join(CHECKS))
    p.add_argument("--budget", type=float, default=460.0, help="seconds for all checks")
    p.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    p.add_argument("--json", type=Path, help="write the rows and measurements here")
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        p.error(f"--only: unknown checks {unknown}; expected some of {', '.join(CHECKS)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available here (use --device cpu --tiny for a dry run)")
        return 2
    with tempfile.TemporaryDirectory(prefix="medlsam_gpu_check_") as tmp:
        ctx = Context(
            args.device, args.tiny, args.work or Path(tmp), time.perf_counter() + args.budget
        )
        ctx.work.mkdir(parents=True, exist_ok=True)
        rows = run_checks(ctx, names)
        gpu = torch.cuda.get_device_name(args.device) if ctx.cuda else "no GPU"
        print_table(rows, f"medlsam GPU check on {args.device} ({gpu}), torch {torch.__version__}")
        if args.json:
            args.json.write_text(
                json.dumps(
                    {"device": args.device, "gpu": gpu, "rows": rows, "results": ctx.results},
                    indent=2,
                    default=str,
                )
                + "\n"
            )
    return 1 if any(status == "FAIL" for _, status, _, _ in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
