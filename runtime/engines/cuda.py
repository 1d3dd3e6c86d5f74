"""CUDA through the driver API (``libcuda.so.1``) with ctypes: devices, streams, device memory, CUDA graphs.

The TensorRT backend needs device memory, a stream and (optionally) CUDA graphs, and nothing else from CUDA. The
NVIDIA driver ships the driver API with every GPU, so this module needs no CUDA toolkit, cuda-python or PyTorch:
only ``libcuda.so.1`` (``nvcuda.dll`` on Windows). Where that library or a GPU is missing, :func:`driver_status`
says so in a sentence and everything else raises :class:`~diffrt.runtime.errors.BackendUnavailable` with it.

Work runs in each device's *primary* context, the one the CUDA runtime API (and so TensorRT) uses, so pointers and
streams made here are valid in TensorRT calls. Contexts are current per thread: every call here makes its device's
context current first, so objects may be used from any thread (one thread at a time per object).

Host <-> device copies go through a page-locked ("pinned") staging area that each :class:`DeviceBuffer` keeps, which
makes them truly asynchronous on a stream and lets a CUDA graph capture them (a captured copy reads the staging area
when the graph is replayed, so new host data is written there before each replay).
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BackendUnavailable, ConfigError, DiffrtError

LIBRARY = "nvcuda.dll" if os.name == "nt" else "libcuda.so.1"

CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76
CU_STREAM_NON_BLOCKING = 1
CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1
CUDA_ERROR_NO_DEVICE = 100

_ptr = ctypes.c_void_p
_size = ctypes.c_size_t
_dptr = ctypes.c_uint64  # CUdeviceptr
_int = ctypes.c_int
_uint = ctypes.c_uint
# Every driver function used here, with its argument types; all return CUresult (int).
_PROTOTYPES: dict[str, tuple[Any, ...]] = {
    "cuInit": (_uint,),
    "cuDriverGetVersion": (ctypes.POINTER(_int),),
    "cuGetErrorName": (_int, ctypes.POINTER(ctypes.c_char_p)),
    "cuGetErrorString": (_int, ctypes.POINTER(ctypes.c_char_p)),
    "cuDeviceGetCount": (ctypes.POINTER(_int),),
    "cuDeviceGet": (ctypes.POINTER(_int), _int),
    "cuDeviceGetName": (ctypes.c_char_p, _int, _int),
    "cuDeviceGetAttribute": (ctypes.POINTER(_int), _int, _int),
    "cuDeviceTotalMem_v2": (ctypes.POINTER(_size), _int),
    "cuDevicePrimaryCtxRetain": (ctypes.POINTER(_ptr), _int),
    "cuCtxSetCurrent": (_ptr,),
    "cuMemAlloc_v2": (ctypes.POINTER(_dptr), _size),
    "cuMemFree_v2": (_dptr,),
    "cuMemAllocHost_v2": (ctypes.POINTER(_ptr), _size),
    "cuMemFreeHost": (_ptr,),
    "cuMemcpyHtoDAsync_v2": (_dptr, _ptr, _size, _ptr),
    "cuMemcpyDtoHAsync_v2": (_ptr, _dptr, _size, _ptr),
    "cuMemcpyDtoDAsync_v2": (_dptr, _dptr, _size, _ptr),
    "cuStreamCreate": (ctypes.POINTER(_ptr), _uint),
    "cuStreamSynchronize": (_ptr,),
    "cuStreamDestroy_v2": (_ptr,),
    "cuStreamBeginCapture_v2": (_ptr, _int),
    "cuStreamEndCapture": (_ptr, ctypes.POINTER(_ptr)),
    "cuGraphInstantiateWithFlags": (ctypes.POINTER(_ptr), _ptr, ctypes.c_ulonglong),
    "cuGraphLaunch": (_ptr, _ptr),
    "cuGraphExecDestroy": (_ptr,),
    "cuGraphDestroy": (_ptr,),
}

__all__ = [
    "CudaError",
    "CudaGraph",
    "Device",
    "DeviceBuffer",
    "Stream",
    "device",
    "device_count",
    "driver_status",
]


class CudaError(DiffrtError, RuntimeError):
    """A CUDA driver call that failed: ``call`` is the function, ``code``/``error`` CUDA's error number and name."""

    def __init__(self, call: str, code: int, error: str, description: str, doing: str = "") -> None:
        self.call, self.code, self.error, self.description = call, code, error, description
        where = f" while {doing}" if doing else ""
        super().__init__(f"{call} failed{where}: {error} ({description}).")


# ----- the library ------------------------------------------------------------------------------------------------
class _Driver:
    """``libcuda`` loaded once per process, with prototypes set and ``cuInit`` done; or why that failed."""

    def __init__(self) -> None:
        self.lib: ctypes.CDLL | None = None
        self.problem: str | None = None
        self.version = 0
        self.lock = threading.Lock()
        self.loaded = False

    def load(self) -> ctypes.CDLL:
        if not self.loaded:
            with self.lock:
                if not self.loaded:
                    self._load()
                    self.loaded = True
        if self.lib is None:
            raise BackendUnavailable(self.problem or "the NVIDIA driver could not be loaded")
        return self.lib

    def _load(self) -> None:
        try:
            lib = ctypes.CDLL(LIBRARY)
        except OSError as error:
            self.problem = (
                f"{LIBRARY} not found: no NVIDIA driver on this machine ({error}); TensorRT needs an NVIDIA GPU "
                "with its driver installed"
            )
            return
        missing = []
        for name, argtypes in _PROTOTYPES.items():
            try:
                function = getattr(lib, name)
            except AttributeError:
                missing.append(name)
                continue
            function.argtypes = argtypes
            function.restype = _int
        if missing:
            self.problem = (
                f"the NVIDIA driver's {LIBRARY} lacks {', '.join(missing)}: it is too old; install an NVIDIA driver "
                "for CUDA 11.4 or later"
            )
            return
        self.lib = lib  # set before cuInit so its error message can be looked up
        code = lib.cuInit(0)
        if code != 0:
            self.lib = None
            name, description = _error_text(lib, code)
            if code == CUDA_ERROR_NO_DEVICE:
                self.problem = f"no CUDA device: the NVIDIA driver sees no GPU ({name}: {description})"
            else:
                self.problem = f"the NVIDIA driver did not start: cuInit returned {name} ({description})"
            return
        version = _int()
        if lib.cuDriverGetVersion(ctypes.byref(version)) == 0:
            self.version = version.value


_DRIVER = _Driver()


def _error_text(lib: ctypes.CDLL, code: int) -> tuple[str, str]:
    name, text = ctypes.c_char_p(), ctypes.c_char_p()
    if lib.cuGetErrorName(code, ctypes.byref(name)) != 0 or not name.value:
        return f"CUDA error {code}", "unknown error code"
    lib.cuGetErrorString(code, ctypes.byref(text))
    return name.value.decode(), (text.value or b"no description").decode()


def _call(function: str, *args: Any, doing: str = "") -> None:
    """Call the driver ``function``; a failure raises CudaError naming it, CUDA's error and ``doing``."""
    lib = _DRIVER.load()
    code = getattr(lib, function)(*args)
    if code != 0:
        name, description = _error_text(lib, code)
        raise CudaError(function, code, name, description, doing)


def driver_status() -> tuple[bool, str]:
    """Whether CUDA can be used here, and a sentence saying why not (or what there is)."""
    try:
        _DRIVER.load()
        count = device_count()
    except (BackendUnavailable, CudaError) as error:
        return False, str(error).rstrip(".")
    if count == 0:
        return False, "no CUDA device: the NVIDIA driver sees no GPU"
    major, minor = divmod(_DRIVER.version, 1000)
    return True, f"NVIDIA driver for CUDA {major}.{minor // 10}, {count} CUDA device{'s' if count > 1 else ''}"


def device_count() -> int:
    count = _int()
    _call("cuDeviceGetCount", ctypes.byref(count), doing="counting CUDA devices")
    return count.value


# ----- devices ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Device:
    """One GPU: its index, name, compute capability (major, minor) and memory in bytes."""

    index: int
    name: str
    compute_capability: tuple[int, int]
    total_memory: int

    @property
    def sm(self) -> str:
        """The architecture tag plans are filed under: ``sm90`` for compute capability 9.0."""
        return f"sm{self.compute_capability[0]}{self.compute_capability[1]}"

    def activate(self) -> None:
        """Make this device's primary context current on the calling thread (retained on first use)."""
        context = _CONTEXTS.get(self.index)
        if context is None:
            with _CONTEXT_LOCK:
                context = _CONTEXTS.get(self.index)
                if context is None:
                    handle = _ptr()
                    _call(
                        "cuDevicePrimaryCtxRetain",
                        ctypes.byref(handle),
                        _handle(self.index),
                        doing=f"opening device {self.index}",
                    )
                    context = _CONTEXTS[self.index] = handle
        _call("cuCtxSetCurrent", context, doing=f"selecting device {self.index}")

    def __str__(self) -> str:
        cc = ".".join(map(str, self.compute_capability))
        return f"CUDA device {self.index} ({self.name}, compute capability {cc}, {self.total_memory / 2**30:.1f} GiB)"


# Primary contexts stay retained for the life of the process: the CUDA runtime (TensorRT) shares them.
_CONTEXTS: dict[int, _ptr] = {}
_CONTEXT_LOCK = threading.Lock()
_DEVICES: dict[int, Device] = {}


def _handle(index: int) -> int:
    handle = _int()
    _call("cuDeviceGet", ctypes.byref(handle), index, doing=f"opening device {index}")
    return handle.value


def device(index: int = 0) -> Device:
    """The CUDA device ``index``; BackendUnavailable when there is no driver, no GPU or no device of that index."""
    if index in _DEVICES:
        return _DEVICES[index]
    usable, reason = driver_status()
    if not usable:
        raise BackendUnavailable(reason + ".")
    count = device_count()
    if not (isinstance(index, int) and 0 <= index < count):
        raise BackendUnavailable(
            f"CUDA device {index!r} does not exist; this machine has {count} (indices 0 to {count - 1})."
        )
    handle = _handle(index)
    name = ctypes.create_string_buffer(256)
    _call("cuDeviceGetName", name, len(name), handle, doing=f"reading the name of device {index}")
    cc = []
    for attribute in (CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR):
        value = _int()
        _call("cuDeviceGetAttribute", ctypes.byref(value), attribute, handle, doing=f"querying device {index}")
        cc.append(value.value)
    memory = _size()
    _call("cuDeviceTotalMem_v2", ctypes.byref(memory), handle, doing=f"querying device {index}")
    found = Device(index, name.value.decode(errors="replace"), (cc[0], cc[1]), memory.value)
    return _DEVICES.setdefault(index, found)


def _as_device(where: Device | int) -> Device:
    return where if isinstance(where, Device) else device(where)


# ----- streams ----------------------------------------------------------------------------------------------------
class Stream:
    """A CUDA stream of one device (non-blocking: it does not wait for the legacy default stream).

    ``handle`` is the ``CUstream`` as an int, what TensorRT's ``execute_async_v3`` takes.
    """

    def __init__(self, where: Device | int = 0) -> None:
        self.device = _as_device(where)
        self.device.activate()
        handle = _ptr()
        _call("cuStreamCreate", ctypes.byref(handle), CU_STREAM_NON_BLOCKING, doing="creating a stream")
        self._handle: int | None = handle.value or 0
        self.generation = 0
        """Counts synchronizations; copies queued before the current value are known to be done."""
        self.capturing = False

    @property
    def handle(self) -> int:
        if self._handle is None:
            raise ConfigError("this CUDA stream was closed; create a new Stream.")
        return self._handle

    def synchronize(self) -> None:
        """Wait until all work queued on the stream has finished."""
        handle = self.handle
        self.device.activate()
        _call("cuStreamSynchronize", _ptr(handle), doing="waiting for a stream")
        self.generation += 1

    def close(self) -> None:
        """Destroy the stream (work already queued still completes); further use raises."""
        handle, self._handle = self._handle, None
        if handle is not None and _DRIVER.lib is not None:
            self.device.activate()
            _call("cuStreamDestroy_v2", _ptr(handle), doing="destroying a stream")

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown or a broken context: nothing to report to
            pass

    def __repr__(self) -> str:
        state = "closed" if self._handle is None else hex(self._handle)
        return f"Stream(device={self.device.index}, {state})"


def _stream_handle(stream: Stream | None) -> _ptr:
    return _ptr(stream.handle if stream is not None else 0)


# ----- memory -----------------------------------------------------------------------------------------------------
class DeviceBuffer:
    """``nbytes`` of device memory, with a pinned host staging area of the same size for copies.

    :meth:`copy_from` / :meth:`copy_to` move NumPy arrays (any dtype, any shape, 0-d included) through the staging
    area. Without a stream they are synchronous. With a stream they are queued and return at once: :meth:`copy_to`
    then returns a view of the staging area that holds the data once the stream is synchronized, and is overwritten
    by the next copy through this buffer. A copy into the staging area first waits for an earlier queued copy of this
    buffer that may still read it. Arrays smaller than the buffer use its first bytes; larger ones are refused.

    Copies without a stream are synchronous for the host but not ordered after work queued on other streams
    (streams here do not wait for the default stream): synchronize those first. The staging area is allocated with
    the buffer; ``staging=False`` defers it to the first host copy (which must then not happen during a capture).
    """

    def __init__(self, nbytes: int, where: Device | int = 0, staging: bool = True) -> None:
        if not (isinstance(nbytes, (int, np.integer)) and nbytes >= 0):
            raise ConfigError(f"DeviceBuffer size {nbytes!r} is not accepted; give a byte count (int >= 0).")
        self.device = _as_device(where)
        self.nbytes = int(nbytes)
        self._ptr: int | None = 0
        self._host_ptr = 0
        self._host: np.ndarray | None = None
        self._pending: tuple[Stream, int] | None = None
        if self.nbytes:
            self.device.activate()
            pointer = _dptr()
            _call(
                "cuMemAlloc_v2",
                ctypes.byref(pointer),
                self.nbytes,
                doing=f"allocating {self.nbytes} bytes on device {self.device.index}",
            )
            self._ptr = pointer.value
        if staging:  # now rather than at first use, which may be inside a graph capture (where it is refused)
            self._host = self._allocate_host()

    @classmethod
    def from_array(cls, array: np.ndarray, where: Device | int = 0, stream: Stream | None = None) -> DeviceBuffer:
        """A buffer the size of ``array`` holding its bytes."""
        array = np.asarray(array)
        buffer = cls(array.nbytes, where)
        buffer.copy_from(array, stream)
        return buffer

    @property
    def ptr(self) -> int:
        """The device address (``CUdeviceptr``) as an int; 0 for an empty buffer."""
        if self._ptr is None:
            raise ConfigError(f"this DeviceBuffer ({self.nbytes} bytes) was freed; allocate a new one.")
        return self._ptr

    # -- the staging area
    def host(self, shape: Sequence[int] | int | None = None, dtype: Any = np.uint8) -> np.ndarray:
        """The pinned staging area as a NumPy array (by default all of it as bytes). Writes to it reach the device
        with :meth:`upload`; :meth:`download` fills it from the device."""
        self.ptr  # noqa: B018 - refuses a freed buffer
        if self._host is None:
            self._host = self._allocate_host()
        dtype = np.dtype(dtype)
        if shape is None:
            shape = self.nbytes // dtype.itemsize
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self._check_fits(nbytes, f"a {dtype.name} array of shape {shape}")
        return self._host[:nbytes].view(dtype).reshape(shape)

    def _allocate_host(self) -> np.ndarray:
        if not self.nbytes:
            return np.empty(0, np.uint8)
        self.device.activate()
        pointer = _ptr()
        _call(
            "cuMemAllocHost_v2",
            ctypes.byref(pointer),
            self.nbytes,
            doing=f"allocating {self.nbytes} bytes of pinned host memory",
        )
        self._host_ptr = pointer.value or 0
        return np.ctypeslib.as_array((ctypes.c_uint8 * self.nbytes).from_address(self._host_ptr))

    def _check_fits(self, nbytes: int, what: str) -> None:
        if nbytes > self.nbytes:
            raise ConfigError(
                f"{what} ({nbytes} bytes) does not fit this DeviceBuffer of {self.nbytes} bytes; "
                "allocate a buffer at least that large."
            )

    def _wait_for_staging(self) -> None:
        """Before the host side of the staging area changes: wait for a queued copy that may still use it."""
        if self._pending is not None:
            stream, generation = self._pending
            self._pending = None
            if stream.generation == generation and stream._handle is not None:
                stream.synchronize()

    def _queued(self, stream: Stream | None) -> None:
        if stream is None:
            _call("cuStreamSynchronize", _ptr(0), doing="waiting for a copy")
        elif not stream.capturing:  # a captured copy runs only when the graph is launched
            self._pending = (stream, stream.generation)

    # -- copies
    def upload(self, stream: Stream | None = None, nbytes: int | None = None) -> None:
        """Copy the staging area's first ``nbytes`` (default: all) to the device."""
        nbytes = self.nbytes if nbytes is None else nbytes
        self._check_fits(nbytes, "the upload")
        if not nbytes:
            return
        self.host()
        self.device.activate()
        _call(
            "cuMemcpyHtoDAsync_v2",
            _dptr(self.ptr),
            _ptr(self._host_ptr),
            nbytes,
            _stream_handle(stream),
            doing=f"copying {nbytes} bytes to device {self.device.index}",
        )
        self._queued(stream)

    def download(self, stream: Stream | None = None, nbytes: int | None = None) -> None:
        """Copy the device memory's first ``nbytes`` (default: all) into the staging area."""
        nbytes = self.nbytes if nbytes is None else nbytes
        self._check_fits(nbytes, "the download")
        if not nbytes:
            return
        self.host()
        self._wait_for_staging()
        self.device.activate()
        _call(
            "cuMemcpyDtoHAsync_v2",
            _ptr(self._host_ptr),
            _dptr(self.ptr),
            nbytes,
            _stream_handle(stream),
            doing=f"copying {nbytes} bytes from device {self.device.index}",
        )
        self._queued(stream)

    def copy_from(self, array: np.ndarray, stream: Stream | None = None) -> None:
        """Copy ``array``'s bytes (C order) to the start of the buffer."""
        array = np.asarray(array)
        self._check_fits(array.nbytes, f"a {array.dtype.name} array of shape {array.shape}")
        if not array.nbytes:
            self.ptr  # noqa: B018 - refuses a freed buffer
            return
        staging = self.host()
        self._wait_for_staging()
        staging[: array.nbytes] = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        self.upload(stream, array.nbytes)

    def copy_to(self, shape: Sequence[int] | int, dtype: Any, stream: Stream | None = None) -> np.ndarray:
        """The buffer's first bytes as an array of ``shape`` and ``dtype``: a new array without a stream, a view
        of the staging area (valid once ``stream`` is synchronized) with one."""
        view = self.host(shape, dtype)
        self.download(stream, view.nbytes)
        return view.copy() if stream is None else view

    def copy_from_device(self, source: DeviceBuffer, stream: Stream | None = None, nbytes: int | None = None) -> None:
        """Copy ``nbytes`` (default: all of ``source``) from another buffer's device memory into this one's."""
        nbytes = source.nbytes if nbytes is None else nbytes
        self._check_fits(nbytes, "the device copy")
        source._check_fits(nbytes, "the device copy")
        if not nbytes:
            return
        self.device.activate()
        _call(
            "cuMemcpyDtoDAsync_v2",
            _dptr(self.ptr),
            _dptr(source.ptr),
            nbytes,
            _stream_handle(stream),
            doing=f"copying {nbytes} bytes on device {self.device.index}",
        )
        if stream is None:
            _call("cuStreamSynchronize", _ptr(0), doing="waiting for a copy")

    def free(self) -> None:
        """Release the device memory and the staging area (waiting for queued work first); further use raises."""
        pointer, self._ptr = self._ptr, None
        host, self._host_ptr, self._host = self._host_ptr, 0, None
        self._pending = None
        if _DRIVER.lib is None:
            return
        if pointer or host:
            self.device.activate()
        if pointer:
            _call("cuMemFree_v2", _dptr(pointer), doing=f"freeing {self.nbytes} bytes on device {self.device.index}")
        if host:
            _call("cuMemFreeHost", _ptr(host), doing="freeing pinned host memory")

    @property
    def freed(self) -> bool:
        return self._ptr is None

    def __enter__(self) -> DeviceBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.free()

    def __del__(self) -> None:
        try:
            if self._ptr is not None:
                self.free()
        except Exception:  # interpreter shutdown or a broken context: nothing to report to
            pass

    def __repr__(self) -> str:
        state = "freed" if self._ptr is None else hex(self._ptr)
        return f"DeviceBuffer({self.nbytes} bytes, device={self.device.index}, {state})"


# ----- graphs -----------------------------------------------------------------------------------------------------
class CudaGraph:
    """The work ``capture`` queues on ``stream``, recorded once as a CUDA graph and replayed with :meth:`launch`.

    The calls in ``capture`` run only to record: kernels and copies they queue execute at each launch, with the
    pointers they were given (so buffers must outlive the graph and stay where they are). Host copies read and
    write the staging areas at launch time. Capture is thread-local: other threads may use CUDA meanwhile.
    """

    def __init__(self, stream: Stream, capture: Callable[[], object]) -> None:
        self.stream = stream
        self.device = stream.device
        stream.synchronize()  # nothing queued before the capture may still be using a staging area
        handle = _ptr(stream.handle)
        _call("cuStreamBeginCapture_v2", handle, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL, doing="starting a capture")
        stream.capturing = True
        graph = _ptr()
        try:
            capture()
        except BaseException:
            stream.capturing = False
            lib = _DRIVER.load()
            if lib.cuStreamEndCapture(handle, ctypes.byref(graph)) == 0 and graph.value:
                lib.cuGraphDestroy(graph)
            raise
        stream.capturing = False
        _call("cuStreamEndCapture", handle, ctypes.byref(graph), doing="ending a capture")
        exec_handle = _ptr()
        try:
            _call("cuGraphInstantiateWithFlags", ctypes.byref(exec_handle), graph, 0, doing="instantiating a graph")
        finally:
            _call("cuGraphDestroy", graph, doing="releasing a captured graph")
        self._exec: int | None = exec_handle.value

    def launch(self, stream: Stream | None = None) -> None:
        """Queue one replay of the graph on ``stream`` (default: the stream it was captured on)."""
        if self._exec is None:
            raise ConfigError("this CUDA graph was closed; capture a new one.")
        stream = stream or self.stream
        self.device.activate()
        _call("cuGraphLaunch", _ptr(self._exec), _ptr(stream.handle), doing="launching a graph")

    def close(self) -> None:
        exec_handle, self._exec = self._exec, None
        if exec_handle and _DRIVER.lib is not None:
            self.device.activate()
            _call("cuGraphExecDestroy", _ptr(exec_handle), doing="destroying a graph")

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown or a broken context: nothing to report to
            pass
