"""The binding's own guarantees (csrc/python): arguments are range-checked,
never truncated or wrapped."""
import pytest

import gnr


# -------------------------------------------------------------- ranges --

@pytest.fixture
def restore_threads():
    before = gnr.build_info()["threads"]
    yield before
    gnr.set_num_threads(before)


def test_thread_count_beyond_c_int_is_refused(restore_threads):
    with pytest.raises((ValueError, OverflowError), match="num_threads"):
        gnr.set_num_threads(2**32 + 1)  # would be 1 thread if cut to 32 bits
    assert gnr.build_info()["threads"] == restore_threads
