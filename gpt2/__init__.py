"""GPT-2 QK-dimension and MLP pruning with perplexity evaluation (paper §4.2); see gpt2/README.md."""
