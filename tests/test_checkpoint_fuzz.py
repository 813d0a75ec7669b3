"""Checkpoint files under attack: every damaged or crafted file is a CheckpointError.

A load either raises :class:`numadam.CheckpointError` or returns exactly what
was saved; no other exception, no silently changed shape or step.
"""

import io
import json
import os
import struct
import zlib
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import numadam
from numadam import CheckpointError

_FUZZ = settings(max_examples=150, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The bytes of a small checkpoint (a 0-d parameter with AMSGrad state), and
    its state dict; about 2 KB, so that every byte and bit can be tried."""
    opt = numadam.Adam([np.array(0.5)], lr=0.1, amsgrad=True)
    opt.step([np.array(0.25)])
    path = tmp_path_factory.mktemp("small") / "small.npz"
    opt.save(path)
    return path.read_bytes(), numadam.load(path)


def _assert_same(loaded, expected):
    assert loaded["param_groups"] == expected["param_groups"]
    assert loaded["state"].keys() == expected["state"].keys()
    for index, entry in expected["state"].items():
        got = loaded["state"][index]
        assert got.keys() == entry.keys()
        assert type(got["step"]) is int and got["step"] == entry["step"]
        for key in entry.keys() - {"step"}:
            assert got[key].dtype == entry[key].dtype and got[key].shape == entry[key].shape
            assert got[key].tobytes() == entry[key].tobytes()


def _load_or_checkpoint_error(path, expected):
    try:
        loaded = numadam.load(path)
    except CheckpointError:
        return False
    _assert_same(loaded, expected)
    return True


def _each_variant(data, tmp_path, variants):
    """Write each (offset, byte) change of ``data`` in place in turn, yield."""
    bad = tmp_path / "bad.npz"
    bad.write_bytes(data)
    fd = os.open(bad, os.O_WRONLY)
    try:
        for offset, byte in variants:
            os.pwrite(fd, bytes([byte]), offset)
            yield bad
            os.pwrite(fd, data[offset:offset + 1], offset)
    finally:
        os.close(fd)


def test_every_flipped_byte_is_caught_or_harmless(small, tmp_path):
    """Each byte of a small checkpoint inverted in turn."""
    data, expected = small
    flips = ((i, data[i] ^ 0xFF) for i in range(len(data)))
    harmless = sum(_load_or_checkpoint_error(bad, expected)
                   for bad in _each_variant(data, tmp_path, flips))
    # Timestamps, attributes and the local headers' copies of the central
    # directory's fields are not read; everything else is.
    assert 0 < harmless < len(data) // 4


def test_every_flipped_bit_of_the_zip_directory_is_caught_or_harmless(small, tmp_path):
    """Each bit of the central directory (names, sizes, offsets, CRCs, flags,
    compression methods) flipped in turn."""
    data, expected = small
    start = data.index(b"PK\x01\x02")
    flips = ((i, data[i] ^ (1 << bit)) for i in range(start, len(data)) for bit in range(8))
    for bad in _each_variant(data, tmp_path, flips):
        _load_or_checkpoint_error(bad, expected)


def test_every_truncation_is_caught(small, tmp_path):
    data, _ = small
    bad = tmp_path / "bad.npz"
    bad.write_bytes(data)
    for n in range(len(data) - 1, -1, -1):
        os.truncate(bad, n)
        with pytest.raises(CheckpointError):
            numadam.load(bad)


@pytest.mark.parametrize("old, new, match", [
    (b"'shape': (2000,)", b"'shape': (1000,)", "holds 16000 bytes"),   # numpy read half
    (b"'shape': (2000,), }  ", b"'shape': (1000, 2), }", "CRC"),       # same size
])
def test_a_changed_npy_header_in_a_large_member_is_caught(tmp_path, old, new, match):
    """The shape in the .npy header of a 16 KB member changed without fixing
    the CRC: shapes are bounded by the member's size, and every member's CRC
    is checked before anything is returned."""
    x = np.zeros(2000)
    opt = numadam.Adam([x])
    opt.step([np.ones(2000)])
    path = tmp_path / "c.npz"
    opt.save(path)
    data = path.read_bytes()
    at = data.index(old, data.index(b"state.0.exp_avg.npy"))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(data[:at] + new + data[at + len(old):])
    with pytest.raises(CheckpointError, match=match):
        numadam.load(bad)


# ----------------------------------------------- crafted with valid CRCs
def _replace_member(data, name, content, out):
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for member in src.namelist():
            dst.writestr(member, content if member == name else src.read(member))


def _npy(header_text, data=b"", version=1, length=None):
    header = header_text.encode("utf-8", "surrogatepass")
    if length is None:
        length = len(header)
    bits = 16 if version == 1 else 32
    size = struct.pack("<H" if version == 1 else "<I", length % (1 << bits))
    return b"\x93NUMPY" + bytes([version, 0]) + size + header + data


_DESCRS = st.one_of(
    st.sampled_from(["<f8", ">f8", "<f4", "|O", "O", "<U3", "<f16", "<c16", "V8", "<i8",
                     "__import__('os').system('true')", "('<f8', (2, 3))",
                     "[('a', '<f8')]", "<f8' + '", "\\x00"]),
    st.text(max_size=12))
_SHAPES = st.one_of(
    st.lists(st.integers(-3, 2 ** 70), max_size=4).map(lambda s: repr(tuple(s))),
    st.integers(1, 3000).map(lambda d: "(" * d + "1" + ")" * d),
    st.sampled_from(["()", "(8,)", "(1, 8)", "[8]", "(8.0,)", "(True,)", "None",
                     "(2**62, 2**62)", "(1e400,)", "(-1,)", "(0x8,)", "(8, )"]),
    st.text(max_size=20))


@_FUZZ
@given(descr=_DESCRS, fortran=st.sampled_from(["False", "True", "0", "None"]), shape=_SHAPES,
       data=st.binary(max_size=64), version=st.sampled_from([1, 2]),
       pad=st.sampled_from(["", " ", "\n", "}"]))
@example(descr="<f8", fortran="False", shape="(4611686018427387904, 4611686018427387904)",
         data=b"", version=1, pad="\n")                             # a huge shape
@example(descr="<f8", fortran="False", shape="(" * 2000 + ")" * 2000,
         data=b"", version=1, pad="\n")                             # deep nesting
@example(descr="__import__('os')", fortran="False", shape="(1,)",
         data=bytes(8), version=1, pad="\n")                        # not a literal
@example(descr="<f8", fortran="False", shape="(1000000000,)",
         data=bytes(8), version=2, pad="\n")                        # larger than the member
def test_crafted_npy_headers(small, tmp_path, descr, fortran, shape, data, version, pad):
    text = f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}{pad}"
    content = _npy(text, data, version)
    bad = tmp_path / "bad.npz"
    _replace_member(small[0], "state.0.exp_avg.npy", content, bad)
    try:
        loaded = numadam.load(bad)["state"][0]["exp_avg"]
    except CheckpointError:
        return
    # Loaded: then it is a well-formed float array, and numpy reads the same.
    reference = np.lib.format.read_array(io.BytesIO(content), allow_pickle=False)
    assert loaded.shape == reference.shape and loaded.dtype == reference.dtype.newbyteorder("=")
    np.testing.assert_array_equal(loaded, reference)


@_FUZZ
@given(length=st.one_of(st.integers(0, 200), st.just(0xFFFF), st.just(0xFFFFFFFF)),
       version=st.sampled_from([1, 2, 3, 0, 255]))
def test_crafted_npy_header_lengths(small, tmp_path, length, version):
    expected = small[1]
    text = "{'descr': '<f8', 'fortran_order': False, 'shape': (), }\n"
    content = _npy(text, bytes(8), version if version in (1, 2) else 1, length)
    if version not in (1, 2):
        content = content[:6] + bytes([version]) + content[7:]
    bad = tmp_path / "bad.npz"
    _replace_member(small[0], "state.0.exp_avg.npy", content, bad)
    if version in (1, 2) and length == len(text):
        _assert_same(numadam.load(bad), _with_zeros(expected, 0, "exp_avg"))
    else:
        with pytest.raises(CheckpointError):
            numadam.load(bad)


def _with_zeros(state_dict, index, key):
    entry = state_dict["state"][index]
    return {"param_groups": state_dict["param_groups"],
            "state": {**state_dict["state"], index: {**entry, key: np.zeros_like(entry[key])}}}


def _rewrite_header(data, out, edit):
    with zipfile.ZipFile(io.BytesIO(data)) as src:
        raw = src.read("__numadam__.npy")
    header = json.loads(str(np.load(io.BytesIO(raw))))
    text = edit(header)
    if not isinstance(text, str):
        text = json.dumps(header)
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.array(text))
    _replace_member(data, "__numadam__.npy", buffer.getvalue(), out)


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                 max_size=3),
    max_leaves=8)
_HEADER_PATHS = [("version",), ("format",), ("steps",), ("steps", "0"), ("members",),
                 ("members", "0"), ("param_groups",), ("param_groups", 0),
                 ("param_groups", 0, "params"), ("param_groups", 0, "betas")]


def _set(header, where, value):
    target = header
    for key in where[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[where[-1]]
    else:
        target[where[-1]] = value


_DELETE = object()


@_FUZZ
@given(where=st.sampled_from(_HEADER_PATHS), value=_JSON_VALUES | st.just(_DELETE))
@example(where=("steps", "0"), value=1.7)                  # truncated to 1 before
@example(where=("steps", "0"), value=2 ** 64)
@example(where=("version",), value=_DELETE)                # taken as the current version
@example(where=("version",), value=True)
@example(where=("param_groups", 0, "params"), value=[[[[0]]]])
@example(where=("version",), value=1)                      # unchanged: loads
def test_crafted_json_headers(small, tmp_path, where, value):
    bad = tmp_path / "bad.npz"
    _rewrite_header(small[0], bad, lambda h: _set(h, where, value))
    try:
        loaded = numadam.load(bad)
    except CheckpointError:
        return
    # Only what the writer could have written loads: a step count in range,
    # a group entry (load_state_dict validates hyperparameters), or an
    # unchanged value.
    for entry in loaded["state"].values():
        # None: a rule without a step count (SGD); load_state_dict checks the rule.
        assert entry.get("step") is None or (type(entry["step"]) is int
                                             and 0 <= entry["step"] < 2 ** 63)
    original = _rewrite_header_value(small, where)
    assert (where[:2] in {("param_groups", 0), ("steps", "0")}
            or where == ("version",) and value == 1     # the Adam-only version reads
            or (type(value) is type(original) and value == original)), (where, value)


def _rewrite_header_value(small, where):
    with zipfile.ZipFile(io.BytesIO(small[0])) as src:
        value = json.loads(str(np.load(io.BytesIO(src.read("__numadam__.npy")))))
    for key in where:
        value = value[key]
    return value


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"a": ' * 50_000,
                                  "9" * 100_000, "", "\ud800", '{"format": 1e999}'])
def test_malformed_json_text(small, tmp_path, text):
    bad = tmp_path / "bad.npz"
    _rewrite_header(small[0], bad, lambda h: text)
    with pytest.raises(CheckpointError):
        numadam.load(bad)


def _stored(name, data, offset=None):
    """A zip local header for ``data`` stored under ``name`` or, given the
    local header's ``offset``, its central directory entry."""
    crc, n = zlib.crc32(data), name.encode()
    if offset is None:
        return struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, 0, 0, 0, crc, len(data),
                           len(data), len(n), 0) + n
    return struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, crc, len(data),
                       len(data), len(n), 0, 0, 0, 0, 0, offset) + n


def _npy_bytes(array):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array)
    return buf.getvalue()


def _nested_archive(depth, payload):
    """A checkpoint whose members nest: each float64 member's data holds the
    next member, local header and all (a "quoted overlap"). Every member is a
    well-formed .npy with a correct CRC, yet together they announce about
    ``depth`` times the file's size."""
    names = [f"state.{i}.exp_avg.npy" for i in range(depth)]
    contents, inner = [None] * depth, bytes(payload)
    for i in reversed(range(depth)):
        inner += bytes(-len(inner) % 8)
        header = _npy_bytes(np.empty(len(inner) // 8))[:-len(inner) or None]
        contents[i] = header + inner
        inner = _stored(names[i], contents[i]) + contents[i]
    text = _npy_bytes(np.array(json.dumps({
        "format": "numadam-checkpoint", "version": 1,
        "param_groups": [{"params": list(range(depth)), "lr": 0.001}],
        "steps": {str(i): 1 for i in range(depth)},
        "members": {str(i): ["exp_avg"] for i in range(depth)}})))
    data = _stored("__numadam__.npy", text) + text + inner
    entries = [("__numadam__.npy", text, 0)] + [
        (name, content, data.index(_stored(name, content)))
        for name, content in zip(names, contents)]
    directory = b"".join(_stored(*entry) for entry in entries)
    end = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, len(entries), len(entries),
                      len(directory), len(data), 0)
    return data + directory + end


def test_overlapping_members_cannot_multiply_the_memory_a_load_takes(tmp_path):
    """Bounded by the file's size: a 1 MB file of 400 nested members would
    otherwise load as 400 MB of arrays (measured), and a 10 MB one as 40 GB."""
    path = tmp_path / "nested.npz"
    path.write_bytes(_nested_archive(1, 64))
    assert numadam.load(path)["state"][0]["exp_avg"].shape == (8,)     # the builder works
    path.write_bytes(_nested_archive(40, 1 << 16))
    assert os.path.getsize(path) < 100_000             # announcing 2.6 MB
    with pytest.raises(CheckpointError, match="overlap"):
        numadam.load(path)


_SHAPES = st.sampled_from([(), (1,), (3,), (2, 3), (0,), (4, 1, 2)])


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(groups=st.lists(st.tuples(
    st.lists(st.tuples(_SHAPES, st.sampled_from([np.float32, np.float64])), min_size=1,
             max_size=4),
    st.booleans(), st.booleans(), st.sampled_from([0.0, 0.1])), min_size=1, max_size=3),
       adamw=st.booleans(), steps=st.integers(0, 3), seed=st.integers(0, 2 ** 16))
def test_any_optimizer_resumes_exactly_from_its_checkpoint(tmp_path, groups, adamw, steps,
                                                            seed):
    """Mixed dtypes and shapes (0-d, empty), AMSGrad, maximize, decay, and
    parameters that some steps give no gradient (so some have no state)."""
    rng = np.random.default_rng(seed)
    specs = [spec for params, *_ in groups for spec in params]
    start = [rng.standard_normal(shape).astype(dtype) for shape, dtype in specs]

    def build(values):
        params = [v.copy() for v in values]
        it = iter(params)
        cls = numadam.AdamW if adamw else numadam.Adam
        opt = cls([{"params": [next(it) for _ in spec], "amsgrad": ams, "maximize": up,
                    "weight_decay": wd} for spec, ams, up, wd in groups], lr=0.05)
        return opt, params

    grads = [[None if rng.random() < 0.3 else rng.standard_normal(shape).astype(dtype)
              for shape, dtype in specs] for _ in range(steps + 2)]
    opt, params = build(start)
    for g in grads[:steps]:
        opt.step(g)
    opt.save(tmp_path / "c.npz")
    resumed, copies = build([p.copy() for p in params])
    resumed.load_state_dict(numadam.load(tmp_path / "c.npz"))
    for g in grads[steps:]:
        opt.step(g)
        resumed.step(g)
    for a, b in zip(params, copies):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory):
    """A small checkpoint carrying a ReduceLROnPlateau (its best is +inf
    until the first metric: a number JSON cannot hold)."""
    from numadam.schedules import ReduceLROnPlateau
    opt = numadam.SGD([np.array([0.5, 0.25])], lr=0.1, momentum=0.9)
    sched = ReduceLROnPlateau(opt, patience=1, min_lr=1e-3)
    opt.step([np.array([0.25, 1.0])])
    path = tmp_path_factory.mktemp("scheduled") / "scheduled.npz"
    opt.save(path, schedule=sched)
    return path.read_bytes(), sched.state_dict()


_SCHEDULE_PATHS = [("schedule",), ("schedule", "best"), ("schedule", "min_lrs"),
                   ("schedule", "min_lrs", 0), ("schedule", "patience"),
                   ("schedule", "mode"), ("schedule", "_last_lr"), ("schedule", "factor")]


@_FUZZ
@given(where=st.sampled_from(_SCHEDULE_PATHS), value=_JSON_VALUES | st.just(_DELETE))
@example(where=("schedule", "best"), value={"__float__": "nan"})
@example(where=("schedule", "best"), value={"__float__": "-inf", "x": 1})
@example(where=("schedule", "best"), value=float("inf"))        # a bare Infinity
@example(where=("schedule", "patience"), value=-1)
@example(where=("schedule", "min_lrs"), value=[0.0, 0.0])
@example(where=("schedule", "best"), value=0.5)                  # a valid state: loads
def test_crafted_schedule_states(scheduled, tmp_path, where, value):
    """A schedule's state loads only as a state that schedule accepts; anything
    else is a CheckpointError that leaves optimizer and schedule unchanged."""
    from numadam.schedules import ReduceLROnPlateau
    bad = tmp_path / "bad.npz"
    _rewrite_header(scheduled[0], bad, lambda h: _set(h, where, value))
    opt = numadam.SGD([np.array([0.5, 0.25])], lr=0.1, momentum=0.9)
    sched = ReduceLROnPlateau(opt, patience=1, min_lr=1e-3)
    before = sched.state_dict(), opt.state_dict()
    try:
        opt.load(bad, schedule=sched)
    except CheckpointError:
        after = sched.state_dict(), opt.state_dict()
        assert after[0] == before[0] and after[1]["param_groups"] == before[1]["param_groups"]
        assert after[1]["state"] == before[1]["state"] == {}
        return
    assert sched.state_dict() == numadam.load(bad)["schedule"]
    assert opt.param_groups[0]["lr"] == sched.get_last_lr()[0]
