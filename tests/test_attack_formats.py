"""Compressed optimizer state under attack: bad arguments, foreign and
damaged state dicts and checkpoints, non-finite bfloat16 gradients, and
threads. Every refusal leaves every parameter and stored state bit as it was.
"""

import functools
import io
import json
import subprocess
import sys
import textwrap
import zipfile

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import numadam
from helpers import assert_bits_equal, run_threads
from numadam import CheckpointError
from numadam.formats import MIN_8BIT, convert_state_dict

BF16 = np.dtype(ml_dtypes.bfloat16)
FORMATS = ("full", "bfloat16", "8bit")
# bfloat16 NaNs (quiet, negative, signalling, all ones) and infinities.
BAD_BITS = [0x7FC0, 0xFFC0, 0x7F81, 0xFFFF, 0x7F80, 0xFF80]


def _optimizer(fmt, dtype=np.float32, sr=False, cls=numadam.Adam, sizes=(MIN_8BIT, 48),
               **kwargs):
    rng = np.random.default_rng(0)
    params = [rng.uniform(-1, 1, n).astype(np.float32).astype(dtype) for n in sizes]
    return cls(params, lr=1e-2, state_format=fmt, stochastic_rounding=sr, seed=9,
               **kwargs), params


def _grads(params, step):
    rng = np.random.default_rng(step)
    return [rng.uniform(-1, 1, p.shape).astype(np.float32).astype(p.dtype) for p in params]


def _stepped(fmt, steps=2, **kwargs):
    opt, params = _optimizer(fmt, **kwargs)
    for step in range(steps):
        opt.step(_grads(params, step))
    return opt, params


def _snapshot(opt, params):
    return [p.copy() for p in params], opt.state_dict(), opt.skipped_steps


def _assert_unchanged(opt, params, before, what=""):
    ps, sd, skipped = before
    for k, (p, q) in enumerate(zip(params, ps)):
        assert_bits_equal(p, q, f"{what} param {k}")
    now = opt.state_dict()
    assert now["param_groups"] == sd["param_groups"] and opt.skipped_steps == skipped
    assert now.get("state_format") == sd.get("state_format")
    assert now["state"].keys() == sd["state"].keys()
    for index, entry in sd["state"].items():
        assert now["state"][index].keys() == entry.keys()
        for key, value in entry.items():
            if key == "step":
                assert now["state"][index][key] == value
            else:
                assert_bits_equal(now["state"][index][key], value, f"{what} {index} {key}")


def _assert_unchanged_dict(a, b):
    """State dicts ``a`` and ``b`` hold the same arrays, bit for bit."""
    assert a["state"].keys() == b["state"].keys()
    for index, entry in b["state"].items():
        for key, value in entry.items():
            if key != "step":
                assert_bits_equal(a["state"][index][key], value, f"{index} {key}")


# ------------------------------------- parameters after a partial 8-bit block
def test_8bit_state_of_a_parameter_after_a_partial_block():
    # In a child process: the bug writes past the end of a NumPy array.
    code = textwrap.dedent("""
        import numpy as np, numadam
        def run(sizes):
            params = [np.linspace(-1, 1, n).astype(np.float32) for n in sizes]
            opt = numadam.Adam(params, lr=1e-2, state_format="8bit")
            for step in range(3):
                opt.step([np.cos(np.arange(p.size) + step).astype(np.float32)
                          for p in params])
            return params[-1], opt.state_dict()["state"][len(sizes) - 1]
        alone, alone_state = run([4950])
        after, after_state = run([4500, 4950])
        assert np.array_equal(alone, after), "parameter differs"
        for key in alone_state.keys() - {"step"}:
            assert np.array_equal(alone_state[key], after_state[key]), key
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


# ------------------------------------------------------------- 6. arguments
@pytest.mark.parametrize("kwargs, name", [
    (dict(state_format="bf16"), "state_format"), (dict(state_format=None), "state_format"),
    (dict(state_format=8), "state_format"), (dict(state_format="FULL"), "state_format"),
    (dict(stochastic_rounding=1), "stochastic_rounding"),
    (dict(stochastic_rounding="yes"), "stochastic_rounding"),
    (dict(stochastic_rounding=None), "stochastic_rounding"),
    (dict(seed=-1), "seed"), (dict(seed=2 ** 63), "seed"), (dict(seed=1.0), "seed"),
    (dict(seed=True), "seed"), (dict(seed="1"), "seed"), (dict(seed=None), "seed"),
])
@pytest.mark.parametrize("cls", ["Adam", "AdamW", "SGD", "Adagrad", "RMSprop"])
def test_bad_storage_arguments_name_themselves(cls, kwargs, name):
    with pytest.raises(ValueError, match=name):
        getattr(numadam, cls)([np.zeros(8, np.float32)], lr=0.1, **kwargs)


def test_seed_bounds_and_numpy_integers_are_accepted():
    for seed in (0, 2 ** 63 - 1, np.int64(5), np.uint64(7)):
        numadam.SGD([np.zeros(4, BF16)], lr=0.1, stochastic_rounding=True, seed=seed)


@pytest.mark.parametrize("fmt", ["bfloat16", "8bit"])
def test_float64_parameters_refuse_compressed_state(fmt):
    with pytest.raises(ValueError, match="float64"):
        numadam.Adam([np.zeros(MIN_8BIT)], state_format=fmt)
    opt, params = _stepped(fmt)
    before = _snapshot(opt, params)
    with pytest.raises(ValueError, match="float64"):
        opt.add_param_group({"params": [np.zeros(MIN_8BIT)]})
    assert len(opt.param_groups) == 1
    _assert_unchanged(opt, params, before)


@pytest.mark.parametrize("clip", [dict(max_grad_norm=1.0), dict(clip_value=0.5)])
def test_clipping_refuses_bfloat16_parameters(clip):
    (key, value), = clip.items()
    with pytest.raises(NotImplementedError, match="bfloat16"):
        numadam.Adam([np.zeros(8, BF16)], **clip)
    opt = numadam.Adam([np.zeros(8, BF16)], state_format="8bit")
    with pytest.raises(NotImplementedError, match="bfloat16"):
        setattr(opt, key, value)
    assert getattr(opt, key) is None
    clipped = numadam.Adam([np.zeros(8, np.float32)], **clip)
    with pytest.raises(NotImplementedError, match="bfloat16"):
        clipped.add_param_group({"params": [np.zeros(8, BF16)]})
    assert len(clipped.param_groups) == 1


@pytest.mark.parametrize("fmt, dtype", [("bfloat16", np.float32), ("8bit", np.float32),
                                        ("full", BF16)])
def test_jit_refuses_compressed_state_and_bfloat16_parameters(fmt, dtype):
    opt, params = _stepped(fmt, dtype=dtype)
    before = _snapshot(opt, params)
    with pytest.raises(NotImplementedError, match="opt.step"):
        opt.jit()
    _assert_unchanged(opt, params, before)


def test_bfloat16_gradients_must_match_bfloat16_parameters():
    opt, params = _stepped("bfloat16", dtype=BF16)
    before = _snapshot(opt, params)
    for wrong in (np.float32, np.float16, np.uint16):
        # The uint16 view: the very bits, without the dtype.
        with pytest.raises(ValueError, match="dtype"):
            opt.step([(g.view(wrong) if wrong == np.uint16 else g.astype(wrong))
                      if k == 0 else g for k, g in enumerate(_grads(params, 5))])
    _assert_unchanged(opt, params, before)


# --------------------------------------------------- 6. foreign state dicts
@pytest.mark.parametrize("src", FORMATS)
@pytest.mark.parametrize("dst", FORMATS)
@pytest.mark.parametrize("dtype", [np.float32, BF16], ids=["float32", "bf16"])
def test_a_state_dict_of_another_format_is_refused_and_converts(src, dst, dtype):
    other, _ = _stepped(src, 3, dtype=dtype)
    opt, params = _stepped(dst, dtype=dtype)
    if src == dst:
        opt.load_state_dict(other.state_dict())
        return
    before = _snapshot(opt, params)
    with pytest.raises(ValueError, match=r"convert_state_dict\(state_dict, '" + dst):
        opt.load_state_dict(other.state_dict())
    _assert_unchanged(opt, params, before)
    opt.load_state_dict(convert_state_dict(other.state_dict(), dst))
    assert opt.state_dict()["state"][0]["step"] == 3


def _edited(sd, index, key, value):
    out = {**sd, "state": dict(sd["state"])}
    entry = dict(sd["state"][index])
    if value is None:
        del entry[key]
    else:
        entry[key] = value
    out["state"][index] = entry
    return out


def _bad_entries(fmt):
    """(state dict edit, message) pairs for a stepped optimizer of ``fmt``."""
    sd = _stepped(fmt)[0].state_dict()
    big = sd["state"][0]
    edits = [
        (0, "exp_avg", big["exp_avg"].astype(np.float64), "dtype"),
        (0, "exp_avg", big["exp_avg"].reshape(64, 64), "shape"),
        (0, "exp_avg", big["exp_avg"][:-1], "shape"),
        (0, "exp_avg", None, "has no 'exp_avg'"),
        (0, "exp_avg", big["exp_avg"].view(np.int8 if fmt == "8bit" else np.int16), "dtype"),
        (1, "exp_avg_sq", sd["state"][1]["exp_avg_sq"].astype(np.float16), "dtype"),
    ]
    if fmt == "8bit":
        amax = big["exp_avg_absmax"]
        edits += [
            (0, "exp_avg_absmax", None, "exp_avg_absmax"),
            (0, "exp_avg_absmax", amax[:-1], "shape"),
            (0, "exp_avg_absmax", np.append(amax, amax[:1]), "shape"),
            (0, "exp_avg_absmax", amax.astype(np.float64), "dtype"),
            (0, "exp_avg_absmax", amax.reshape(1, -1), "shape"),
            (0, "exp_avg_sq_absmax", np.float32(1.0), "shape"),
            # The small parameter keeps float32 state: it has no absmax.
            (1, "exp_avg_absmax", amax[:1], "does not keep"),
        ]
    return sd, edits


@pytest.mark.parametrize("fmt", ["bfloat16", "8bit"])
def test_state_dicts_with_wrong_arrays_are_refused_with_nothing_changed(fmt):
    sd, edits = _bad_entries(fmt)
    opt, params = _stepped(fmt, 3)
    before = _snapshot(opt, params)
    for index, key, value, match in edits:
        with pytest.raises(ValueError, match=match):
            opt.load_state_dict(_edited(sd, index, key, value))
        _assert_unchanged(opt, params, before, f"{index} {key}")


@pytest.mark.parametrize("label, fmt", [("bfloat16", "8bit"), ("8bit", "bfloat16"),
                                        ("full", "8bit"), ("full", "bfloat16"),
                                        ("8bit", "full"), ("bfloat16", "full")])
def test_a_state_dict_relabelled_as_another_format_is_refused(label, fmt):
    """Arrays of one format under another's label: the dtype check refuses."""
    sd = {**_stepped(fmt)[0].state_dict(), "state_format": label}
    if label == "full":
        del sd["state_format"]
    opt, params = _stepped(label)
    before = _snapshot(opt, params)
    with pytest.raises(ValueError):
        opt.load_state_dict(sd)
    _assert_unchanged(opt, params, before)
    if fmt != "full":
        # Codes or bits under a label that does not store them (float32
        # arrays are what any format keeps for small parameters).
        with pytest.raises(ValueError, match="dtype"):
            convert_state_dict(sd, "full" if label != "full" else "8bit")


def _filled(dtype, shape, fill):
    with np.errstate(invalid="ignore"):        # NaN and -1.5 into integers
        return np.full(shape, fill).astype(dtype)


_VALUES = st.one_of(
    st.none(), st.integers(-3, 300), st.floats(allow_nan=True), st.text(max_size=3),
    st.builds(_filled,
              st.sampled_from([np.uint8, np.uint16, np.int8, np.float32, np.float64,
                               np.float16, np.int64, np.bool_, BF16]),
              st.sampled_from([(), (0,), (16,), (15,), (17,), (MIN_8BIT,), (48,),
                               (MIN_8BIT - 1,), (64, 64), (1, 16)]),
              st.sampled_from([0, 1, 255, np.nan, -1.5])))
_KEYS = st.sampled_from(["exp_avg", "exp_avg_sq", "exp_avg_absmax", "exp_avg_sq_absmax",
                         "step", "max_exp_avg_sq", "sum", "bogus"])


@functools.lru_cache(maxsize=None)
def _state_dict_of(fmt):
    return _stepped(fmt)[0].state_dict()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(["bfloat16", "8bit"]), index=st.sampled_from([0, 1]), key=_KEYS,
       value=_VALUES, delete=st.booleans())
def test_any_bad_state_dict_entry_is_a_value_error_with_nothing_changed(fmt, index, key,
                                                                        value, delete):
    sd = _state_dict_of(fmt)
    entry = dict(sd["state"][index])
    if delete:
        entry.pop(key, None)
    else:
        entry[key] = value
    bad = {**sd, "state": {**sd["state"], index: entry}}
    for target in FORMATS:          # the explicit conversion: a result or ValueError
        try:
            with np.errstate(over="ignore"):    # float64 values beyond float32's range
                convert_state_dict(bad, target)
        except ValueError:
            pass
    opt, params = _stepped(fmt, 3)
    before = _snapshot(opt, params)
    try:
        opt.load_state_dict(bad)
    except ValueError:
        _assert_unchanged(opt, params, before)
        return
    # Accepted: the edit was harmless (a None dropped, an equal array, a step).
    loaded = opt.state_dict()["state"][index]
    for name, stored in loaded.items():
        if name != "step":
            original = np.asarray(entry[name])
            assert stored.dtype == original.dtype and stored.shape == original.shape


# ------------------------------------------------------- 6. checkpoint files
def _checkpoint(fmt, tmp_path, dtype=np.float32):
    opt, params = _stepped(fmt, 2, dtype=dtype, sr=dtype == BF16)
    path = tmp_path / f"{fmt}.npz"
    opt.save(path)
    return path, path.read_bytes(), opt.state_dict()


def _members(data):
    """name -> (offset of its data, size) of a stored (uncompressed) zip."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        out = {}
        for info in archive.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            name_len, extra_len = np.frombuffer(data, "<u2", 2, info.header_offset + 26)
            start = info.header_offset + 30 + int(name_len) + int(extra_len)
            out[info.filename] = (start, info.file_size)
    return out


def _rezipped(data, edit):
    """``data`` with each member's bytes replaced by ``edit(name, bytes)``
    (CRCs written anew)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(buffer, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, edit(info.filename, src.read(info.filename)))
    return buffer.getvalue()


def _assert_load_fails_or_fits(path, fmt, dtype, expected_error=CheckpointError):
    opt, params = _stepped(fmt, 1, dtype=dtype, sr=dtype == BF16)
    before = _snapshot(opt, params)
    try:
        opt.load(path)
    except (CheckpointError, ValueError) as error:
        assert isinstance(error, expected_error), error
        _assert_unchanged(opt, params, before, str(path))
        return False
    return True


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_flipped_header_byte_is_refused_or_harmless(fmt, tmp_path):
    path, data, _ = _checkpoint(fmt, tmp_path)
    start, size = _members(data)["__numadam__.npy"]
    bad = tmp_path / "bad.npz"
    loaded = 0
    for offset in range(start, start + size):
        bad.write_bytes(data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1:])
        # A changed byte under the zip's CRC: the archive itself refuses.
        loaded += _assert_load_fails_or_fits(bad, fmt, np.float32)
    assert loaded == 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_header_byte_changed_under_a_fresh_crc_is_refused_or_harmless(fmt, tmp_path):
    """The CRC written anew: the header's own checks, then the optimizer's."""
    path, data, _ = _checkpoint(fmt, tmp_path)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        header = archive.read("__numadam__.npy")
    bad = tmp_path / "bad.npz"
    rng = np.random.default_rng(0)
    # Every byte of the npy preamble (128 bytes), and a sample of the JSON
    # text (UTF-32: four bytes a character); each to a random other value.
    offsets = [*range(128), *rng.choice(np.arange(128, len(header)), 300, replace=False)]
    for offset in offsets:
        changed = bytearray(header)
        changed[offset] = (changed[offset] + int(rng.integers(1, 256))) % 256
        bad.write_bytes(_rezipped(data, lambda name, raw: bytes(changed)
                                  if name == "__numadam__.npy" else raw))
        _assert_load_fails_or_fits(bad, fmt, np.float32,
                                   expected_error=(CheckpointError, ValueError))


def test_a_header_beyond_unicode_is_a_checkpoint_error(tmp_path):
    """A UTF-32 code far above U+10FFFF under a fresh CRC: NumPy's str() of
    it raised SystemError past the reader."""
    path, data, _ = _checkpoint("bfloat16", tmp_path)

    def edit(name, raw):
        if name != "__numadam__.npy":
            return raw
        text = str(np.load(io.BytesIO(raw)))
        # Inside a key of a JSON object, which json.loads builds with
        # PyUnicode_New; the npy header takes 128 bytes, each character 4.
        at = 128 + 4 * (text.index('"steps": {"') + len('"steps": {"')) + 2
        out = bytearray(raw)
        out[at] = 0x80
        return bytes(out)

    bad = tmp_path / "bad.npz"
    bad.write_bytes(_rezipped(data, edit))
    with pytest.raises(CheckpointError, match="header"):
        numadam.load(bad)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [np.float32, BF16], ids=["float32", "bf16"])
def test_random_bytes_in_the_arrays_are_caught_by_the_crc_or_load_and_step(fmt, dtype,
                                                                           tmp_path):
    path, data, _ = _checkpoint(fmt, tmp_path, dtype)
    rng = np.random.default_rng(1)
    members = _members(data)
    bad = tmp_path / "bad.npz"
    for name, (start, size) in members.items():
        if name == "__numadam__.npy":
            continue
        # The npy header is 128 bytes; what follows is the array's data.
        noise = rng.integers(0, 256, size - 128, dtype=np.uint8).tobytes()
        raw = data[:start + 128] + noise + data[start + size:]
        bad.write_bytes(raw)
        assert not _assert_load_fails_or_fits(bad, fmt, dtype)       # the CRC
        bad.write_bytes(_rezipped(data, lambda n, r: r[:128] + noise if n == name else r))
        opt, params = _stepped(fmt, 1, dtype=dtype, sr=dtype == BF16)
        opt.load(bad)       # any codes, bits or absmax are values a state may hold
        with np.errstate(all="ignore"):
            opt.step(_grads(params, 7))


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_checkpoints_are_refused_with_nothing_changed(fmt, tmp_path):
    path, data, _ = _checkpoint(fmt, tmp_path)
    bad = tmp_path / "bad.npz"
    cuts = sorted({*range(0, 64), *range(len(data) - 200, len(data)),
                   *range(0, len(data), max(1, len(data) // 150))})
    for n in cuts:
        bad.write_bytes(data[:n])
        with pytest.raises(CheckpointError):
            numadam.load(bad)
    for n in cuts[::10]:
        bad.write_bytes(data[:n])
        assert not _assert_load_fails_or_fits(bad, fmt, np.float32)


@pytest.mark.parametrize("value", ["4bit", "BFLOAT16", "", None, 8, ["8bit"]])
def test_a_checkpoint_with_an_unknown_state_format_is_refused(value, tmp_path):
    path, data, _ = _checkpoint("8bit", tmp_path)

    def edit(name, raw):
        if name != "__numadam__.npy":
            return raw
        header = json.loads(str(np.load(io.BytesIO(raw))))
        assert header["version"] == 4
        header["state_format"] = value
        out = io.BytesIO()
        np.lib.format.write_array(out, np.array(json.dumps(header)))
        return out.getvalue()

    bad = tmp_path / "bad.npz"
    bad.write_bytes(_rezipped(data, edit))
    with pytest.raises(CheckpointError, match="state_format"):
        numadam.load(bad)
    assert not _assert_load_fails_or_fits(bad, "8bit", np.float32)


@pytest.mark.parametrize("label", ["full", "bfloat16"])
def test_a_checkpoint_relabelled_as_another_format_is_refused(label, tmp_path):
    path, data, _ = _checkpoint("8bit", tmp_path)

    def edit(name, raw):
        if name != "__numadam__.npy":
            return raw
        header = json.loads(str(np.load(io.BytesIO(raw))))
        header["state_format"] = label
        out = io.BytesIO()
        np.lib.format.write_array(out, np.array(json.dumps(header)))
        return out.getvalue()

    bad = tmp_path / "bad.npz"
    bad.write_bytes(_rezipped(data, edit))
    assert not _assert_load_fails_or_fits(bad, label, np.float32,
                                          expected_error=(CheckpointError, ValueError))


# ------------------------------------------------- 7. non-finite gradients
@pytest.mark.parametrize("bits", BAD_BITS, ids=hex)
@pytest.mark.parametrize("fmt, dtype, sr", [
    ("full", BF16, False), ("bfloat16", BF16, True), ("8bit", BF16, False),
    ("8bit", BF16, True), ("8bit", np.float32, False), ("bfloat16", np.float32, False)])
def test_check_finite_catches_bfloat16_nan_and_inf(fmt, dtype, sr, bits):
    for mode in ("raise", "skip"):
        opt, params = _optimizer(fmt, dtype, sr, check_finite=mode)
        clean, clean_params = _optimizer(fmt, dtype, sr)
        for o, ps in ((opt, params), (clean, clean_params)):
            o.step(_grads(ps, 0))
        before = _snapshot(opt, params)
        grads = _grads(params, 1)
        if dtype == BF16:
            grads[0].view(np.uint16)[MIN_8BIT - 1] = bits
        else:                       # the same NaN or Inf widened to float32
            grads[0].view(np.uint32)[MIN_8BIT - 1] = bits << 16
        if mode == "raise":
            with pytest.raises(FloatingPointError, match="parameter 0"):
                opt.step(grads)
            _assert_unchanged(opt, params, before)
        else:
            opt.step(grads)
            assert opt.skipped_steps == 1
            opt.skipped_steps = 0
            _assert_unchanged(opt, params, before)
        # The next finite step is the step the clean run takes.
        opt.step(_grads(params, 2))
        clean.step(_grads(clean_params, 2))
        _assert_unchanged(opt, params, _snapshot(clean, clean_params), mode)


@pytest.mark.parametrize("dtype", [np.float32, BF16], ids=["float32", "bf16"])
def test_unchecked_nan_poisons_only_its_8bit_block(dtype):
    """check_finite=None: the block holding a NaN gradient gets a NaN absmax;
    every other block steps as without it."""
    opt, params = _optimizer("8bit", dtype)
    ref, ref_params = _optimizer("8bit", dtype)
    grads = _grads(params, 0)
    bad = [g.copy() for g in grads]
    bad[0].view(np.uint16 if dtype == BF16 else np.uint32)[700] = 0x7FC0 if dtype == BF16 \
        else 0x7FC00000
    with np.errstate(all="ignore"):
        opt.step(bad)
    ref.step(grads)
    got, want = opt.state_dict()["state"][0], ref.state_dict()["state"][0]
    for key in ("exp_avg", "exp_avg_sq"):
        amax = got[key + "_absmax"]
        assert np.isnan(amax[2]) and np.all(np.isfinite(np.delete(amax, 2)))
        assert_bits_equal(np.delete(amax, 2), np.delete(want[key + "_absmax"], 2), key)
        keep = np.r_[0:512, 768:MIN_8BIT]
        assert_bits_equal(got[key][keep], want[key][keep], key)
    keep = np.r_[0:512, 768:MIN_8BIT]
    assert_bits_equal(params[0][keep], ref_params[0][keep], "param")
    assert np.isnan(params[0][700].astype(np.float32))


# ---------------------------------------------------------------- 8. threads
@pytest.mark.parametrize("fmt, dtype", [("8bit", BF16), ("bfloat16", np.float32)],
                         ids=["8bit-bf16", "bfloat16-float32"])
def test_threads_sharing_a_compressed_optimizer_take_turns(fmt, dtype):
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        opt, params = _optimizer(fmt, dtype, sr=dtype == BF16)
        grads = [_grads(params, k) for k in range(2)]
        order, snapshots = [], []

        def work(k):
            for _ in range(15):
                opt.step(grads[k], closure=lambda: order.append(k))
                snapshots.append(opt.state_dict())

        run_threads(work, 2)
    finally:
        sys.setswitchinterval(old)
    replay, replay_params = _optimizer(fmt, dtype, sr=dtype == BF16)
    states = {}
    for k in order:
        replay.step(grads[k])
        states[replay.state_dict()["state"][0]["step"]] = replay.state_dict()
    _assert_unchanged(opt, params, _snapshot(replay, replay_params))
    for snapshot in snapshots:      # each one a state the serial run passed through
        step = snapshot["state"][0]["step"]
        _assert_unchanged_dict(snapshot, states[step])


@pytest.mark.parametrize("fmt, dtype", [("8bit", np.float32), ("bfloat16", BF16)],
                         ids=["8bit-float32", "bfloat16-bf16"])
def test_a_blas_threaded_loop_matches_the_single_threaded_run(fmt, dtype):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((300, 300)).astype(np.float32) / 17
    b = rng.standard_normal((300, 300)).astype(np.float32)

    def fit(threads):
        saved = (numadam.config.threads, numadam.config.min_task, numadam.config.serial_below)
        try:
            numadam.config.threads, numadam.config.min_task = threads, 4096
            numadam.config.serial_below = 0
            w = np.zeros((300, 300), np.float32).astype(dtype)
            opt = numadam.Adam([w], lr=1e-2, state_format=fmt,
                               stochastic_rounding=dtype == BF16, seed=4)
            for _ in range(15):
                r = np.dot(a, w.astype(np.float32)) - b      # BLAS on its own threads
                opt.step([np.dot(a.T, r).astype(dtype)])
            return w, opt.state_dict()
        finally:
            (numadam.config.threads, numadam.config.min_task,
             numadam.config.serial_below) = saved

    w1, sd1 = fit(1)
    w2, sd2 = fit(2)
    assert_bits_equal(w2, w1, "w")
    _assert_unchanged_dict(sd2, sd1)
    assert np.any(w1.astype(np.float32) != 0)
