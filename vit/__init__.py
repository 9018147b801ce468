"""Vision Transformer experiments (paper §4.1): prune the MLP blocks of torchvision ViTs without
fine-tuning, by a uniform schedule, an adaptive schedule, or analyse their weights.

Modules: ``models`` (torchvision ViT loaders, offline), ``small`` (the embedded digits ViT),
``metrics`` (evaluation, MACs, parameters, timing), ``methods`` (the method registry),
``experiments`` (uniform / adaptive / norm_analysis), ``main`` (CLI), ``parse`` (tables, figures),
``grid`` (the launcher's task list).
"""
