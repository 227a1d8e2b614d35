"""NumPy kernels called from inside XLA:CPU programs, without a Python callback.

A program holding a `jax.pure_callback` (or `buffer_callback`) is run synchronously by XLA:CPU: its
call returns only once it has finished, so the Python dispatch of the next training step can no
longer overlap with this one (measured: 0.2 ms of every 5 ms step of a 1M-weight MLP on a 2-core
machine, even on steps whose callback never runs). A kernel here is instead registered as a typed
XLA FFI handler written with `ctypes` against XLA's stable FFI C API (`xla/ffi/api/c_api.h`, version
0.1): XLA calls it like any custom call, dispatch stays asynchronous, and the kernel reads and writes
XLA's buffers in place. The handler takes the GIL only while it runs. Where the FFI is missing or the
handler does not run (checked once, on a tiny input), the kernel goes through `jax.pure_callback`.
"""

import ctypes
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_API_MAJOR, _API_MINOR = 0, 1  # the FFI version the structs below follow
_METADATA = 1  # XLA_FFI_Extension_Metadata
_EXECUTE = 3  # XLA_FFI_ExecutionStage_EXECUTE
_BUFFER = 1  # XLA_FFI_ArgType_BUFFER and XLA_FFI_RetType_BUFFER
_INTERNAL = 13  # XLA_FFI_Error_Code_INTERNAL
_DTYPES = {1: np.bool_, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.uint8, 7: np.uint16,
           8: np.uint32, 9: np.uint64, 10: np.float16, 11: np.float32, 12: np.float64}


class _Extension(ctypes.Structure):
    pass


_Extension._fields_ = [("struct_size", ctypes.c_size_t), ("type", ctypes.c_int),
                       ("next", ctypes.POINTER(_Extension))]


class _Version(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p),
                ("major", ctypes.c_int), ("minor", ctypes.c_int)]


class _Metadata(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("api_version", _Version), ("traits", ctypes.c_uint32),
                ("state_type_id", ctypes.c_int64)]


class _MetadataExtension(ctypes.Structure):
    _fields_ = [("base", _Extension), ("metadata", ctypes.POINTER(_Metadata))]


class _Buffer(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p), ("dtype", ctypes.c_int),
                ("data", ctypes.c_void_p), ("rank", ctypes.c_int64), ("dims", ctypes.POINTER(ctypes.c_int64))]


class _Operands(ctypes.Structure):  # XLA_FFI_Args and XLA_FFI_Rets share this layout
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p), ("size", ctypes.c_int64),
                ("types", ctypes.POINTER(ctypes.c_int)), ("buffers", ctypes.POINTER(ctypes.c_void_p))]


class _CallFrame(ctypes.Structure):  # the leading fields of XLA_FFI_CallFrame (attributes are not read)
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.POINTER(_Extension)),
                ("api", ctypes.c_void_p), ("ctx", ctypes.c_void_p), ("stage", ctypes.c_int),
                ("args", _Operands), ("rets", _Operands)]


class _ErrorArgs(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p),
                ("message", ctypes.c_char_p), ("errc", ctypes.c_int)]


class _Api(ctypes.Structure):  # the leading fields of XLA_FFI_Api, up to XLA_FFI_Error_Create
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension_start", ctypes.c_void_p), ("api_version", _Version),
                ("internal_api", ctypes.c_void_p),
                ("error_create", ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.POINTER(_ErrorArgs)))]


_HANDLER = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.POINTER(_CallFrame))


def _as_numpy(address: int) -> np.ndarray:
    """The XLA_FFI_Buffer at `address` as a NumPy array over XLA's memory (no copy)."""
    buf = _Buffer.from_address(address)
    shape = tuple(buf.dims[i] for i in range(buf.rank))
    dtype = np.dtype(_DTYPES[buf.dtype])
    size = int(np.prod(shape, dtype=np.int64))
    if size == 0 or not buf.data:
        return np.empty(shape, dtype)
    raw = (ctypes.c_uint8 * (size * dtype.itemsize)).from_address(buf.data)
    return np.frombuffer(raw, dtype).reshape(shape)


def _handler(name: str, kernel: Callable[..., Sequence[Any]]) -> Any:
    def handle(frame_ptr: Any) -> int | None:
        frame = frame_ptr.contents
        if frame.extension_start and frame.extension_start.contents.type == _METADATA:  # XLA asks our version
            meta = ctypes.cast(frame.extension_start, ctypes.POINTER(_MetadataExtension)).contents.metadata.contents
            meta.api_version.major, meta.api_version.minor, meta.traits = _API_MAJOR, _API_MINOR, 0
            return None
        if frame.stage != _EXECUTE:
            return None
        try:
            args, rets = frame.args, frame.rets
            if any(args.types[i] != _BUFFER for i in range(args.size)) or any(
                    rets.types[i] != _BUFFER for i in range(rets.size)):
                raise TypeError("only array operands and results are supported")
            outs = kernel(*(_as_numpy(args.buffers[i]) for i in range(args.size)))
            for i, out in enumerate(outs):
                _as_numpy(rets.buffers[i])[...] = out
            return None
        except BaseException as e:  # an exception must not cross into XLA: report it as an FFI error
            message = f"bmr_eqx host kernel {name!r} failed: {type(e).__name__}: {e}".encode()
            create = _Api.from_address(frame.api).error_create
            return create(ctypes.byref(_ErrorArgs(ctypes.sizeof(_ErrorArgs), None, message, _INTERNAL)))

    return _HANDLER(handle)


_registered: dict[str, Any] = {}  # name -> the ctypes handler, or None where the FFI path failed
_alive: list[Any] = []  # every handler XLA was given, kept alive for the process (XLA holds its address)
_lock = threading.Lock()


def _register(name: str, kernel: Callable[..., Sequence[Any]], probe: Sequence[Any]) -> Any:
    """Register `kernel` as the CPU FFI target `name` and check that XLA runs it on `probe` as NumPy
    does: the ctypes handler, or None (with a warning) where either fails (no FFI in this JAX,
    another FFI version, ...)."""
    want = [np.asarray(w) for w in kernel(*(np.asarray(p) for p in probe))]  # a kernel's own error propagates
    ffi = getattr(jax, "ffi", None)
    if ffi is None or not hasattr(ffi, "register_ffi_target"):
        return None
    handler = _handler(name, kernel)
    try:
        ffi.register_ffi_target(name, ffi.pycapsule(ctypes.cast(handler, ctypes.c_void_p).value), platform="cpu")
        _alive.append(handler)
        cpu = jax.devices("cpu")[0]
        with jax.ensure_compile_time_eval(), jax.transfer_guard("allow"):
            args = [jax.device_put(p, cpu) for p in probe]
            got = ffi.ffi_call(name, tuple(jax.ShapeDtypeStruct(w.shape, w.dtype) for w in want))(*args)
            ok = all(np.array_equal(np.asarray(g), w) for g, w in zip(got, want))
        if not ok:
            raise RuntimeError(f"the custom call gave {got} on the probe, NumPy {want}")
    except Exception as e:
        warnings.warn(f"bmr_eqx: the NumPy kernel {name!r} runs through jax.pure_callback (synchronous dispatch) "
                      f"because its XLA FFI custom call failed: {type(e).__name__}: {e}", RuntimeWarning, stacklevel=3)
        return None
    return handler


def _ffi(name: str, out: Sequence[jax.ShapeDtypeStruct], passthrough: bool) -> Callable[..., Any]:
    """The FFI call of `name` as a function of its operands, returning the results and the first
    operand, passed through in place (an aliased result) if `passthrough`. Under `vmap` the batch
    becomes leading axes of the operands; an operand that is not batched stays as it is (the
    kernel broadcasts it) and, if it is the first, is not passed through, so it is never copied
    once per batch member."""

    @jax.custom_batching.custom_vmap
    def call(*args: Any) -> Any:
        shapes = (*out, jax.ShapeDtypeStruct(np.shape(args[0]), args[0].dtype)) if passthrough else tuple(out)
        results = jax.ffi.ffi_call(name, shapes, input_output_aliases={0: len(out)} if passthrough else None)(*args)
        return tuple(results) if passthrough else (*results, args[0])

    @call.def_vmap
    def batched(axis_size: int, in_batched: Sequence[bool], first: Any, *rest: Any) -> Any:
        rest = [a if b else jnp.broadcast_to(a, (axis_size, *np.shape(a))) for a, b in zip(rest, in_batched[1:])]
        batched_out = [jax.ShapeDtypeStruct((axis_size, *o.shape), o.dtype) for o in out]
        if in_batched[0]:
            return tuple(_ffi(name, batched_out, passthrough)(first, *rest)), (True,) * (len(out) + 1)
        # a size-1 batch axis (no copy), so that the kernel broadcasts it against the others
        results = _ffi(name, batched_out, False)(first[None], *rest)[: len(out)]
        return (*results, first), (*[True] * len(out), False)

    return call


def host_kernel(name: str, kernel: Callable[..., Sequence[Any]], probe: Sequence[Any]) -> Callable[..., Any]:
    """`call(out, *args)`: `kernel(*numpy_args)` run on the CPU inside a jitted program, its results
    (a sequence of arrays broadcastable to the `jax.ShapeDtypeStruct`s `out`) written into XLA's
    result buffers. Under `vmap` the operands get the batch as leading axes (an unbatched one keeps
    its shape), so `kernel` must broadcast over leading axes. `probe` is a small input to check
    the FFI path on, once per process (on first use); a kernel whose FFI registration fails runs
    through `jax.pure_callback` (synchronous dispatch, one copy of the operands), with a warning.

    `call` returns the kernel's results followed by `args[0]`, which the FFI call passes through in
    place (an aliased result): operations that read this output instead of the operand run after
    the kernel, and XLA cannot fold the operand's computation into them, so it is computed once."""

    def call(out: Sequence[jax.ShapeDtypeStruct], *args: Any) -> Any:
        with _lock:
            if name not in _registered:  # once per process; a failed registration is not retried
                _registered[name] = _register(name, kernel, probe)
        if _registered[name] is not None:
            return _ffi(name, out, passthrough=True)(*args)
        results = jax.pure_callback(lambda *a: tuple(np.asarray(r, o.dtype) for r, o in zip(kernel(*a), out)),
                                    tuple(out), *args, vmap_method="expand_dims")
        return (*results, args[0])

    return call
