"""numpy arrays <-> integrad.v1.Tensor (row-major, little-endian element bytes)."""

from __future__ import annotations

import numpy as np

from .v1 import explainer_pb2 as pb

# The element types the API has, by proto enum, as explicitly little-endian numpy dtypes
# (the wire is little-endian whatever the machine is).
_DTYPES = {
    pb.DATA_TYPE_FLOAT32: np.dtype("<f4"),
    pb.DATA_TYPE_INT64: np.dtype("<i8"),
}


def to_numpy(tensor: pb.Tensor) -> np.ndarray:
    """The tensor as a numpy array of its shape and dtype (a copy: writable, native order)."""
    if tensor.dtype not in _DTYPES:
        raise ValueError(f"tensor of unsupported dtype {pb.DataType.Name(tensor.dtype)}")
    flat = np.frombuffer(tensor.data, dtype=_DTYPES[tensor.dtype])
    return flat.reshape(tuple(tensor.shape)).astype(_DTYPES[tensor.dtype].newbyteorder("="))


def to_tensor(array) -> pb.Tensor:
    """An array-like as a Tensor: floats become float32, integers and booleans int64 (the two
    element types models take here)."""
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.floating):
        dtype = pb.DATA_TYPE_FLOAT32
    elif np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        dtype = pb.DATA_TYPE_INT64
    else:
        raise TypeError(f"cannot send an array of {array.dtype}: use floats or integers")
    data = np.ascontiguousarray(array, dtype=_DTYPES[dtype]).tobytes()
    return pb.Tensor(shape=array.shape, dtype=dtype, data=data)
