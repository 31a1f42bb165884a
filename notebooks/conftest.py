"""nbval on the chapters: a chapter that reads a dataset this machine does not have is skipped, with the
reason, instead of failing (the SMS Spam Collection is read from the data root: LABKIT_DATA, which make and
CI set to ../shared/datasets, or the user cache, where labkit.text downloads it)."""
import pytest

from labkit.data import data_root

NEEDS = {"sequences.ipynb": "sms-spam/SMSSpamCollection"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        need = NEEDS.get(item.path.name)
        if need and not (data_root() / need).exists():
            item.add_marker(pytest.mark.skip(reason=f"needs {need} under the data root {data_root()} (LABKIT_DATA)"))
