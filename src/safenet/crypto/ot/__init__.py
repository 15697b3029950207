"""Oblivious transfer: Chou-Orlandi base OTs over ristretto255 seeding IKNP OT extension.

Each party holds one end of a :class:`~safenet.channel.Channel` (run them concurrently)::

    sender = OTSender(chan_a, delta=delta)    receiver = OTReceiver(chan_b)
    sender.send(pairs)  # (m, 2, 2) uint64    receiver.recv(choices)  # -> (m, 2)
    sender.send_correlated(zero_labels)       receiver.recv_correlated(choices)
    pairs = sender.send_random(m)             receiver.recv_random(choices)
"""

from safenet.crypto.ot.base import InvalidPointError, OTError, base_ot_recv, base_ot_send
from safenet.crypto.ot.extension import OTReceiver, OTSender

__all__ = [
    "InvalidPointError",
    "OTError",
    "OTReceiver",
    "OTSender",
    "base_ot_recv",
    "base_ot_send",
]
