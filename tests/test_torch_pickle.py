"""Tests for jaxface.torch_pickle, the torch-free checkpoint reader.

torch is only used here, to write reference files in both on-disk formats and
to load the shared pretrained weights for a value-by-value comparison.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jaxface.torch_pickle import load_torch_file  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
MODULE_PATH = REPO_ROOT / "jaxface" / "torch_pickle.py"
FORMATS = ["zip", "legacy"]


def save(obj: Any, path: Path, fmt: str, **kwargs: Any) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"), **kwargs)
    assert zipfile.is_zipfile(path) == (fmt == "zip")
    return path


def roundtrip(obj: Any, tmp_path: Path, fmt: str, **kwargs: Any) -> Any:
    return load_torch_file(save(obj, tmp_path / f"ckpt_{fmt}.pt", fmt, **kwargs))


def expected_array(t: "torch.Tensor") -> np.ndarray:
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.float().numpy()
    if t.dtype == torch.complex32:
        return t.to(torch.complex64).numpy()
    return t.numpy()


def assert_same(got: Any, want: Any, where: str = "obj") -> None:
    """Structural equality between a loaded object and the torch original."""
    if isinstance(want, torch.Tensor):
        exp = expected_array(want)
        assert isinstance(got, np.ndarray), f"{where}: {type(got)} is not an ndarray"
        assert got.dtype == exp.dtype, f"{where}: dtype {got.dtype} != {exp.dtype}"
        assert got.shape == exp.shape, f"{where}: shape {got.shape} != {exp.shape}"
        assert got.flags.c_contiguous and got.flags.owndata, f"{where}: not an owned copy"
        np.testing.assert_array_equal(got, exp, err_msg=where)
    elif isinstance(want, dict):
        assert type(got) is type(want), f"{where}: {type(got)} != {type(want)}"
        assert list(got) == list(want), f"{where}: keys differ"
        for k in want:
            assert_same(got[k], want[k], f"{where}[{k!r}]")
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{where}[{i}]")
    else:
        assert type(got) is type(want) and got == want, f"{where}: {got!r} != {want!r}"


# --------------------------------------------------------------------------
# tensors written by torch in both formats
# --------------------------------------------------------------------------


def dtype_tensors() -> dict[str, "torch.Tensor"]:
    g = torch.Generator().manual_seed(0)
    f = torch.randn(3, 4, generator=g)
    f[0, 0], f[0, 1], f[0, 2], f[0, 3] = float("nan"), float("inf"), -float("inf"), -0.0
    ints = torch.randint(-1000, 1000, (5, 2), generator=g)
    return {
        "float32": f,
        "float16": f.half(),
        "bfloat16": torch.randn(4, 3, generator=g).bfloat16(),
        "float64": f.double() * 1e300,
        "int64": ints * (2**40),
        "int32": ints.int() * 100000,
        "int16": ints.short(),
        "int8": (ints % 128).to(torch.int8),
        "uint8": torch.arange(256, dtype=torch.uint8).reshape(16, 16),
        "bool": torch.rand(7, generator=g) > 0.5,
        "complex64": torch.complex(f, -f),
        "uint16": torch.tensor([0, 1, 65535], dtype=torch.uint16),  # _rebuild_tensor_v3
    }


@pytest.mark.parametrize("fmt", FORMATS)
def test_dtypes(tmp_path: Path, fmt: str) -> None:
    tensors = dtype_tensors()
    got = roundtrip(tensors, tmp_path, fmt)
    assert_same(got, tensors)
    assert got["bfloat16"].dtype == np.float32


@pytest.mark.parametrize("fmt", FORMATS)
def test_zero_dim_and_empty(tmp_path: Path, fmt: str) -> None:
    obj = {
        "scalar_f": torch.tensor(3.5),
        "scalar_i": torch.tensor(-7),
        "scalar_b": torch.tensor(True),
        "empty": torch.empty(0),
        "empty_2d": torch.zeros(0, 3),
        "empty_mid": torch.ones(2, 0, 4, dtype=torch.int32),
        "empty_slice": torch.arange(10.0)[5:5],
    }
    got = roundtrip(obj, tmp_path, fmt)
    assert_same(got, obj)
    assert got["scalar_f"].shape == () and got["scalar_f"] == 3.5


@pytest.mark.parametrize("fmt", FORMATS)
def test_views_and_shared_storage(tmp_path: Path, fmt: str) -> None:
    base = torch.arange(60, dtype=torch.float32).reshape(5, 12)
    obj = {
        "base": base,
        "transposed": base.t(),
        "sliced": base[1:4, 3::2],  # storage offset 15, strides (12, 2)
        "row": base[4],
        "column": base[:, 7],
        "expanded": torch.arange(3.0).expand(4, 3),  # stride 0
        "permuted": torch.arange(24).reshape(2, 3, 4).permute(2, 0, 1),
    }
    assert obj["sliced"].storage_offset() == 15
    got = roundtrip(obj, tmp_path, fmt)
    assert_same(got, obj)
    # Arrays sharing one torch storage must still be independent copies.
    got["base"][1, 3] = -1.0
    assert got["sliced"][0, 0] == 15.0 and got["transposed"][3, 1] == 15.0


@pytest.mark.parametrize("fmt", FORMATS)
def test_same_tensor_twice_is_one_array(tmp_path: Path, fmt: str) -> None:
    t = torch.arange(4.0)
    got = roundtrip({"a": t, "b": t, "c": [t]}, tmp_path, fmt)
    assert got["a"] is got["b"] is got["c"][0]


@pytest.mark.parametrize("fmt", FORMATS)
def test_module_state_dict(tmp_path: Path, fmt: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, bias=False),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 4 * 4, 10),
    )
    model.train()
    model(torch.randn(2, 3, 6, 6))  # move running stats away from defaults
    state = model.state_dict()
    got = roundtrip(state, tmp_path, fmt)
    assert isinstance(got, OrderedDict)
    assert_same(got, state)
    assert got["1.num_batches_tracked"].dtype == np.int64
    assert got["1.num_batches_tracked"].shape == () and got["1.num_batches_tracked"] == 1
    # state_dict() attaches per-module version metadata as an attribute.
    assert got._metadata[""] == state._metadata[""]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("protocol", [2, 4])
def test_nested_checkpoint(tmp_path: Path, fmt: str, protocol: int) -> None:
    state = OrderedDict(
        [("module.conv.weight", torch.randn(4, 2, 3, 3)), ("module.fc.bias", torch.zeros(4))]
    )
    obj = {
        "epoch": 3,
        "arch": "x",
        "state_dict": state,
        "best_acc1": torch.tensor(71.5),
        "lr": 0.125,
        "flags": [True, None, "s", b"raw\xff"],
        "shape": (1, (2, 3)),
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
    }
    got = roundtrip(obj, tmp_path, fmt, pickle_protocol=protocol)
    assert type(got) is dict and list(got) == list(obj)
    assert_same(got, obj)


@pytest.mark.parametrize("fmt", FORMATS)
def test_parameters(tmp_path: Path, fmt: str) -> None:
    plain = torch.nn.Parameter(torch.randn(3, 2))
    frozen = torch.nn.Parameter(torch.arange(4.0), requires_grad=False)
    with_attr = torch.nn.Parameter(torch.ones(2, 2))
    with_attr.note = "extra"  # pickled through _rebuild_parameter_with_state
    tensor_attr = torch.full((2,), 5.0)
    tensor_attr.tag = 1  # pickled through torch._tensor._rebuild_from_type_v2
    obj = {"p": plain, "f": frozen, "s": with_attr, "t": tensor_attr}
    got = roundtrip(obj, tmp_path, fmt)
    assert_same(got, obj)
    assert_same(roundtrip(plain, tmp_path, fmt), plain)


@pytest.mark.parametrize("fmt", FORMATS)
def test_torch_values_as_data(tmp_path: Path, fmt: str) -> None:
    obj = {
        "size": torch.Size([2, 3]),
        "dtype": torch.float16,
        "device": torch.device("cpu"),
        "np_scalar": np.float64(0.75),
        "np_array": np.arange(6, dtype=np.int16).reshape(2, 3),
        "storage": torch.arange(5, dtype=torch.int32).untyped_storage(),
    }
    got = roundtrip(obj, tmp_path, fmt)
    assert got["size"] == (2, 3) and type(got["size"]) is tuple
    assert got["dtype"] == "torch.float16"
    assert got["device"] == "cpu"
    assert got["np_scalar"] == 0.75 and got["np_scalar"].dtype == np.float64
    np.testing.assert_array_equal(got["np_array"], obj["np_array"])
    # A bare (untyped) storage comes back as its raw bytes.
    np.testing.assert_array_equal(
        got["storage"], np.arange(5, dtype="<i4").view(np.uint8)
    )


def test_big_endian_zip(tmp_path: Path) -> None:
    """Zip files record their byte order; a 'big' file must be swapped back."""
    t = torch.tensor([1.5, -2.25, 3e10], dtype=torch.float32)
    src = save({"w": t}, tmp_path / "little.pt", "zip")
    dst = tmp_path / "big.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in info.filename:
                data = np.frombuffer(data, "<f4").astype(">f4").tobytes()
            zout.writestr(info, data)
    got = load_torch_file(dst)
    np.testing.assert_array_equal(got["w"], t.numpy())
    assert got["w"].dtype == np.float32 and got["w"].dtype.isnative


# --------------------------------------------------------------------------
# the shared pretrained weights
# --------------------------------------------------------------------------


def shared_weight(name: str) -> Path:
    root = Path(os.environ.get("JAXFACE_SHARED", REPO_ROOT.parent / "shared"))
    path = root / "data" / "weights" / name
    if not path.is_file():
        pytest.skip(f"shared weights not found at {path} (set JAXFACE_SHARED)")
    return path


def compare_with_torch(path: Path) -> Any:
    got = load_torch_file(path)
    want = torch.load(path, map_location="cpu", weights_only=False)
    assert_same(got, want, path.name)
    return got


@pytest.mark.parametrize(
    "name, is_zip, n_tensors, example, shape",
    [
        # Despite the .pth name this file uses the legacy (non-zip) format.
        ("retinaface_mnet025_relu_2019.pth", False, 300, "body.stage1.0.0.weight", (8, 3, 3, 3)),
        ("blazeface_front.pth", False, 74, "backbone1.0.weight", (24, 3, 5, 5)),
        ("blazeface_back.pth", True, 138, "backbone.0.weight", (24, 3, 5, 5)),
    ],
)
def test_shared_state_dicts(
    name: str, is_zip: bool, n_tensors: int, example: str, shape: tuple[int, ...]
) -> None:
    path = shared_weight(name)
    assert zipfile.is_zipfile(path) == is_zip
    got = compare_with_torch(path)
    assert isinstance(got, OrderedDict) and len(got) == n_tensors
    assert all(isinstance(v, np.ndarray) for v in got.values())
    assert got[example].shape == shape and got[example].dtype == np.float32


def test_shared_mobilenet_pretrain() -> None:
    path = shared_weight("mobilenetV1X0.25_pretrain.tar")
    assert not zipfile.is_zipfile(path) and not tarfile.is_tarfile(path)
    got = compare_with_torch(path)
    assert list(got) == ["epoch", "arch", "state_dict", "best_acc1", "optimizer"]
    state = got["state_dict"]
    assert isinstance(state, OrderedDict) and len(state) == 164
    assert all(k.startswith("module.") for k in state)
    assert state["module.fc.weight"].shape == (1000, 256)


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------


def check_error(path: Path, *fragments: str, exc: type = ValueError) -> None:
    with pytest.raises(exc) as info:
        load_torch_file(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message


def test_missing_file(tmp_path: Path) -> None:
    check_error(tmp_path / "nope.pth", "no such file", exc=FileNotFoundError)


def test_directory(tmp_path: Path) -> None:
    check_error(tmp_path, "not a regular file")


def test_garbage_and_empty_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.pth"
    text.write_text("these are not the weights you are looking for\n")
    check_error(text, "expected a torch.save checkpoint")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    check_error(empty, "empty")
    noise = tmp_path / "noise.pth"
    noise.write_bytes(b"\x80" + bytes(range(256)) * 4)
    check_error(noise, "corrupt or unsupported")


def test_plain_pickle_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    check_error(path, "magic number")


def test_real_tar_archive(tmp_path: Path) -> None:
    member = tmp_path / "member.txt"
    member.write_text("hello")
    path = tmp_path / "archive.tar"
    with tarfile.open(path, "w") as tar:
        tar.add(member, arcname="member.txt")
    check_error(path, "tar archive")


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_files(tmp_path: Path, fmt: str) -> None:
    path = save({"w": torch.randn(64, 64)}, tmp_path / "full.pt", fmt)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 100, 20):
        short = tmp_path / f"cut{cut}.pt"
        short.write_bytes(data[:cut])
        check_error(short)
    if fmt == "zip":
        check_error(short, "zip")


def test_other_zip_archive(tmp_path: Path) -> None:
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("folder/readme.txt", "hi")
    check_error(path, "data.pkl")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.marker}",))


def legacy_stream(*objects: Any) -> bytes:
    out = io.BytesIO()
    for obj in objects:
        pickle.dump(obj, out, protocol=2)
    return out.getvalue()


def test_disallowed_global_legacy(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil_legacy.pth"
    path.write_bytes(
        legacy_stream(0x1950A86A20F9469CFC6C, 1001, {}, {"x": _Evil(marker)}, [])
    )
    check_error(path, "disallowed global", "system")
    assert not marker.exists()


def test_disallowed_global_zip(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    src = save({"w": torch.ones(2)}, tmp_path / "good.pt", "zip")
    path = tmp_path / "evil_zip.pth"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("/data.pkl"):
                data = pickle.dumps(_Evil(marker), protocol=2)
            zout.writestr(info, data)
    check_error(path, "disallowed global", "system")
    assert not marker.exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_whole_module_is_refused(tmp_path: Path, fmt: str) -> None:
    path = save(torch.nn.Linear(2, 2), tmp_path / "module.pt", fmt)
    check_error(path, "disallowed global", "torch.nn.modules.linear.Linear")


def test_out_of_bounds_strides_are_refused(tmp_path: Path) -> None:
    """A forged tensor header must not make the reader walk past its storage."""
    path = save({"w": torch.arange(4.0)}, tmp_path / "ok.pt", "legacy")
    data = bytearray(path.read_bytes())
    # Size (4,) is written as BININT1 4 inside a TUPLE1; make it 400 elements.
    needle = b"K\x04\x85"
    assert data.count(needle) == 1
    data[data.index(needle) : data.index(needle) + 3] = b"M\x90\x01\x85"
    path.write_bytes(bytes(data))
    check_error(path, "reaches element")


# --------------------------------------------------------------------------
# no torch at run time
# --------------------------------------------------------------------------


def test_reader_never_imports_torch(tmp_path: Path) -> None:
    zip_file = save({"w": torch.arange(6.0).reshape(2, 3)}, tmp_path / "z.pt", "zip")
    legacy_file = save(
        {"w": torch.arange(6.0).reshape(2, 3).bfloat16()}, tmp_path / "l.pt", "legacy"
    )
    # Load the module straight from its file so the check covers this module
    # alone, whatever the jaxface package __init__ imports.
    script = textwrap.dedent(
        f"""
        import importlib.util, sys
        sys.modules["torch"] = None  # any "import torch" now raises ImportError
        spec = importlib.util.spec_from_file_location("torch_pickle", {str(MODULE_PATH)!r})
        mod = importlib.util.module_from_spec(spec)
        sys.modules["torch_pickle"] = mod
        spec.loader.exec_module(mod)
        for path in ({str(zip_file)!r}, {str(legacy_file)!r}):
            w = mod.load_torch_file(path)["w"]
            assert w.shape == (2, 3) and w.sum() == 15.0, w
        loaded = [m for m, v in sys.modules.items() if m.split(".")[0] == "torch" and v is not None]
        assert not loaded, loaded
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
