"""The hyper-parameter analysis of the paper's §4.3 as a rerunnable script.

``python -m params.main --dataset digits`` trains (or reuses) N small LeNet-style models,
prunes their hidden Linear layers in stages with every method and hyper-parameter setting,
and writes CSVs, figures with 95 % confidence bands and a Markdown summary. See
``params/README.md``.
"""
