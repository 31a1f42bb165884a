"""API inputs that used to pass silently or fail with an unclear message: each is now one clear error that
names the bad value and what is allowed."""
import pytest
import torch

import labkit.strategies as s
from labkit import text
from labkit.batching import DeviceBatcher
from labkit.buckets import RandomBatcher
from labkit.experiments import parse_run
from labkit.train import TrainConfig

TOKENS = [torch.tensor([3, 4, 5]), torch.tensor([6, 7])]


@pytest.mark.parametrize("make, error, words", [
    (lambda: TrainConfig(eval_batch=0).checked(), ValueError, "eval_batch=0"),
    (lambda: DeviceBatcher(torch.zeros(0, 1, 4, 4), torch.zeros(0, dtype=torch.long)), ValueError, "empty"),
    (lambda: s.build("epoch", milestones=[1, 2]), TypeError, r"milestones=\[1, 2\] must map an epoch"),
    (lambda: parse_run("epoch:milestones=5>x"), ValueError, "EPOCH>BATCH pairs"),
    (lambda: text.pad([]), ValueError, "sequences is empty"),
    (lambda: text.lengths(torch.zeros(4, 6, dtype=torch.long)), TypeError, r"shape \(4, 6\)"),
    (lambda: RandomBatcher(torch.zeros(4, 6, dtype=torch.long), torch.zeros(4, dtype=torch.long)), TypeError,
     "list of 1-D token tensors"),
    (lambda: text.pad([torch.tensor([1.5, 2.0])]), TypeError, r"sequences\[0\] is a 1-D torch.float32"),
    (lambda: text.pad([torch.zeros(2, 3, dtype=torch.long)]), TypeError, r"sequences\[0\] is a 2-D"),
])
def test_bad_input_is_one_clear_error(make, error, words):
    with pytest.raises(error, match=words):
        make()


def test_good_sequences_still_pad_and_measure():
    assert text.pad(TOKENS).tolist() == [[3, 4, 5], [6, 7, text.PAD]]
    assert text.lengths(tuple(TOKENS)).tolist() == [3, 2]
