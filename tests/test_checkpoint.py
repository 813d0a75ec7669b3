"""Checkpoint files: exact, pickle-free, validated, and atomic."""

import errno
import json
import os
import pickle
import shutil
import stat
import subprocess
import sys
import tempfile
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
        assert type(loaded["state"][index]["step"]) is int
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
    if changes.get("version", 1) is None:
        del header["version"]
    members["__numadam__"] = np.array(json.dumps(header))
    np.savez(path, **members)


def test_other_format_version_and_other_npz(tmp_path):
    opt, _ = _trained()
    path = tmp_path / "c.npz"
    opt.save(path)
    _rewrite_header(path, version=5)
    with pytest.raises(CheckpointError, match="version 5"):
        numadam.load(path)
    for version in (True, 1.0, "1"):
        _rewrite_header(path, version=version)
        with pytest.raises(CheckpointError, match="format version"):
            numadam.load(path)
    _rewrite_header(path, version=None)
    with pytest.raises(CheckpointError, match="no checkpoint format version"):
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


def _temporaries(directory):
    return sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))


_BLOCKED_SAVER = """
import sys
import numpy as np, numadam
opt = numadam.Adam([np.zeros(5)])
opt.step([np.ones(5)])
real_savez = np.savez
def blocked_savez(file, **arrays):
    file.write(b"PK\\x03\\x04" + bytes(1 << 20))   # half an archive
    file.flush()
    print("writing", flush=True)
    sys.stdin.readline()
    real_savez(file, **arrays)
np.savez = blocked_savez
opt.save(sys.argv[1])
"""


def test_a_killed_save_leaves_the_checkpoint_and_its_temporary_goes_next_time(tmp_path):
    """A save blocked half-way in another process: its temporary survives a
    concurrent save (it is live); once the process is killed (SIGKILL), the
    previous checkpoint is intact and the next save removes the temporary."""
    opt, _ = _trained()
    path = tmp_path / "c.npz"
    opt.save(path)
    proc = subprocess.Popen([sys.executable, "-c", _BLOCKED_SAVER, str(path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        live = _temporaries(tmp_path)
        assert len(live) == 1 and len(live[0]) < 60
        opt.save(path)                                   # concurrent: must not touch it
        assert _temporaries(tmp_path) == live
        good = path.read_bytes()
    finally:
        proc.kill()                                      # half-way through its write
        proc.wait(timeout=60)
    assert path.read_bytes() == good
    assert numadam.load(path)["state"][0]["step"] == 3
    assert _temporaries(tmp_path) == live                # the killed save's leftover
    opt.step([np.ones((2, 3)), np.ones(40, np.float32)])
    opt.save(path)
    assert _temporaries(tmp_path) == []
    assert numadam.load(path)["state"][0]["step"] == 4


def test_temporaries_of_other_targets_are_left_alone(tmp_path):
    opt, _ = _trained()
    stale = tmp_path / ".other.npz-0123456789.abcdef01.tmp"
    stale.write_bytes(b"someone else's")
    opt.save(tmp_path / "c.npz")
    assert stale.exists()


@pytest.mark.parametrize("length", [244, 255])
def test_the_longest_file_names_save(tmp_path, length):
    opt, _ = _trained()
    path = tmp_path / ("c" * length)
    opt.save(path)
    assert numadam.load(path)["state"][0]["step"] == 3
    assert os.listdir(tmp_path) == [path.name]


def test_save_fsyncs_the_file_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    opt, _ = _trained()
    path = tmp_path / "c.npz"
    opt.save(path)
    calls = []
    real_fsync = os.fsync

    def observed_fsync(fd):
        calls.append((os.fstat(fd), os.stat(path).st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", observed_fsync)
    opt.save(path)
    final = os.stat(path)
    file_syncs = [at_path for st, at_path in calls if os.path.samestat(st, final)]
    assert file_syncs and all(at_path != final.st_ino for at_path in file_syncs)
    dir_syncs = [at_path for st, at_path in calls if os.path.samestat(st, os.stat(tmp_path))]
    assert dir_syncs and all(at_path == final.st_ino for at_path in dir_syncs)


def test_new_files_follow_the_umask_and_saved_over_files_keep_their_mode(tmp_path):
    opt, _ = _trained()
    old = os.umask(0o027)
    try:
        opt.save(tmp_path / "new.npz")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "new.npz").st_mode) == 0o640
    for mode in (0o644, 0o600, 0o664):
        os.chmod(tmp_path / "new.npz", mode)
        opt.save(tmp_path / "new.npz")
        assert stat.S_IMODE(os.stat(tmp_path / "new.npz").st_mode) == mode


def test_a_zero_d_parameter_resumes(tmp_path):
    x = np.array(2.0)
    opt = numadam.Adam([x], lr=0.1, amsgrad=True)
    opt.step([np.array(0.5)])
    opt.save(tmp_path / "c.npz")
    loaded = numadam.load(tmp_path / "c.npz")
    assert loaded["state"][0]["exp_avg"].shape == ()
    y = x.copy()
    resumed = numadam.Adam([y], lr=0.1, amsgrad=True)
    resumed.load(tmp_path / "c.npz")
    opt.step([np.array(0.25)])
    resumed.step([np.array(0.25)])
    assert y.tobytes() == x.tobytes()


def test_a_fractional_step_in_a_file_is_refused(tmp_path):
    opt, _ = _trained()
    path = tmp_path / "c.npz"
    opt.save(path)
    _rewrite_header(path, steps={"0": 1.7, "1": 3})
    with pytest.raises(CheckpointError, match="step count 1.7"):
        numadam.load(path)


def test_big_endian_arrays_load_in_native_order(tmp_path):
    opt, _ = _trained()
    path = tmp_path / "c.npz"
    opt.save(path)
    with np.load(path) as archive:
        members = {k: archive[k] for k in archive.files}
    expected = members["state.0.exp_avg"].copy()
    members["state.0.exp_avg"] = expected.astype(">f8")
    np.savez(path, **members)
    loaded = numadam.load(path)["state"][0]["exp_avg"]
    assert loaded.dtype == np.float64 and loaded.dtype.isnative
    np.testing.assert_array_equal(loaded, expected)


@pytest.mark.parametrize("edit, error, match", [
    (lambda sd: sd["state"][0].update(exp_avg=np.array([print], dtype=object)), TypeError,
     "dtype object"),
    (lambda sd: sd["state"][0].update(Momentum=np.zeros(3)), ValueError, "lowercase"),
    (lambda sd: sd["state"][0].update(step=1.5), ValueError, "whole number"),
    (lambda sd: sd.update(state={True: sd["state"][0]}), TypeError, "integers"),
    (lambda sd: sd["state"].update({"2": sd["state"][0]}), TypeError, "integers"),
    (lambda sd: sd["param_groups"][0].update(note=[[1, 2]]), TypeError, "note"),
    # what load would refuse is never written: the header is checked as read
    (lambda sd: sd["param_groups"][0].update(params=[0.0]), ValueError, "not integers"),
    (lambda sd: sd["param_groups"][0].update(params=["0"]), ValueError, "not integers"),
    (lambda sd: sd["param_groups"][0].update(params=[True]), ValueError, "not integers"),
    (lambda sd: sd["param_groups"][0].pop("params"), ValueError, "not integers"),
    (lambda sd: sd["param_groups"][1].update(params=[0]), ValueError, "once each"),
    (lambda sd: sd["state"].update({5: sd["state"].pop(0)}), ValueError, "once each"),
    (lambda sd: (sd["param_groups"][0].update(params=[2 ** 70]),
                 sd["state"].update({2 ** 70: sd["state"].pop(0)})), ValueError, "integer"),
    (lambda sd: sd["param_groups"].__setitem__(0, [0]), TypeError, "param_groups\\[0\\]"),
    (lambda sd: sd["param_groups"][0].update({3: "x"}), TypeError, "strings"),
])
def test_what_a_checkpoint_cannot_hold_fails_before_writing(tmp_path, edit, error, match):
    opt, _ = _trained()
    sd = opt.state_dict()
    edit(sd)
    with pytest.raises(error, match=match):
        numadam.save(sd, tmp_path / "c.npz")
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------- messages
def test_saving_into_a_missing_directory_names_the_target(tmp_path):
    opt, _ = _trained()
    target = tmp_path / "missing" / "c.npz"
    with pytest.raises(FileNotFoundError) as info:
        opt.save(target)
    assert str(target) in str(info.value) and ".tmp" not in str(info.value)


def test_an_unreadable_file_is_a_permission_error(tmp_path):
    """Not 'truncated or corrupted'. As root, chmod does not stop reads: the
    load runs in a child that gives up root after importing numadam's
    checkpoint module (later imports could fail for want of read access)."""
    opt, _ = _trained()
    directory = tempfile.mkdtemp()
    try:
        os.chmod(directory, 0o755)
        path = os.path.join(directory, "c.npz")
        opt.save(path)
        os.chmod(path, 0o600 if os.geteuid() == 0 else 0)
        script = textwrap.dedent(f"""
            import os, numadam
            numadam.load      # loads numadam.checkpoint while the child may still read it
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            try:
                numadam.load({path!r})
            except Exception as error:
                print(type(error).__name__, error)
        """)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=120).stdout
    finally:
        shutil.rmtree(directory)
    assert out.startswith("PermissionError") and "corrupted" not in out, out


def test_a_symlink_loop_is_not_a_missing_checkpoint(tmp_path):
    os.symlink(tmp_path / "a", tmp_path / "b")
    os.symlink(tmp_path / "b", tmp_path / "a")
    with pytest.raises(OSError) as info:
        numadam.load(tmp_path / "a")
    assert info.value.errno == errno.ELOOP
    assert not isinstance(info.value, FileNotFoundError)


def test_a_directory_is_not_a_checkpoint(tmp_path):
    with pytest.raises(IsADirectoryError) as info:
        numadam.load(tmp_path)
    assert "allow_pickle" not in str(info.value)


def test_a_pickle_is_refused_without_suggesting_allow_pickle(tmp_path):
    opt, _ = _trained()
    path = tmp_path / "opt.pkl"
    path.write_bytes(pickle.dumps(opt.state_dict()))
    with pytest.raises(CheckpointError, match="pickle") as info:
        numadam.load(path)
    assert "allow_pickle" not in str(info.value)


def test_a_single_npy_array_is_not_a_checkpoint(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros(3))
    with pytest.raises(CheckpointError, match="single .npy array"):
        numadam.load(tmp_path / "a.npy")


# torch.save's two formats, built without torch: its zip layout, and the
# pickled magic number its legacy format starts with (torch/serialization.py).
_TORCH_LEGACY = (b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
                 + b".\x80\x02M\xe9\x03.")


def _torch_zip(path):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in [("opt/data.pkl", b"\x80\x02}q\x00."), ("opt/byteorder", b"little"),
                           ("opt/data/0", bytes(12)), ("opt/version", b"3\n"),
                           ("opt/.data/serialization_id", b"0")]:
            z.writestr(name, data)


@pytest.mark.parametrize("legacy", [False, True])
def test_a_torch_file_says_how_to_convert_it(tmp_path, legacy):
    path = tmp_path / "opt.pt"
    if legacy:
        path.write_bytes(_TORCH_LEGACY)
    else:
        _torch_zip(path)
    with pytest.raises(CheckpointError, match="PyTorch") as info:
        numadam.load(path)
    for step in ("torch.load", ".numpy()", "load_state_dict"):
        assert step in str(info.value)


def test_a_temporary_removed_before_its_writer_locks_it_is_made_again(tmp_path, monkeypatch):
    """A cleaner can lock and remove a temporary in the instant between its
    creation and its writer's lock; the writer notices and starts again."""
    from internals import core_checkpoint_file as _checkpoint_file
    opt, _ = _trained()
    real_lock = _checkpoint_file._lock
    raced = []

    def lock_after_a_cleaner(fd, wait):
        if wait and not raced:
            raced.append(_temporaries(tmp_path))
            for name in raced[0]:
                os.unlink(tmp_path / name)
        return real_lock(fd, wait)

    monkeypatch.setattr(_checkpoint_file, "_lock", lock_after_a_cleaner)
    opt.save(tmp_path / "c.npz")
    assert len(raced[0]) == 1
    assert os.listdir(tmp_path) == ["c.npz"]
    assert numadam.load(tmp_path / "c.npz")["state"][0]["step"] == 3


def test_saving_through_a_symbolic_link_replaces_the_file_it_leads_to(tmp_path):
    """As ``open(path, "wb")`` (and ``np.savez``, ``torch.save``) would: the
    link stays a link, and the file it names gets the new checkpoint."""
    opt, _ = _trained()
    (tmp_path / "runs").mkdir()
    real = tmp_path / "runs" / "step3.npz"
    numadam.save({"state": {}, "param_groups": opt.state_dict()["param_groups"]}, real)
    os.chmod(real, 0o640)
    link = tmp_path / "latest.npz"
    os.symlink(os.path.join("runs", "step3.npz"), link)
    opt.save(link)
    assert os.path.islink(link) and os.readlink(link) == os.path.join("runs", "step3.npz")
    assert numadam.load(real)["state"][0]["step"] == 3
    assert stat.S_IMODE(os.stat(real).st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["latest.npz", "runs"]
    assert os.listdir(tmp_path / "runs") == ["step3.npz"]


def test_saving_through_a_dangling_link_creates_its_target(tmp_path):
    opt, _ = _trained()
    os.symlink("new.npz", tmp_path / "latest.npz")
    opt.save(tmp_path / "latest.npz")
    assert os.path.islink(tmp_path / "latest.npz")
    assert numadam.load(tmp_path / "new.npz")["state"][0]["step"] == 3


def test_saving_into_a_symlink_loop_names_it_and_writes_nothing(tmp_path):
    opt, _ = _trained()
    os.symlink(tmp_path / "a", tmp_path / "b")
    os.symlink(tmp_path / "b", tmp_path / "a")
    with pytest.raises(OSError) as info:
        opt.save(tmp_path / "a")
    assert info.value.errno == errno.ELOOP and info.value.filename == str(tmp_path / "a")
    assert all(os.path.islink(tmp_path / n) for n in "ab")
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]


@pytest.mark.parametrize("name", ["sub", "sub/", "new/"])
def test_saving_to_a_directory_is_refused_before_writing(tmp_path, name):
    """Not after writing the whole archive, and not with an error that names
    the temporary (or a temporary in the parent directory, for ``dir/``)."""
    opt, _ = _trained()
    (tmp_path / "sub").mkdir()
    target = os.path.join(str(tmp_path), name)       # pathlib would drop the "/"
    before = sorted(os.listdir(tmp_path)), sorted(os.listdir(tmp_path.parent))
    with pytest.raises(IsADirectoryError) as info:
        opt.save(target)
    assert info.value.filename == target and ".tmp" not in str(info.value)
    assert (sorted(os.listdir(tmp_path)), sorted(os.listdir(tmp_path.parent))) == before
    assert os.listdir(tmp_path / "sub") == []


def test_a_failed_write_names_the_target_not_the_temporary(tmp_path, monkeypatch):
    opt, _ = _trained()
    target = tmp_path / "c.npz"

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError) as info:
        opt.save(target)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert os.listdir(tmp_path) == []


def test_a_fifo_named_like_a_temporary_does_not_block_the_save(tmp_path):
    """Opening a FIFO for reading waits for a writer: the cleaner must neither
    wait nor remove anything that is not a regular file."""
    import threading
    from internals import core_checkpoint_file as _checkpoint_file
    opt, _ = _trained()
    fifo = tmp_path / (_checkpoint_file._prefix("c.npz") + "0123abcd.tmp")
    os.mkfifo(fifo)
    saver = threading.Thread(target=opt.save, args=(tmp_path / "c.npz",), daemon=True)
    saver.start()
    saver.join(timeout=30)
    if saver.is_alive():                  # unblock the cleaner's open before failing
        os.close(os.open(fifo, os.O_WRONLY))
        saver.join()
    assert not saver.is_alive() and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert numadam.load(tmp_path / "c.npz")["state"][0]["step"] == 3


def test_a_write_protected_checkpoint_is_not_replaced(tmp_path):
    """``open(path, "wb")`` (``np.savez``, ``torch.save``) refuses a file its
    user may not write; the rename must not slip past that. As root,
    permission bits do not apply: the save runs in a child that gives up root
    after importing numadam."""
    opt, _ = _trained()
    directory = tempfile.mkdtemp()
    try:
        os.chmod(directory, 0o777)
        path = os.path.join(directory, "c.npz")
        numadam.save({"state": {}, "param_groups": opt.state_dict()["param_groups"]}, path)
        os.chmod(path, 0o444)
        script = textwrap.dedent(f"""
            import os, numadam
            sd = numadam.load({path!r})
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            try:
                numadam.save(sd, {path!r})
            except Exception as error:
                print(type(error).__name__, error.filename)
        """)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=120)
        mode, owner = stat.S_IMODE(os.stat(path).st_mode), os.stat(path).st_uid
        names = os.listdir(directory)
    finally:
        shutil.rmtree(directory)
    assert out.stdout == f"PermissionError {path}\n", (out.stdout, out.stderr[-2000:])
    assert (mode, owner, names) == (0o444, os.geteuid(), ["c.npz"])


def test_loading_a_fifo_neither_waits_nor_reads_it(tmp_path):
    """A FIFO (or a pipe such as a shell's ``<(...)``) is not a checkpoint:
    opening one waits for a writer, and a zip archive needs to seek."""
    import threading
    fifo = tmp_path / "c.npz"
    os.mkfifo(fifo)
    outcome = []

    def load():
        try:
            numadam.load(fifo)
        except Exception as error:
            outcome.append(error)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    loader.join(timeout=30)
    if loader.is_alive():                 # unblock the open before failing
        os.close(os.open(fifo, os.O_WRONLY))
        loader.join()
        pytest.fail("load waited for a writer")
    assert isinstance(outcome[0], CheckpointError) and "not a regular file" in str(outcome[0])
