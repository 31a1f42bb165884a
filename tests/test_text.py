"""labkit.text: the SMS Spam Collection's counts and split, a vocabulary from the training set only,
truncation, padding, the errors, and the download into the cache (with a stand-in for the network). The
real-data tests skip when the data root (``LABKIT_DATA``) lacks the file."""
from collections import Counter

import pytest
import torch

from labkit import data, text

SMS_TOY = "ham\tOk lar... see you\nspam\tFREE entry! Text WIN to 8\nham\tok see you later\n" * 5


@pytest.fixture(scope="module")
def sms():
    if not (data.data_root() / text.SMS_FILE).exists():
        pytest.skip(f"{text.SMS_FILE} not found under {data.data_root()}")
    return text.load("sms-spam")


def test_sms_counts_and_stratified_split(sms):
    y = torch.cat([sms.y_train, sms.y_test])
    assert sms.classes == ("ham", "spam")
    assert len(y) == 5574 and torch.bincount(y).tolist() == [4827, 747]
    assert torch.bincount(sms.y_test).tolist() == [round(0.2 * 4827), round(0.2 * 747)]  # 965, 149
    assert len(sms.x_train) == len(sms.y_train) and len(sms.x_test) == len(sms.y_test)
    assert sms.input_shape == (len(sms.vocab),) and sms.num_classes == 2


def test_vocabulary_comes_from_the_training_messages_only(sms):
    labels, messages = text.read_sms(None)
    train, test = text.stratified_split(torch.tensor([sms.classes.index(label) for label in labels]), 0.2, seed=0)
    train_counts = Counter(token for i in train.tolist() for token in text.tokenize(messages[i]))
    assert all(train_counts[token] >= 2 for token in sms.vocab.tokens[2:])      # min_count=2, on train
    assert {t for t, n in train_counts.items() if n >= 2} == set(sms.vocab.tokens[2:])
    test_only = {token for i in test.tolist() for token in text.tokenize(messages[i])} - set(train_counts)
    assert len(test_only) > 100
    assert all(sms.vocab.encode(word) == [text.UNK] for word in test_only)


def test_split_is_seeded_and_stratified():
    y = torch.tensor([0] * 80 + [1] * 20)
    train, test = text.stratified_split(y, 0.25, seed=3)
    assert torch.equal(torch.sort(torch.cat([train, test])).values, torch.arange(100))
    assert torch.bincount(y[test]).tolist() == [20, 5]
    assert torch.equal(test, text.stratified_split(y, 0.25, seed=3)[1])
    assert not torch.equal(test, text.stratified_split(y, 0.25, seed=4)[1])


def test_a_word_only_in_the_test_split_is_unknown(tmp_path):
    (tmp_path / "sms-spam").mkdir()
    (tmp_path / "sms-spam" / "SMSSpamCollection").write_text(SMS_TOY + "ham\tzebra zebra zebra\n", encoding="utf-8")
    y = torch.tensor([0, 1, 0] * 5 + [0])
    seed = next(s for s in range(100) if 15 in text.stratified_split(y, 0.5, seed=s)[1])  # zebra goes to test
    d = text.load("sms-spam", root=tmp_path, test_fraction=0.5, seed=seed)
    assert len(d.x_train) + len(d.x_test) == 16 and torch.bincount(d.y_test).tolist() == [6, 2]
    assert "zebra" not in d.vocab.tokens and "see" in d.vocab.tokens
    assert [text.UNK] * 3 in [sequence.tolist() for sequence in d.x_test]


def test_tokenizer_and_vocabulary():
    assert text.tokenize("FREE £1.50! Don't") == ["free", "£", "1", ".", "50", "!", "don't"]
    vocab = text.Vocab.build(["b a b", "a c"], min_count=2)
    assert vocab.tokens == ("<pad>", "<unk>", "a", "b")  # c seen once; ties by count then alphabet
    assert vocab.encode("A b c zebra") == [2, 3, text.UNK, text.UNK]
    assert vocab.decode([2, 3, text.PAD]) == "a b"


def test_truncation_and_padding(tmp_path):
    (tmp_path / "sms-spam").mkdir()
    (tmp_path / "sms-spam" / "SMSSpamCollection").write_text(SMS_TOY, encoding="utf-8")
    d = text.load(root=tmp_path, max_length=3)
    assert text.lengths(d.x_train).max().item() == 3
    padded = text.pad([torch.tensor([5, 6]), torch.tensor([7])], width=4)
    assert padded.tolist() == [[5, 6, 0, 0], [7, 0, 0, 0]]
    with pytest.raises(ValueError, match="width=1 is out of range.*>= 2"):
        text.pad([torch.tensor([5, 6])], width=1)


def test_errors_name_the_folder_and_the_bad_value(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "sms-spam")):
        text.load("sms-spam", root=tmp_path)
    (tmp_path / "sms-spam").mkdir()
    (tmp_path / "sms-spam" / "SMSSpamCollection").write_text("ham\tok\nmaybe\tspam?\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: 'maybe\\\\tspam\\?' is not"):
        text.load(root=tmp_path)
    with pytest.raises(ValueError, match="unknown text dataset 'imdb': expected one of sms-spam"):
        text.load("imdb")
    with pytest.raises(ValueError, match="test_fraction=1 is out of range"):
        text.load(root=tmp_path, test_fraction=1)


def test_subset_keeps_the_vocabulary_and_dataset_order(sms):
    small = sms.subset(100, 30, seed=1)
    assert len(small.x_train) == len(small.y_train) == 100 and len(small.x_test) == 30
    assert small.vocab is sms.vocab and small.input_shape == sms.input_shape
    rows = {tuple(s.tolist()) for s in sms.x_train}
    assert all(tuple(s.tolist()) in rows for s in small.x_train)
    with pytest.raises(ValueError, match="n_train=5000 is out of range"):
        sms.subset(5000, 30)


# -- the download into the cache (no network: ``text.fetch`` is replaced by a zip built here) ----------------
def uci_zip(content: bytes) -> bytes:
    """A zip laid out like the UCI one: ``SMSSpamCollection`` and a readme at the top level."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("SMSSpamCollection", content)
        archive.writestr("readme", "SMS Spam Collection v.1\n")
    return buffer.getvalue()


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """No root, no LABKIT_DATA: the data root is an empty cache folder."""
    monkeypatch.delenv("LABKIT_DATA", raising=False)
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_missing_file_in_the_cache_is_downloaded_and_checked(empty_cache, monkeypatch):
    import hashlib

    content = SMS_TOY.encode()
    urls = []
    monkeypatch.setattr(text, "fetch", lambda url: urls.append(url) or uci_zip(content))
    monkeypatch.setattr(text, "SMS_SHA256", hashlib.sha256(content).hexdigest())
    d = text.load("sms-spam")
    assert urls == [text.SMS_URL] and (empty_cache / text.SMS_FILE).read_bytes() == content
    assert len(d.y_train) + len(d.y_test) == 15
    text.load("sms-spam")
    assert len(urls) == 1  # the second load reads the kept copy
    assert [p.name for p in (empty_cache / "sms-spam").iterdir()] == ["SMSSpamCollection"]  # no partial file


def test_the_checksum_is_that_of_the_shared_copy():
    import hashlib

    path = data.data_root() / text.SMS_FILE
    if not path.exists():
        pytest.skip(f"{text.SMS_FILE} not found under {data.data_root()}")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == text.SMS_SHA256


def test_a_download_with_the_wrong_checksum_is_refused_and_not_kept(empty_cache, monkeypatch):
    monkeypatch.setattr(text, "fetch", lambda url: uci_zip(SMS_TOY.encode()))
    with pytest.raises(RuntimeError, match=r"has sha256 [0-9a-f]{64}, expected 7d039a24.*"
                                           + text.SMS_URL.replace("+", r"\+")):
        text.load("sms-spam")
    assert not (empty_cache / "sms-spam").exists() or not any((empty_cache / "sms-spam").iterdir())


def test_a_failed_download_is_one_message_with_the_url(empty_cache, monkeypatch):
    import urllib.error

    def offline(url):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(text, "fetch", offline)
    with pytest.raises(RuntimeError) as error:
        text.load("sms-spam")
    message = str(error.value)
    assert message.count(text.SMS_URL) == 2 and "name resolution" in message and "\n" not in message
    assert f"unzip its SMSSpamCollection into {empty_cache / 'sms-spam'}" in message


def test_an_explicit_root_is_never_downloaded_into(tmp_path, monkeypatch):
    monkeypatch.setattr(text, "fetch", lambda url: pytest.fail("no download into an explicit root"))
    with pytest.raises(FileNotFoundError, match=f"{text.SMS_URL.replace('+', '.')}.*LABKIT_DATA"):
        text.load("sms-spam", root=tmp_path)


def test_a_zip_without_the_file_is_one_message_with_the_url(empty_cache, monkeypatch):
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme", "no data here\n")
    for payload in (buffer.getvalue(), b"<html>not a zip</html>"):
        monkeypatch.setattr(text, "fetch", lambda url, payload=payload: payload)
        with pytest.raises(RuntimeError, match=r"the download of .*sms\+spam\+collection\.zip failed"):
            text.load("sms-spam")
