"""DICOM TLS (PS3.15 Annex B): settings and the SSL context built from them.

The settings are plain paths, so they pickle into the sender processes.
Each process builds its own ``ssl.SSLContext`` from them, because a context
does not pickle.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """How to secure each association with TLS.

    ``ca_file`` contains the certificates that may sign the receiver's; None
    uses the system's. ``cert_file`` and ``key_file`` are our certificate and
    its private key (PEM), which most DICOM receivers require.
    ``verify_peer`` False skips checking the receiver's certificate and host
    name: the connection is then encrypted but not authenticated.
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify_peer: bool = True


def validate_tls(
    enabled: bool,
    ca_file: str | os.PathLike[str] | None,
    cert_file: str | os.PathLike[str] | None,
    key_file: str | os.PathLike[str] | None,
    verify_peer: bool,
) -> TlsSettings | None:
    """Return the TLS settings, or None when TLS is off; raise ValueError if invalid."""
    paths = {"tls_ca_file": ca_file, "tls_cert_file": cert_file,
             "tls_key_file": key_file}
    # Any TLS option turns TLS on; --tls-no-verify alone must not send in
    # plain text while the user believes the link is encrypted.
    if not enabled and not any(paths.values()) and verify_peer:
        return None
    for option, path in paths.items():
        if path is not None and not os.path.isfile(path):
            raise ValueError(
                f"Invalid {option} '{os.fspath(path)}': the file does not exist"
            )
    if key_file is not None and cert_file is None:
        raise ValueError(
            "Invalid tls_key_file: a private key needs its certificate in "
            "tls_cert_file"
        )
    settings = TlsSettings(
        ca_file=os.fspath(ca_file) if ca_file is not None else None,
        cert_file=os.fspath(cert_file) if cert_file is not None else None,
        key_file=os.fspath(key_file) if key_file is not None else None,
        verify_peer=bool(verify_peer),
    )
    build_context(settings)  # fail now on a bad certificate or key
    return settings


def build_context(settings: TlsSettings) -> ssl.SSLContext:
    """Build the client-side SSL context for ``settings``.

    Raises
    ------
    ValueError
        If a certificate, key or CA file cannot be loaded; the message names it.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if settings.ca_file is not None:
            context.load_verify_locations(cafile=settings.ca_file)
        if settings.cert_file is not None:
            context.load_cert_chain(settings.cert_file, settings.key_file)
    except (ssl.SSLError, OSError) as exc:
        hint = "give PEM files, the key without a password"
        if settings.cert_file is not None and settings.key_file is None:
            hint = ("if the private key is in a file of its own, give it with "
                    "tls_key_file")
        raise ValueError(
            f"Invalid TLS certificate or key ({settings.cert_file or settings.ca_file}"
            f"): {exc}; {hint}"
        ) from exc
    if not settings.verify_peer:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
