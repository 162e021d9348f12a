"""The one place that looks at libvirt's error codes: every ``libvirt.libvirtError`` becomes one of
mgsave's own errors here, and libvirt's own printing of errors is switched off once."""

from __future__ import annotations

import libvirt

from libmgsave import untrusted
from libmgsave.errors import (
    GuestGone,
    HypervisorError,
    HypervisorUnavailable,
    OperationRefused,
    OperationTimeout,
)

# Codes that mean "the daemon is not there (any more)": worth reconnecting and retrying.
# A system error is only a lost connection when the RPC layer reports it: the same code also
# carries I/O failures of the operation itself (ENOSPC while saving), which are refusals.
_UNAVAILABLE_CODES = {libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_RPC}
_UNAVAILABLE_DOMAINS = {libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE}
_GONE_CODES = {libvirt.VIR_ERR_NO_DOMAIN}
_TIMEOUT_CODES = {libvirt.VIR_ERR_OPERATION_ABORTED, libvirt.VIR_ERR_OPERATION_TIMEOUT}


def _silence_default_error_printing() -> None:
    # libvirt prints every error to stderr by default; we report them ourselves, once.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


_silence_default_error_printing()


def translate_error(error: libvirt.libvirtError, doing: str) -> HypervisorError:
    """Map a libvirtError to mgsave's error for it; ``doing`` says what we were attempting."""
    code = error.get_error_code()
    # libvirt's text carries a guest's, an agent's or a peer's: escaped and bounded once, here, so
    # that every record, summary and log line holds the same safe text.
    message = untrusted.message(f"{doing}: {error.get_error_message() or error}")
    if code in _GONE_CODES:
        return GuestGone(message, code=code)
    if code in _UNAVAILABLE_CODES or error.get_error_domain() in _UNAVAILABLE_DOMAINS:
        return HypervisorUnavailable(
            message, hint="is the libvirt daemon running? (systemctl status libvirtd)", code=code
        )
    if code in _TIMEOUT_CODES:
        return OperationTimeout(message, code=code)
    return OperationRefused(message, code=code)


def unavailable(error: HypervisorError) -> HypervisorUnavailable:
    """libvirt.open reports a missing daemon socket as a generic failure: any failure to connect
    counts as "unavailable", so that the caller may retry."""
    if isinstance(error, HypervisorUnavailable):
        return error
    return HypervisorUnavailable(error.message, hint="is the libvirt daemon running?", code=error.code)
