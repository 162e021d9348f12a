"""Saving and restoring with parallel channels (libvirt's ``sparse`` image format, QEMU's
mapped-ram with multifd), or in an image format asked for (``image_format``), through
virDomainSaveParams and virDomainRestoreParams.

Only ``hypervisor`` calls ``save`` and ``restore``; they raise ``libvirt.libvirtError`` like the
binding does, and ``hypervisor`` translates it. Anything else that goes wrong on this path (ctypes,
a binding that changed: a capsule of another name, a missing symbol, a type it refuses) is raised
as ``ChannelsFailed``: the caller saves or restores in one stream instead, never gives up on the
guest for it.

Why not simply ``virDomain.saveParams``: libvirt-python before 12.1 has no type hint for
``parallel.channels`` and sends a Python int as an unsigned long long, which libvirt refuses
("invalid type 'ullong' for parameter 'parallel.channels', expected 'int'"); so does a later
one built against libvirt older than 11.2. With such a binding the call is made through the C library the binding itself has loaded (ctypes), the
parameter added as the int libvirt expects.

Why always with ``file``: libvirt has no managed save with parameters (no
virDomainManagedSaveParams), and virDomainSaveParams without ``file``, which does a managed
save, leaves the guest locked inside the daemon afterwards (up to at least 11.3: that branch of
qemuDomainSaveParams returns before releasing the domain), so every later call about it hangs.
A persistent guest is therefore saved to the file its managed save would use: libvirt resumes
from that file when the guest is started (it looks for the file, not for its own mark), and
marks it as a managed-save image when the daemon starts again (every host boot). Until then
libvirt's hasManagedSaveImage says no; ``hypervisor`` looks at the file too.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re

import libvirt

FIRST_TYPED_BINDING = (12, 1)  # libvirt-python sends parallel.channels as an int
SPARSE = "sparse"
_FILE, _FORMAT, _CHANNELS = "file", "image_format", "parallel.channels"


class ChannelsFailed(Exception):
    """The channels path failed in a way libvirt did not report: not libvirt's refusal, but this
    code's or the binding's (its message says what was raised)."""


def binding_problem() -> str | None:
    """Why this binding cannot save with channels, or None when it can (itself, or through
    the C library)."""
    if binding_types_channels() or _library() is not None:
        return None
    return ("this libvirt-python sends parallel.channels with the wrong type (fixed in 12.1) and "
            "the libvirt library cannot be called directly")


@functools.cache
def binding_version() -> tuple[int, ...] | None:
    """libvirt-python's (major, minor), from its metadata: the directory beside the module when
    there is exactly one (what a pass asks on every connection; importlib.metadata, which costs
    a tenth of a pass's start-up to import and search sys.path, only when there is not)."""
    here = os.path.dirname(libvirt.__file__)
    try:
        found = [m for m in map(_METADATA_DIR.fullmatch, os.listdir(here)) if m]
    except OSError:
        found = []
    try:
        if len(found) == 1:
            text = found[0].group(1)
        else:
            import importlib.metadata

            text = importlib.metadata.version("libvirt-python")
        return tuple(int(part) for part in text.split(".")[:2])
    except (ImportError, ValueError):  # PackageNotFoundError is an ImportError
        return None


_METADATA_DIR = re.compile(r"libvirt_python-([0-9][^-]*?)\.(?:dist-info|egg-info)")


def binding_types_channels() -> bool:
    """True when libvirt-python sends ``parallel.channels`` as the int libvirt expects: from 12.1
    on, and only when built against libvirt 11.2 or later, whose headers define the parameter
    (the binding's constant for it comes from the same headers); else it guesses an ullong."""
    version = binding_version()
    return (version is not None and version >= FIRST_TYPED_BINDING
            and hasattr(libvirt, "VIR_DOMAIN_SAVE_PARAM_PARALLEL_CHANNELS"))


def save(domain: libvirt.virDomain, path: str, channels: int, flags: int, image_format: str = SPARSE) -> None:
    """Save ``domain`` to ``path`` in ``image_format`` (sparse: with ``channels`` channels; any
    other format: in one stream, ``channels`` 1), and stop it. Raises libvirt.libvirtError, or
    ChannelsFailed for anything else."""
    with _unexpected_as_failed("virDomainSaveParams"):
        params = {_FILE: path, _FORMAT: image_format}
        if channels == 1 and hasattr(domain, "saveParams"):  # strings only: any binding types them right
            domain.saveParams(params, flags)
            return
        if binding_types_channels():
            domain.saveParams({**params, _CHANNELS: channels}, flags)
            return
        _call_with_params("virDomainSaveParams", _pointer(domain, b"virDomainPtr"), channels, flags, path,
                          image_format=image_format)


def restore(conn: libvirt.virConnect, path: str, channels: int, flags: int) -> None:
    """Restore the guest saved to ``path`` (sparse) reading with ``channels`` channels. Raises
    libvirt.libvirtError, or ChannelsFailed for anything else."""
    with _unexpected_as_failed("virDomainRestoreParams"):
        if binding_types_channels():
            conn.restoreParams({_FILE: path, _CHANNELS: channels}, flags)
            return
        _call_with_params("virDomainRestoreParams", _pointer(conn, b"virConnectPtr"), channels, flags, path,
                          image_format=None)


@contextlib.contextmanager
def _unexpected_as_failed(function: str):
    """libvirt's own errors as they are; any other exception as ChannelsFailed."""
    try:
        yield
    except libvirt.libvirtError:
        raise
    except Exception as error:  # noqa: BLE001 - whatever it is, one stream is the way on
        raise ChannelsFailed(f"{function} through {'the binding' if binding_types_channels() else 'ctypes'} "
                             f"raised {error!r}") from error


_LIB: list = []


def _library():
    """The C library the binding uses (already loaded: dlopen finds the same one), or None."""
    import ctypes

    if not _LIB:
        try:
            # By its soname, as the binding's module was linked: find_library would run ldconfig.
            lib = ctypes.CDLL("libvirt.so.0")
            for name in ("virDomainSaveParams", "virDomainRestoreParams"):
                call = getattr(lib, name)
                call.restype = ctypes.c_int
                call.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint]
            pointers = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p]
            lib.virTypedParamsAddInt.argtypes = [*pointers, ctypes.c_int]
            lib.virTypedParamsAddString.argtypes = [*pointers, ctypes.c_char_p]
            lib.virTypedParamsFree.argtypes = [ctypes.c_void_p, ctypes.c_int]
        except Exception:  # noqa: BLE001 - no library (or a strange one): no channels, one stream
            lib = None
        _LIB.append(lib)
    return _LIB[0]


def _pointer(obj, name: bytes) -> int:
    """The C pointer inside a binding object (its ``_o`` is a capsule of that name)."""
    import ctypes

    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return get(obj._o, name)


def _call_with_params(function: str, target: int, channels: int, flags: int, path: str,
                      *, image_format: str | None) -> None:
    import ctypes  # only with a binding that cannot send the channels itself

    lib = _library()
    if lib is None:
        raise libvirt.libvirtError(f"{function}: the libvirt library cannot be called directly")
    params, count, room = ctypes.c_void_p(), ctypes.c_int(0), ctypes.c_int(0)
    refs = (ctypes.byref(params), ctypes.byref(count), ctypes.byref(room))
    try:
        ok = channels == 1 or lib.virTypedParamsAddInt(*refs, _CHANNELS.encode(), channels) == 0
        if ok and image_format:
            ok = lib.virTypedParamsAddString(*refs, _FORMAT.encode(), image_format.encode()) == 0
        if ok:
            ok = lib.virTypedParamsAddString(*refs, _FILE.encode(), path.encode()) == 0
        if not ok:
            raise libvirt.libvirtError(f"{function}: cannot build its parameters")
        # ctypes lets go of the GIL for the call: other guests' saves go on meanwhile.
        if getattr(lib, function)(target, params, count, flags) < 0:
            # libvirtError reads the error libvirt left for this thread, as the binding does.
            raise libvirt.libvirtError(f"{function}() failed")
    finally:
        lib.virTypedParamsFree(params, count)
