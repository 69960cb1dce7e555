"""Figures of a run, drawn with matplotlib (Agg, no display) and written as PNG files.

* :mod:`~medlsam.figures.colors`: one colour per organ, the same in every figure of a run;
* :mod:`~medlsam.figures.planes`: axial, coronal and sagittal planes of a volume in the
  radiological convention with square millimetre pixels, masks tinted and outlined;
* :mod:`~medlsam.figures.sheet`: a figure laid out in pixels (images, text, boxes, legend);
* :mod:`~medlsam.figures.overview`: one figure per case, three planes through each organ's box;
* :mod:`~medlsam.figures.organ`: one organ on its largest slice with its box prompts;
* :mod:`~medlsam.figures.plots`: per-organ box plots, and several runs side by side;
* :mod:`~medlsam.figures.page`: the self-contained HTML page of a run's report.

Nothing here reads a model or changes matplotlib's global state: figures are
:class:`matplotlib.figure.Figure` objects on their own Agg canvas, never ``pyplot``.
"""
