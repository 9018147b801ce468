"""gpt2/data.py and gpt2/tiny.py: blocks, perplexity computed by hand, corpus extraction, tokenizer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gpt2.data import encode, evaluate_perplexity, load_hf_test_text, make_blocks, read_text_file
from gpt2.model import GPT2, GPT2ModelConfig
from gpt2.tiny import _split_of, extract_prose, stdlib_corpus, train_tokenizer


def _model(vocab: int = 23) -> GPT2:
    torch.manual_seed(0)
    model = GPT2(GPT2ModelConfig(vocab_size=vocab, n_positions=8, n_embd=16, n_layer=1, n_head=2)).eval()
    with torch.no_grad():
        model.wte.weight.normal_(0, 1.0)  # peaked predictions: a loss far from log(vocab)
    return model


def test_make_blocks_keeps_a_short_tail():
    ids = torch.arange(19)
    blocks = make_blocks(ids, 8)
    assert [b.numel() for b in blocks] == [8, 8, 3]
    assert torch.equal(torch.cat(blocks), ids)
    assert [b.numel() for b in make_blocks(torch.arange(17), 8)] == [8, 8]  # a 1-token tail predicts nothing
    assert len(make_blocks(ids, 8, max_blocks=2)) == 2
    with pytest.raises(ValueError, match="block_size"):
        make_blocks(ids, 1)


def test_uniform_model_has_perplexity_equal_to_vocabulary():
    model = _model(vocab=23)
    with torch.no_grad():
        model.wte.weight.zero_()  # tied head: every logit is 0
    result = evaluate_perplexity(model, make_blocks(torch.randint(0, 23, (30,)), 8), show_progress=False)
    assert result.perplexity == pytest.approx(23.0, rel=1e-6)
    assert result.loss == pytest.approx(math.log(23), rel=1e-6)
    assert result.tokens == 30 - 4  # 4 blocks (8, 8, 8, 6): one unpredicted first token each


@pytest.mark.parametrize("batch_size", [1, 3])
def test_perplexity_matches_a_loss_computed_by_hand(batch_size):
    model = _model()
    ids = torch.randint(0, 23, (21,), generator=torch.Generator().manual_seed(2))
    got = evaluate_perplexity(model, make_blocks(ids, 8), batch_size=batch_size, show_progress=False)
    # By hand in float64: blocks ids[0:8], ids[8:16], ids[16:21]; each predicts its tokens 1..end.
    model64 = _model().double()
    total, count = 0.0, 0
    for start in (0, 8, 16):
        block = ids[start:start + 8]
        with torch.no_grad():
            logits = model64(block[None, :-1])[0].numpy()
        for t in range(block.numel() - 1):
            z = logits[t]
            lse = z.max() + np.log(np.exp(z - z.max()).sum())
            total += lse - z[int(block[t + 1])]
            count += 1
    assert got.tokens == count == 18 and got.blocks == 3
    assert got.loss == pytest.approx(total / count, rel=1e-5)
    assert got.perplexity == pytest.approx(math.exp(total / count), rel=1e-5)
    assert abs(got.loss - math.log(23)) > 0.2  # far from uniform, so the check is meaningful
    assert got.tokens_per_s > 0


def test_text_file_and_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_text_file(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        read_text_file(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="dataset must be one of"):
        load_hf_test_text("imagenet")


def test_missing_dataset_is_a_clear_offline_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="ptb.*not in the local datasets cache"):
        load_hf_test_text("ptb")


def test_extract_prose_takes_docstrings_and_comments():
    source = '"""Module doc."""\n# a comment\ndef f():\n    """Function doc."""\n    return 1  # trailing\n'
    prose = extract_prose(source)
    for piece in ("Module doc.", "Function doc.", "a comment", "trailing"):
        assert piece in prose
    assert "return" not in prose
    assert extract_prose("def (:\n") == ""


def test_stdlib_corpus_splits_by_file_and_skips_tests(tmp_path):
    (tmp_path / "pkg" / "tests").mkdir(parents=True)
    names = [f"mod{i}.py" for i in range(200)]
    for name in names:
        (tmp_path / "pkg" / name).write_text(f'"""Docs of {name}."""\n')
    (tmp_path / "pkg" / "tests" / "test_x.py").write_text('"""Hidden test doc."""\n')
    corpus = stdlib_corpus(tmp_path)
    assert "Hidden" not in "".join(corpus.values())
    for name in names:
        assert f"Docs of {name}." in corpus[_split_of(f"pkg/{name}")]
    assert corpus["test"] and corpus["train"]


def test_tokenizer_round_trips_text():
    text = "Return the number of items. Raise ValueError when the input is empty.\n\n" * 20
    tokenizer = train_tokenizer(text, 300)
    ids = encode(tokenizer, text)
    assert ids.dtype == torch.long and 0 < ids.numel() < len(text)
    assert tokenizer.decode(ids.tolist()) == text


def test_transformers_tokenizer_gives_the_same_ids(monkeypatch, tmp_path):
    from transformers import PreTrainedTokenizerFast

    from gpt2.model import load_hf_tokenizer

    text = "Close the stream. Flush the buffer before closing the stream.\n\n" * 10
    tokenizer = train_tokenizer(text, 280)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer)
    assert torch.equal(encode(wrapped, text), encode(tokenizer, text))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="gpt2-not-a-real-model"):
        load_hf_tokenizer("gpt2-not-a-real-model", cache_dir=tmp_path)


def test_binary_text_file_is_a_clear_error(tmp_path):
    from gpt2.data import read_text_file

    path = tmp_path / "weights.bin"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x80")
    with pytest.raises(ValueError, match=r"--text-file .*weights\.bin.*UTF-8"):
        read_text_file(path)
