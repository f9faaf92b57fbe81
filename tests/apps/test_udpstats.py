"""udp_receive_drops counts what a full receive buffer of this process's sockets lost."""

from __future__ import annotations

import socket

from callclient.apps.udpstats import udp_receive_drops


def test_drops_of_an_unread_socket_are_counted_and_add_up_with_what_was_queued() -> None:
    before = udp_receive_drops()
    assert before is not None
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a few datagrams
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        sent = 300
        for index in range(sent):
            sender.sendto(index.to_bytes(4, "big") * 100, receiver.getsockname())
        queued = 0
        while True:
            try:
                receiver.recv(2048)
            except BlockingIOError:
                break
            queued += 1
        dropped = udp_receive_drops()
        assert dropped is not None
        # Loopback delivers synchronously: every datagram was either queued or dropped.
        assert 0 < queued < sent
        assert dropped - before == sent - queued
    finally:
        receiver.close()
        sender.close()
    # A closed socket is no longer this process's: its drops leave the sum.
    assert udp_receive_drops() == before
