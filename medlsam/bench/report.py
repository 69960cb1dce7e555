"""The benchmark's report: a JSON-ready dict and the table printed from it."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from medlsam.bench.networks import Networks
from medlsam.bench.published import PublishedWork, UnitCosts
from medlsam.bench.stages import STAGES, StageRun
from medlsam.segment import SamSegmenter


def machine(device: str, threads: int) -> dict:
    """CPU model, torch threads, device (and GPU name), torch and Python versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "torch_threads": threads,
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def medlam_section(run: StageRun, nets: Networks, work: PublishedWork, costs: UnitCosts) -> dict:
    """MedLAM's work next to the published work, its costs and settings."""
    loc = nets.localizer
    counts = ("forward_passes", "patches")
    return {
        "prototypes": {
            **{k: int(run.fit_stats[k]) for k in counts},
            "published_patches": work.proto_patches,
            "published_forward_passes": work.proto_passes,
        },
        "localization": {
            **{k: int(run.query_stats[k]) for k in counts},
            "published_patches": work.query_patches,
            "published_forward_passes": work.query_passes,
        },
        "seconds_per_patch": round(costs.patch, 4),
        "eager_seconds_per_patch": round(costs.eager_patch, 4),
        "published_match_seconds_per_point": round(costs.match_point, 4),
        "width": int(nets.medlam.base_chns),
        "precision": loc.precision,
        "mss_share_mm": loc.mss_share_mm,
        "rdr_steps": loc.rdr_steps,
        "random_weights": nets.random_medlam,
    }


def sam_section(run: StageRun, nets: Networks, costs: UnitCosts, encoder: str) -> dict:
    """SAM's backend, settings and costs."""
    seg = nets.segmenter
    calls = run.prediction.work.get("encoder_calls", 0)
    is_sam = isinstance(seg, SamSegmenter)
    return {
        "backend": seg.name,
        "precision": getattr(seg, "precision", None),
        "encoder": encoder if is_sam else None,
        "engine": getattr(seg, "engine", None),
        "encoder_seconds_per_call": round(run.clock.seconds["encoder"] / max(1, calls), 3),
        "stock_encoder_seconds_per_call": round(costs.stock_encoder, 3),
        "decoder_seconds_per_box_published": round(costs.decoder_box, 4),
        "random_weights": nets.random_sam,
    }


def build_report(
    run: StageRun,
    nets: Networks,
    work: PublishedWork,
    costs: UnitCosts,
    published: dict[str, float],
    context: dict,
) -> dict:
    """Everything measured; ``context`` adds the case, machine and options (``encoder``)."""
    done = run.prediction.work
    published_total = float(sum(published.values()))
    total = run.seconds_total
    report = {
        "encoder_calls": int(done.get("encoder_calls", 0)),
        "decoder_calls": int(done.get("decoder_calls", 0)),
        "slices_segmented": int(run.prediction.slices_segmented),
        "boxes_prompted": int(done.get("boxes", 0)),
        "published_encoder_calls": work.encoder_calls,
        "published_decoder_calls": work.encoder_calls,
        "seconds_total": round(total, 3),
        "cpu_seconds_total": round(run.cpu_seconds, 3),
        "published_seconds_estimate": round(published_total, 3),
        "speedup_vs_published": round(published_total / max(total, 1e-9), 2),
        "encoder_call_ratio": round(work.encoder_calls / max(1, done.get("encoder_calls", 0)), 2),
        "peak_rss_mb": round(run.peak_rss_mb, 1),
        "peak_gpu_mb": None if run.peak_gpu_mb is None else round(run.peak_gpu_mb, 1),
        "stages": {s: round(run.clock.seconds.get(s, 0.0), 3) for s in STAGES},
        "published_stages": {s: round(v, 3) for s, v in published.items()},
        "medlam": medlam_section(run, nets, work, costs),
        "sam": sam_section(run, nets, costs, context["encoder"]),
        "coarse_points": "query labels" if run.label is not None else "relative distance",
        "engine": {
            "medlam": getattr(nets.runner, "engine", "torch"),
            "sam_encoder": getattr(nets.segmenter, "engine", None),
        },
        "projected": nets.sampler is not None,
        "sampling": None if nets.sampler is None else nets.sampler.report(),
    }
    report.update({k: v for k, v in context.items() if k != "encoder"})
    return report


def _work_rows(report: dict) -> list[tuple[str, int, int]]:
    med = report["medlam"]
    proto, query = med["prototypes"], med["localization"]
    return [
        ("MedLAM patches, prototypes", proto["patches"], proto["published_patches"]),
        ("MedLAM patches, query", query["patches"], query["published_patches"]),
        (
            "MedLAM forward passes",
            proto["forward_passes"] + query["forward_passes"],
            proto["published_forward_passes"] + query["published_forward_passes"],
        ),
        ("SAM encoder calls", report["encoder_calls"], report["published_encoder_calls"]),
        ("SAM decoder calls", report["decoder_calls"], report["published_decoder_calls"]),
    ]


def _summary_lines(report: dict) -> list[str]:
    med, sam, gpu = report["medlam"], report["sam"], report["peak_gpu_mb"]
    lines = [
        f"slices segmented {report['slices_segmented']}, boxes "
        f"{report['boxes_prompted']}, organs {report['organs']} ({report['mode']}), "
        f"boxes from {report['boxes']}",
        f"encoder s/call: ours {sam['encoder_seconds_per_call']}, stock "
        f"{sam['stock_encoder_seconds_per_call']}; MedLAM s/patch "
        f"{med['seconds_per_patch']} (width {med['width']})",
        f"CPU seconds (all threads) {report['cpu_seconds_total']:.1f}; "
        f"peak RSS {report['peak_rss_mb']:.0f} MB"
        + (f", peak GPU {gpu:.0f} MB" if gpu is not None else ""),
        f"speedup vs published (estimate): {report['speedup_vs_published']}x; encoder "
        f"calls {report['encoder_call_ratio']}x fewer",
    ]
    if report.get("projected"):
        lines.append(
            f"PROJECTED: the first {report['sampling']['sample_calls_per_kind']} network calls "
            "of each kind ran, the rest were replayed and priced at their measured mean "
            "(medlsam.bench.sampling); counts are the run's"
        )
    m = report["machine"]
    lines.append(
        f"machine: {m['cpu']}, {m['torch_threads']} threads, device {m['device']}"
        + (f" ({m['gpu']})" if "gpu" in m else "")
        + f", torch {m['torch']}; engine MedLAM {report['engine']['medlam']}, SAM encoder "
        f"{report['engine']['sam_encoder']}"
    )
    return lines


def table(report: dict) -> str:
    """The report as the text table the command prints."""
    lines = [f"{'stage':22s} {'ours s':>10s} {'published s (est.)':>20s}"]
    for stage in STAGES:
        lines.append(
            f"{stage:22s} {report['stages'][stage]:10.1f} {report['published_stages'][stage]:20.1f}"
        )
    lines.append(
        f"{'total (wall)':22s} {report['seconds_total']:10.1f} "
        f"{report['published_seconds_estimate']:20.1f}"
    )
    lines += ["", f"{'work':28s} {'ours':>8s} {'published':>10s}"]
    lines += [f"{name:28s} {a:8d} {b:10d}" for name, a, b in _work_rows(report)]
    lines.append("")
    return "\n".join(lines + _summary_lines(report))
