"""Text as token-id sequences of different lengths: ``load("sms-spam") -> TextData``.

    >>> from labkit import text
    >>> d = text.load("sms-spam")
    >>> d
    TextData('sms-spam', train=4460, test=1114, classes=('ham', 'spam'), vocab=3879, length 1..200 (mean 19.9))
    >>> d.x_train[0]               # 1-D int64 tensor of token ids, 0 = padding, 1 = unknown word
    >>> text.lengths(d.x_train)    # (N,) tokens per message: the quantity the batchers in labkit.buckets group by

The SMS Spam Collection (Almeida, Gómez Hidalgo and Yamakami 2011, UCI) holds 5574 messages, 4827 ham and
747 spam, as ``label<TAB>text`` lines without a header, in ``sms-spam/SMSSpamCollection`` under
``labkit.data.data_root()``. When the root is the cache (neither ``root=`` nor ``LABKIT_DATA`` given) and
the file is missing, ``load`` downloads the UCI zip (``SMS_URL``), checks the extracted file's sha256
(``SMS_SHA256``) and keeps it there; an explicit root is never written to. It is split into train and test
per class (stratified, seeded), so both keep the 13.4 % share of spam.

Tokens are words: the lower-cased text cut by the regex ``TOKEN`` into runs of letters and digits (with an
optional ``'s``-style suffix) and single punctuation marks or symbols, so "£1.50!" gives £ 1 . 50 !. The
vocabulary is built from the *training* messages only: a token seen fewer than ``min_count`` times there, or
only in the test set, maps to ``UNK``. Chapter: Sequence-length batching.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import urllib.request
import zipfile
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence

from labkit.checks import check_float, check_int
from labkit.data import cache_dir, data_root

PAD, UNK = 0, 1  # reserved token ids: padding (ignored by the models), a word outside the vocabulary
TOKEN = re.compile(r"\w+(?:'\w+)?|[^\w\s]")  # a word (digits count) or one punctuation mark / symbol


def tokenize(message: str) -> list[str]:
    """The lower-cased word and symbol tokens of one message, in order."""
    return TOKEN.findall(message.lower())


@dataclass(frozen=True, repr=False)
class Vocab:
    """Token strings by id: ``tokens[0]`` is "<pad>", ``tokens[1]`` "<unk>", then by decreasing count."""
    tokens: tuple[str, ...]

    @classmethod
    def build(cls, messages, min_count: int = 2) -> Vocab:
        """The vocabulary of the tokens that occur at least ``min_count`` times in ``messages``; ties in
        count are ordered alphabetically, so the same messages always give the same ids."""
        min_count = check_int("min_count", min_count, low=1)
        counts = Counter(token for message in messages for token in tokenize(message))
        kept = sorted((token for token, n in counts.items() if n >= min_count), key=lambda t: (-counts[t], t))
        return cls(("<pad>", "<unk>", *kept))

    def __post_init__(self):
        object.__setattr__(self, "_ids", {token: i for i, token in enumerate(self.tokens)})

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, message: str) -> list[int]:
        return [self._ids.get(token, UNK) for token in tokenize(message)]

    def decode(self, ids) -> str:
        return " ".join(self.tokens[i] for i in ids if i != PAD)

    def __repr__(self) -> str:
        return f"Vocab({len(self)} tokens: {', '.join(self.tokens[2:8])}, ...)"


@dataclass(frozen=True, eq=False, repr=False)
class TextData:
    """A text classification dataset as token-id sequences (lists of 1-D int64 tensors, lengths ≥ 1).

    ``input_shape`` is ``(vocab_size,)``, what ``labkit.models.build_model`` needs for a text model:
    ``build_model("gru", d.input_shape, d.num_classes)``.
    """
    name: str
    x_train: list[torch.Tensor]
    y_train: torch.Tensor
    x_test: list[torch.Tensor]
    y_test: torch.Tensor
    vocab: Vocab
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int]:
        return (len(self.vocab),)

    def subset(self, n_train: int, n_test: int, seed: int = 0) -> TextData:
        """``n_train`` training and ``n_test`` test messages drawn without replacement (seeded), in dataset
        order; the vocabulary stays that of the full training set (quick mode)."""
        generator = torch.Generator().manual_seed(check_int("seed", seed, low=0))

        def sample(x, y, n):
            index = torch.randperm(len(y), generator=generator)[:n].sort().values
            return [x[i] for i in index.tolist()], y[index]

        x_train, y_train = sample(self.x_train, self.y_train, check_int("n_train", n_train, low=1,
                                                                        high=len(self.y_train)))
        x_test, y_test = sample(self.x_test, self.y_test, check_int("n_test", n_test, low=1, high=len(self.y_test)))
        return replace(self, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)

    def __repr__(self) -> str:
        n = lengths(self.x_train)
        return (f"TextData({self.name!r}, train={len(self.x_train)}, test={len(self.x_test)}, "
                f"classes={self.classes}, vocab={len(self.vocab)}, "
                f"length {n.min().item()}..{n.max().item()} (mean {n.float().mean().item():.1f}))")


def check_sequences(sequences) -> list[torch.Tensor]:
    """``sequences`` as a list after checking it is a non-empty list (or tuple) of 1-D integer token tensors.
    A padded (N, L) tensor is refused: its padding would count as tokens."""
    if isinstance(sequences, torch.Tensor) or not isinstance(sequences, (list, tuple)):
        shape = f" of shape {tuple(sequences.shape)}" if isinstance(sequences, torch.Tensor) else ""
        raise TypeError(f"sequences is a {type(sequences).__name__}{shape}: expected a list of 1-D token "
                        f"tensors, one per sample (unpadded), e.g. TextData.sequences")
    if not sequences:
        raise ValueError("sequences is empty: expected at least one 1-D token tensor")
    for i, seq in enumerate(sequences):
        if not isinstance(seq, torch.Tensor) or seq.ndim != 1 or seq.dtype.is_floating_point:
            what = f"a {seq.ndim}-D {seq.dtype} tensor" if isinstance(seq, torch.Tensor) else type(seq).__name__
            raise TypeError(f"sequences[{i}] is {what}: expected a 1-D integer tensor of token ids")
    return list(sequences)


def lengths(sequences: list[torch.Tensor]) -> torch.Tensor:
    """(N,) int64: the number of tokens in each sequence."""
    return torch.tensor([len(s) for s in check_sequences(sequences)], dtype=torch.long)


def pad(sequences: list[torch.Tensor], width: int | None = None) -> torch.Tensor:
    """(N, width) int64: the sequences left-aligned, filled with ``PAD`` on the right; ``width`` defaults to
    the longest sequence and may not be shorter than it."""
    sequences = check_sequences(sequences)
    longest = max(len(s) for s in sequences)
    width = longest if width is None else check_int("width", width, low=longest)
    padded = pad_sequence(list(sequences), batch_first=True, padding_value=PAD)  # (N, longest)
    return torch.nn.functional.pad(padded, (0, width - longest), value=PAD)


# -- datasets -------------------------------------------------------------------------------------------
SMS_FILE = "sms-spam/SMSSpamCollection"
SMS_URL = "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"  # UCI dataset 228
# sha256 of the zip's member SMSSpamCollection (477907 bytes, md5 1949b64a…, ../shared/datasets/SOURCES.md)
SMS_SHA256 = "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d"


def fetch(url: str) -> bytes:
    """The bytes at ``url`` (an HTTP GET, 60 s timeout). Tests replace it: nothing else touches the network."""
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


def download_sms(folder) -> Path:
    """Download the UCI zip, extract ``SMSSpamCollection`` into ``folder/sms-spam/`` (atomically) after
    checking its sha256, and return its path. Any failure is one ``RuntimeError`` that gives the URL."""
    path = Path(folder) / SMS_FILE
    by_hand = (f"download {SMS_URL} yourself, unzip its SMSSpamCollection into {path.parent}, or set "
               f"LABKIT_DATA to a folder that holds {SMS_FILE}")
    try:
        with zipfile.ZipFile(io.BytesIO(fetch(SMS_URL))) as archive:
            content = archive.read("SMSSpamCollection")
    except (OSError, zipfile.BadZipFile, KeyError) as error:  # URLError and timeouts are OSErrors
        raise RuntimeError(f"dataset 'sms-spam': the download of {SMS_URL} failed ({error}); {by_hand}") from None
    digest = hashlib.sha256(content).hexdigest()
    if digest != SMS_SHA256:
        raise RuntimeError(f"dataset 'sms-spam': SMSSpamCollection from {SMS_URL} has sha256 {digest}, expected "
                           f"{SMS_SHA256} (a changed or damaged file); {by_hand}")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_bytes(content)
    partial.replace(path)  # atomic: a parallel reader never sees half a file
    return path


def read_sms(root) -> tuple[list[str], list[str]]:
    """(labels, messages) from the UCI file: one ``label<TAB>text`` per line; quotes are plain characters.
    Downloaded into the cache when missing there (``download_sms``)."""
    folder = data_root(root)
    path = folder / SMS_FILE
    if not path.exists() and folder == cache_dir():
        download_sms(folder)
    if not path.exists():
        raise FileNotFoundError(
            f"dataset 'sms-spam': {path} not found; expected the UCI file SMSSpamCollection (label<TAB>text "
            f"lines) from {SMS_URL} in {path.parent}. Unzip it there, or set LABKIT_DATA to a folder that holds "
            f"{SMS_FILE} (leave root= and LABKIT_DATA unset to download it into {cache_dir()})")
    labels, messages = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        label, tab, message = line.partition("\t")
        if not tab or label not in ("ham", "spam"):
            raise ValueError(f"{path} line {number}: {line[:40]!r} is not 'ham<TAB>text' or 'spam<TAB>text'")
        labels.append(label)
        messages.append(message)
    return labels, messages


_READERS = {"sms-spam": read_sms}  # each: root -> (labels, messages)
DATASETS = tuple(_READERS)


def load(name: str = "sms-spam", root: str | os.PathLike | None = None, *, test_fraction: float = 0.2,
         seed: int = 0, min_count: int = 2, max_length: int | None = 200) -> TextData:
    """The dataset ``name`` (one of ``DATASETS``) split, tokenised and encoded on the CPU.

    Args:
        root: where to look for the files (see ``labkit.data.data_root``).
        test_fraction: share of each class held out for testing, rounded per class.
        seed: seeds the split; the same seed gives the same split everywhere.
        min_count: a training token becomes a vocabulary entry when it occurs at least this often.
        max_length: keep the first ``max_length`` tokens of a longer message (None: keep all).
    """
    if name not in _READERS:
        raise ValueError(f"unknown text dataset {name!r}: expected one of {', '.join(DATASETS)}")
    test_fraction = check_float("test_fraction", test_fraction, low=0, high=1, low_open=True, high_open=True)
    if max_length is not None:
        max_length = check_int("max_length", max_length, low=1)
    label_names, messages = _READERS[name](root)
    classes = tuple(sorted(set(label_names)))
    y = torch.tensor([classes.index(label) for label in label_names])
    train, test = stratified_split(y, test_fraction, seed)
    vocab = Vocab.build([messages[i] for i in train], min_count)

    def encode(index):
        return [torch.tensor(vocab.encode(messages[i])[:max_length], dtype=torch.long) for i in index]

    return TextData(name, encode(train), y[train], encode(test), y[test], vocab, classes)


def stratified_split(y: torch.Tensor, test_fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) indices, each in increasing order: from every class c with n_c samples,
    round(test_fraction · n_c) drawn at random (seeded) go to test, the rest to train."""
    generator = torch.Generator().manual_seed(check_int("seed", seed, low=0))
    test = []
    for c in torch.unique(y).tolist():
        members = torch.nonzero(y == c).flatten()
        test.append(members[torch.randperm(len(members), generator=generator)[:round(test_fraction * len(members))]])
    is_test = torch.zeros(len(y), dtype=torch.bool)
    is_test[torch.cat(test)] = True
    return torch.nonzero(~is_test).flatten(), torch.nonzero(is_test).flatten()
