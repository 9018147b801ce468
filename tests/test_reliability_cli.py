"""Command lines refuse impossible input at parsing time with one clear message (issue 14: items 4, 5, 9, 12)."""

from __future__ import annotations

import dataclasses

import pytest

from engine.harness import config_parser, parse_config


@dataclasses.dataclass
class _PercentConfig:
    stages: int = dataclasses.field(default=10, metadata={"help": "keep 100%, then down to 100/stages %"})
    label: str = "50%"


def test_help_with_percent_signs_renders():
    text = config_parser(_PercentConfig).format_help()
    assert "keep 100%, then down to 100/stages %" in text and "(default: 50%)" in text


@pytest.mark.parametrize("module", ["params.analysis:ParamsConfig", "params.vgg:VGGConfig", "main:CNNConfig"])
def test_entry_point_help_renders(module):
    import importlib

    mod_name, cls_name = module.split(":")
    cls = getattr(importlib.import_module(mod_name), cls_name)
    text = config_parser(cls).format_help()
    assert "--seed" in text or "--stages" in text
