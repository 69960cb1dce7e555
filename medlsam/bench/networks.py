"""The benchmark's localizer and segmenter, built from a config as a run builds them.

The localizer comes from :func:`medlsam.pipeline.setup.build_localizer` (settings from the config,
with the benchmark's overrides applied to the config first); only its network may be given: a
random-weight MedLAM when the config names no checkpoint, and, with ``--sample``, the same
network wrapped in a :class:`~medlsam.bench.sampling.SampledNetwork`. The SAM segmenter is
:func:`medlsam.segment.build_segmenter`'s when the config names a checkpoint, else a published-size
SAM with random weights (timing does not depend on them).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medlsam.bench.sampling import SampledNetwork, Sampler, medlam_key
from medlsam.config import Config
from medlsam.localization.engine import EngineMedLAM, with_engine
from medlsam.localization.localizer import Localizer
from medlsam.localization.network import build_medlam
from medlsam.pipeline.setup import build_localizer
from medlsam.segment import BoxSegmenter, SamSegmenter, build_segmenter
from medlsam.segment.engine import EngineEncoder
from medlsam.segment.fast import accelerate_image_encoder, restore_image_encoder


@dataclass
class Networks:
    """What a benchmark run times, and where its weights came from."""

    localizer: Localizer
    segmenter: BoxSegmenter
    random_medlam: bool
    random_sam: bool
    sampler: Sampler | None = None

    @property
    def runner(self) -> Any:
        """What runs MedLAM: the network, or an engine's :class:`EngineMedLAM` (under any
        sampling wrapper)."""
        model = self.localizer.model
        return model.network if isinstance(model, SampledNetwork) else model

    @property
    def medlam(self) -> Any:
        """The MedLAM network itself (under any engine or sampling wrapper)."""
        runner = self.runner
        return runner.model if isinstance(runner, EngineMedLAM) else runner


def bench_config(cfg: Config, args: argparse.Namespace) -> Config:
    """``cfg`` with the command line's overrides: MedLAM localization (the benchmark times the
    network), ``--mss-share-mm``, ``--medlam-precision``, ``--engine`` and ``--sam-precision``."""
    data = cfg.data
    if args.mss_share_mm is not None:
        data = dataclasses.replace(data, mss_share_mm=args.mss_share_mm)
    run = cfg.run
    if args.medlam_precision:
        run = dataclasses.replace(run, medlam_precision=args.medlam_precision)
    if args.engine:
        run = dataclasses.replace(run, engine=args.engine)
    vit = cfg.vit
    if args.sam_precision:
        vit = dataclasses.replace(vit, precision=args.sam_precision)
    localize = dataclasses.replace(cfg.localize, method="medlam", chosen_by="benchmark")
    return dataclasses.replace(cfg, data=data, run=run, vit=vit, localize=localize)


def _sam_segmenter(cfg: Config, device: str, sam_model: Any = None) -> tuple[BoxSegmenter, bool]:
    """The config's SAM from its checkpoint, else ``sam_model`` or a published-size SAM with
    random weights; and whether the weights are random."""
    vit_ckpt = cfg.weight.vit_load_path
    engine = cfg.run.engine
    if vit_ckpt is not None and Path(vit_ckpt).is_file():
        return build_segmenter(cfg.vit, vit_ckpt, device, engine=engine), False
    if sam_model is None:
        from segment_anything import sam_model_registry

        sam_model = sam_model_registry[cfg.vit.net_type]()
    name = f"sam_{cfg.vit.net_type}"
    precision = cfg.vit.precision
    return SamSegmenter(sam_model, device, name=name, precision=precision, engine=engine), True


def build_networks(
    cfg: Config, args: argparse.Namespace, device: str, sam_model: Any = None
) -> Networks:
    """MedLAM (checkpoint, or random of ``--medlam-width``) in the config's localizer, and the
    SAM segmenter with the ``--encoder`` chosen, both run by ``[run] engine`` (``--engine``; an
    exported graph is exported or read before any timing); with ``--sample N`` every network is
    wrapped in one :class:`Sampler`. ``sam_model``: the SAM used when the config names no
    checkpoint (default: a published-size one of ``[vit] net_type``)."""
    medlam_ckpt = cfg.weight.medlam_load_path
    random_medlam = medlam_ckpt is None or not Path(medlam_ckpt).is_file()
    network: Any = build_medlam(
        None if random_medlam else medlam_ckpt,
        device,
        base_chns=args.medlam_width if random_medlam else None,
    )
    network = with_engine(network, cfg.run.engine, device)
    if isinstance(network, EngineMedLAM):  # exported (or read from the cache) before timing
        network.prepare(tuple(cfg.data.feature_scale_ls))
    segmenter, random_sam = _sam_segmenter(cfg, device, sam_model)
    if isinstance(segmenter, SamSegmenter):
        if args.encoder == "fast":
            accelerate_image_encoder(segmenter.model)
        else:
            restore_image_encoder(segmenter.model)
        if isinstance(segmenter.encoder, EngineEncoder):
            segmenter.encoder.graph()
    sampler = None
    if args.sample:
        cuda = device.startswith("cuda")
        sampler = Sampler(args.sample, cuda, always=frozenset({medlam_key(True, ())}))
        network = SampledNetwork(network, sampler, "medlam")
        if isinstance(segmenter, SamSegmenter):
            segmenter.encoder = SampledNetwork(segmenter.encoder, sampler, "sam_encoder", "encoder")
            segmenter.decoder = SampledNetwork(segmenter.decoder, sampler, "sam_decoder", "decoder")
    localizer = build_localizer(cfg, device, network=network)
    return Networks(localizer, segmenter, random_medlam, random_sam, sampler)
