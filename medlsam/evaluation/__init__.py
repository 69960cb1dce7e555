"""Evaluation: scores predictions on disk against labels; never imports a model.

``metrics`` (Dice, HD95, ...), ``box_metrics`` (box IoU and hit rates), ``case`` (one case's
table), ``folder`` (``evaluate`` over a folder of predictions), ``report`` (CSV/JSON/plots).
"""
