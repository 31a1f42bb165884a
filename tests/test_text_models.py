"""labkit.models for text: ``gru`` maps padded token ids (B, L) to logits (B, num_classes), ignores padding,
trains, and sits in TEXT_MODELS (not MODELS, whose models take float tensors)."""
import pytest
import torch
from torch import nn

from labkit.models import MODELS, TEXT_MODELS, build_model
from labkit.text import pad

VOCAB = 50


def batch():
    generator = torch.Generator().manual_seed(0)
    sequences = [torch.randint(2, VOCAB, (n,), generator=generator) for n in (5, 1, 9, 3)]
    return sequences, pad(sequences)  # (4, 9)


def test_gru_gives_logits_and_backward_reaches_every_parameter():
    torch.manual_seed(0)
    model = build_model("gru", (VOCAB,), 2)
    _sequences, tokens = batch()
    logits = model(tokens)
    assert logits.shape == (4, 2)
    nn.functional.cross_entropy(logits, torch.tensor([0, 1, 0, 1])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_gru_output_does_not_depend_on_extra_padding():
    torch.manual_seed(0)
    model = build_model("gru", (VOCAB,), 2).eval()
    sequences, tokens = batch()
    with torch.no_grad():
        tight = model(tokens)
        wide = model(pad(sequences, width=40))                       # 31 more pad tokens per row
        alone = torch.cat([model(s.unsqueeze(0)) for s in sequences])  # each sequence without any padding
    torch.testing.assert_close(wide, tight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(alone, tight, rtol=1e-5, atol=1e-6)


def test_gru_is_a_text_model_with_vocab_size_as_input_shape():
    assert "gru" in TEXT_MODELS and "gru" not in MODELS
    assert build_model("gru", (VOCAB,), 3).embed.num_embeddings == VOCAB
    with pytest.raises(ValueError, match=r"model 'gru' accepts token ids: input_shape=\(vocab_size,\).*"
                                         r"got input_shape=\(1, 28, 28\)"):
        build_model("gru", (1, 28, 28), 2)
    with pytest.raises(ValueError, match="unknown model 'lstm': expected one of .*conv1d, gru"):
        build_model("lstm", (VOCAB,), 2)
