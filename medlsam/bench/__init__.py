"""Time MedLSAM stage by stage and compare it with the work the published code would do.

Usage::

    python -m medlsam.bench                      # WORD-like case: 512x512x200 at
                                                 # 0.8x0.8x2.5 mm, 16 organs, 5 supports, SPL
    python -m medlsam.bench --quick              # small case, minutes on 2 CPU cores
    python -m medlsam.bench --config X.txt       # the first query of a config
    python -m medlsam.bench --sample 2           # first 2 network calls of each kind, rest replayed
    python -m medlsam.bench --json report.json --device cuda

What runs is the library's own pipeline, built as a run builds it: the localizer from
:func:`medlsam.pipeline.setup.build_localizer`, ``Localizer.fit``, :func:`~medlsam.pipeline.case.
run_case` and :func:`~medlsam.pipeline.outputs.write_case`, with the real-size SAM image encoder
(ViT-B unless the config names another) and MedLAM; networks without a checkpoint get random
weights, which is fine for timing. With random MedLAM weights the predicted boxes mean nothing,
so the segmentation stage then uses boxes from the query's labels, split into as many SPL
sub-boxes as the localizer gave (``--boxes``; reported), and the relative-distance step is
replaced by the query's true organ points (what a trained MedLAM would find), so that the
distinct and shared refinement patches are counted where real use would have them
(:mod:`medlsam.bench.labels`). Work counts then do not depend on weights.

Nothing is patched: seconds come from the counters and timers the stages keep (the localizer's
and the segmenter's ``stats``) and from the benchmark's clock around the calls it makes
(:mod:`medlsam.bench.stages`); ``--sample`` wraps the networks it hands to the stages
(:mod:`medlsam.bench.sampling`).

Reported, as a table and (``--json``) a JSON file:

* wall seconds per stage: read, preprocess (MedLAM resampling of supports and query),
  prototypes, localization, slice preprocessing, encoder, decoder, assembly, write; CPU seconds
  of the whole run;
* work: MedLAM forward passes and patches, SAM encoder and decoder calls, slices segmented,
  peak RSS (``getrusage``, taken before the published-cost measurements below), peak GPU memory;
* the published work on the same boxes, priced with costs measured in this run
  (:mod:`medlsam.bench.published`): ``published_seconds_estimate`` is a lower bound of the
  published time, and ``speedup_vs_published`` = estimate / ``seconds_total`` a conservative
  ratio.

Modules: :mod:`~medlsam.bench.case` (the synthetic case), :mod:`~medlsam.bench.networks` (build),
:mod:`~medlsam.bench.labels` (label guidance), :mod:`~medlsam.bench.stages` (run and time),
:mod:`~medlsam.bench.sampling` (``--sample``), :mod:`~medlsam.bench.published` (price the
published pattern), :mod:`~medlsam.bench.report` (report and table),
:mod:`~medlsam.bench.options` (command line), :mod:`~medlsam.bench.run` (one run).
"""
