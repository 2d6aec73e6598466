"""Run pynetdicom's storescu app with TCP_NODELAY set on its socket.

pynetdicom 3.0 never sets TCP_NODELAY and reads no environment variable for
it, so this module wraps the socket factory of
``pynetdicom.transport.AssociationSocket`` before it calls the unchanged app
(``pynetdicom.apps.storescu.storescu.main``). Linux keeps the option when it
is set before ``connect``. Run it as ``python -m perf.pynetdicom_storescu``
with the app's own arguments.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from pynetdicom import transport
from pynetdicom.apps.storescu import storescu

_create_socket = transport.AssociationSocket._create_socket


def _create_nodelay_socket(self: Any, address: Any) -> socket.socket:
    sock = _create_socket(self, address)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


setattr(transport.AssociationSocket, "_create_socket", _create_nodelay_socket)

if __name__ == "__main__":
    sys.exit(storescu.main(sys.argv[1:]))
