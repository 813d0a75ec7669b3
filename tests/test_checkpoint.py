"""Checkpoint files: exact, pickle-free, validated, and atomic."""

import json
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

import numadam
from numadam import CheckpointError


def _trained():
    params = [np.linspace(0, 1, 6).reshape(2, 3), np.arange(40, dtype=np.float32)]
    opt = numadam.Adam([{"params": [params[0]]},
                        {"params": [params[1]], "lr": 0.05, "amsgrad": True, "note": "head"}])
    for _ in range(3):
        opt.step([np.full((2, 3), 0.3), np.linspace(-1, 1, 40, dtype=np.float32)])
    return opt, params


def test_roundtrip_is_exact(tmp_path):
    opt, _ = _trained()
    path = tmp_path / "opt.ckpt"
    numadam.save(opt.state_dict(), path)
    loaded = numadam.load(path)
    sd = opt.state_dict()
    assert loaded["param_groups"] == sd["param_groups"]
    assert loaded["param_groups"][1]["note"] == "head"
    for index, entry in sd["state"].items():
        assert loaded["state"][index]["step"] == entry["step"]
        for key in entry:
            if key != "step":
                np.testing.assert_array_equal(loaded["state"][index][key], entry[key])
                assert loaded["state"][index][key].dtype == entry[key].dtype
    assert sorted(os.listdir(tmp_path)) == ["opt.ckpt"]          # no temporary left


def test_the_file_holds_no_pickle(tmp_path):
    opt, _ = _trained()
    opt.save(tmp_path / "c.npz")
    with zipfile.ZipFile(tmp_path / "c.npz") as z:
        for name in z.namelist():
            header = z.read(name)[:128]
            assert b"'descr': '|O'" not in header and b"'descr': 'O'" not in header, name


def test_a_pickled_member_is_refused_not_executed(tmp_path):
    opt, _ = _trained()
    path = tmp_path / "good.npz"
    opt.save(path)
    evil = tmp_path / "evil.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(evil, "w") as dst:
        for name in src.namelist():
            if name != "state.0.exp_avg.npy":
                dst.writestr(name, src.read(name))
        with dst.open("state.0.exp_avg.npy", "w") as f:   # an object array: pickle inside
            np.lib.format.write_array(f, np.array([print], dtype=object), allow_pickle=True)
    with pytest.raises(CheckpointError, match="header numadam does not write"):
        numadam.load(evil)


def test_damaged_files(tmp_path):
    opt, _ = _trained()
    path = tmp_path / "c.npz"
    opt.save(path)
    data = path.read_bytes()
    cases = {
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "garbage": b"not a checkpoint at all" * 10,
    }
    # One flipped byte inside the float data of a state array: caught by the CRC.
    offset = data.index(b"\x93NUMPY", data.index(b"state.1.exp_avg.npy")) + 200
    cases["bitflip"] = data[:offset] + bytes([data[offset] ^ 0x10]) + data[offset + 1:]
    for name, content in cases.items():
        bad = tmp_path / f"{name}.npz"
        bad.write_bytes(content)
        with pytest.raises(CheckpointError, match="corrupted|not a numadam"):
            numadam.load(bad)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        numadam.load(tmp_path / "missing.npz")


def _rewrite_header(path, **changes):
    with np.load(path) as archive:
        members = {k: archive[k] for k in archive.files}
    header = json.loads(str(members["__numadam__"]))
    header.update(changes)
    members["__numadam__"] = np.array(json.dumps(header))
    np.savez(path, **members)


def test_other_format_version_and_other_npz(tmp_path):
    opt, _ = _trained()
    path = tmp_path / "c.npz"
    opt.save(path)
    _rewrite_header(path, version=2)
    with pytest.raises(CheckpointError, match="version 2"):
        numadam.load(path)
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a numadam checkpoint"):
        numadam.load(other)


def test_checkpoint_that_does_not_fit_changes_nothing(tmp_path):
    opt, params = _trained()
    opt.save(tmp_path / "c.npz")
    other = numadam.Adam([{"params": [np.zeros((2, 3))]},
                          {"params": [np.zeros(41, np.float32)]}])
    other.step([np.ones((2, 3)), np.ones(41, np.float32)])
    before = other.state_dict()
    with pytest.raises(ValueError, match="shape"):
        other.load(tmp_path / "c.npz")
    after = other.state_dict()
    assert after["param_groups"] == before["param_groups"]
    np.testing.assert_array_equal(after["state"][1]["exp_avg"], before["state"][1]["exp_avg"])


def test_unserialisable_group_entry_fails_before_writing(tmp_path):
    opt, _ = _trained()
    opt.param_groups[0]["callback"] = print
    with pytest.raises(TypeError, match="callback"):
        opt.save(tmp_path / "c.npz")
    assert os.listdir(tmp_path) == []


def test_an_exception_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    opt, _ = _trained()
    path = tmp_path / "c.npz"
    opt.save(path)
    good = path.read_bytes()
    opt.step([np.ones((2, 3)), np.ones(40, np.float32)])

    def failing_savez(file, **arrays):
        file.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        opt.save(path)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["c.npz"]


def test_a_process_killed_mid_save_keeps_the_previous_checkpoint(tmp_path):
    """SIGKILL while the new file is half written: the old one is intact."""
    opt, _ = _trained()
    path = tmp_path / "c.npz"
    opt.save(path)
    good = path.read_bytes()
    script = textwrap.dedent(f"""
        import sys, time
        import numpy as np, numadam
        x = np.zeros(2_000_000)
        opt = numadam.Adam([x])
        opt.step([np.ones_like(x)])
        real_savez = np.savez
        def slow_savez(file, **arrays):
            file.write(b"PK\\x03\\x04" + bytes(1 << 20))   # a partial archive
            file.flush()
            print("writing", flush=True)
            time.sleep(60)
        np.savez = slow_savez
        opt.save({str(path)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        proc.kill()
    finally:
        proc.wait(timeout=30)
    assert path.read_bytes() == good
    assert numadam.load(path)["state"][0]["step"] == 3
