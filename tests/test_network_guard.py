import socket

import pytest

from tests.conftest import NetworkAccessError


def test_network_is_refused():
    with pytest.raises(NetworkAccessError):
        socket.create_connection(("example.com", 80), timeout=1)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with pytest.raises(NetworkAccessError):
        s.connect(("127.0.0.1", 9))
    s.close()


def test_hubs_are_offline():
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"
