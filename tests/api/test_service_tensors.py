"""`ntm.v1.Tensor` <-> numpy through the wire form (ntm_serve/api/tensors.py) is exactly the protobuf runtime's own
conversion: same bytes out, same floats in, for any shape and any float32 (NaN and infinities included)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ntm_serve.api.proto_gen.ntm.v1 import ntm_pb2
from ntm_serve.api.tensors import to_array, to_tensor

ARRAYS = hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=40),
                    elements=st.floats(width=32, allow_nan=True, allow_infinity=True))


def _reference(array: np.ndarray) -> ntm_pb2.Tensor:
    """What the protobuf runtime builds, value by value."""
    tensor = ntm_pb2.Tensor(shape=array.shape)
    tensor.values.extend(array.ravel().tolist())
    return tensor


@settings(max_examples=200, deadline=None)
@given(ARRAYS)
def test_to_tensor_writes_what_protobuf_writes(array: np.ndarray) -> None:
    assert to_tensor(array).SerializeToString() == _reference(array).SerializeToString()


@settings(max_examples=200, deadline=None)
@given(ARRAYS)
def test_to_array_reads_what_protobuf_reads(array: np.ndarray) -> None:
    got = to_array(_reference(array), "t")
    assert got.dtype == np.float32 and got.shape == array.shape and got.flags.writeable
    np.testing.assert_array_equal(got, array)


def test_non_contiguous_and_float64_arrays_go_out_in_c_order() -> None:
    array = np.arange(12, dtype=np.float64).reshape(3, 4).T  # (4, 3), Fortran order
    assert list(to_tensor(array).values) == array.ravel().tolist()


def test_a_tensor_with_unknown_fields_still_reads_right() -> None:
    """A newer client's extra field shifts the wire layout: the reader falls back to the runtime."""
    wire = to_tensor(np.array([[1.5, -2.0]], np.float32)).SerializeToString() + b"\x18\x07"  # field 3 = 7
    tensor = ntm_pb2.Tensor.FromString(wire)
    np.testing.assert_array_equal(to_array(tensor, "t"), [[1.5, -2.0]])


def test_unpacked_values_from_a_client_read_right() -> None:
    """proto3 parsers accept unpacked repeated floats (field 2, wire type 5, one float each)."""
    wire = b"\x0a\x01\x02" + b"".join(b"\x15" + np.float32(v).tobytes() for v in (0.25, 3.0))
    np.testing.assert_array_equal(to_array(ntm_pb2.Tensor.FromString(wire), "t"), [0.25, 3.0])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.just(0), st.integers(min_value=-3, max_value=2**63 - 1)), max_size=40))
def test_any_declared_shape_is_read_or_refused_never_a_crash(shape: list[int]) -> None:
    """A client's shape may be anything int64 allows (the fuzzer found [0, 2**62] crashing numpy's reshape):
    it is read, or refused with INVALID_ARGUMENT."""
    import grpc

    from ntm_serve.api.errors import ServiceError

    try:
        got = to_array(ntm_pb2.Tensor(shape=shape), "t")
    except ServiceError as err:
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    else:
        assert got.shape == tuple(shape) and got.size == 0
