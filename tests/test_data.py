"""edgetrain.data: digits, IDX (MNIST family), UEA/UCR .ts, with_online and stream.

No test touches the network: IDX files are written in tmp_path in the real format, checksums are
patched into the source table, and urlopen is replaced where a download path is exercised.
"""

from __future__ import annotations

import hashlib
import io
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from mnist_files import idx_bytes, trust, write_gz

from edgetrain.data import (
    DATASETS,
    IDX_SOURCES,
    Dataset,
    Sample,
    Split,
    load_dataset,
    load_ts,
    parse_idx,
    stratified_split,
    stream,
    with_online,
)
from edgetrain.data.digits import digits_in_mnist_frame, load_digits
from edgetrain.data.locate import shared_data_dirs


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    """Every test gets an empty cache and no $EDGETRAIN_DATA, so the user's files never leak in."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("EDGETRAIN_DATA", raising=False)


def row_keys(x: torch.Tensor) -> set[bytes]:
    """One hashable key per sample, to compare splits by content."""
    return {r.tobytes() for r in x.reshape(x.shape[0], -1).numpy()}


def id_dataset(labels: list[int], n_classes: int) -> Dataset:
    """A dataset whose inputs are their own sample ids (x[i] == i), for tracking samples."""
    y = torch.tensor(labels, dtype=torch.int64)
    x = torch.arange(len(labels), dtype=torch.float32).reshape(-1, 1)
    return Dataset("ids", Split(x, y), Split(x[:2], y[:2]), (1,), tuple(map(str, range(n_classes))))


# ----------------------------------------------------------------------------------------- digits

def test_digits_shapes_range_and_classes():
    ds = load_dataset("digits")
    assert ds.name == "digits" and ds.n_classes == 10 and ds.input_shape == (1, 8, 8)
    assert ds.train.x.shape[1:] == ds.test.x.shape[1:] == (1, 8, 8)
    assert ds.train.x.shape[0] + ds.test.x.shape[0] == 1797
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64
    both = torch.cat([ds.train.x, ds.test.x])
    assert float(both.min()) == 0.0 and float(both.max()) == 1.0
    assert ds.online is None and ds.meta["split"]["seed"] == 0


def test_digits_split_is_stratified_and_disjoint():
    ds = load_dataset("digits")
    n_train, n_test = ds.train.y.bincount(minlength=10), ds.test.y.bincount(minlength=10)
    per_class_fraction = n_test / (n_train + n_test)
    assert torch.all((per_class_fraction - 0.3).abs() <= 1 / (n_train + n_test))
    assert abs(ds.test.y.numel() / 1797 - 0.3) < 0.01
    assert not row_keys(ds.train.x) & row_keys(ds.test.x)  # digits has no duplicate images


def test_digits_seed_controls_split():
    a, b, c = load_dataset("digits", seed=1), load_dataset("digits", seed=1), load_dataset("digits")
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.train.y, b.train.y)
    assert row_keys(a.test.x) != row_keys(c.test.x)


def test_digits28_is_digits_in_mnist_frame_same_split():
    small, big = load_dataset("digits", seed=2), load_dataset("digits28", seed=2)
    assert big.name == "digits28" and big.input_shape == (1, 28, 28) and "resampled" in big.meta
    assert torch.equal(small.train.y, big.train.y) and torch.equal(small.test.y, big.test.y)
    assert big.train.x.shape == (small.train.x.shape[0], 1, 28, 28)
    frame = torch.ones(28, 28, dtype=torch.bool)
    frame[4:24, 4:24] = False
    assert float(big.train.x[:, :, frame].abs().max()) == 0.0  # MNIST's 4-pixel empty border
    assert float(big.train.x.min()) >= 0.0 and float(big.train.x.max()) <= 1.0
    # the ink of each image survives resampling (bilinear weights sum to 1): its mean moves little
    ratio = big.train.x.mean(dim=(1, 2, 3)) / (small.train.x.mean(dim=(1, 2, 3)) * 400 / 784)
    assert float((ratio - 1).abs().max()) < 0.15


def test_digits_in_mnist_frame_by_hand():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 0, 0] = 1.0  # one lit corner pixel; 8 -> 20 is a 2.5x scale, align_corners=False
    out = digits_in_mnist_frame(x)[0, 0]
    # output row r samples source row (r + 0.5) / 2.5 - 0.5: rows 0, 1 sample -0.3 (clamped to 0) and 0.1
    assert out[4, 4] == 1.0
    assert out[4, 5] == pytest.approx(0.9) and out[5, 4] == pytest.approx(0.9)
    assert out[5, 5] == pytest.approx(0.81)
    assert out[6, 4] == pytest.approx(0.5)  # row 2 samples 0.5: halfway between rows 0 and 1
    assert float(out[:4].abs().sum() + out[:, :4].abs().sum()) == 0.0
    ones = digits_in_mnist_frame(torch.ones(2, 1, 8, 8))
    assert torch.allclose(ones[:, :, 4:24, 4:24], torch.ones(2, 1, 20, 20), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"8x8 digit images shaped \(N, 1, 8, 8\), got \(1, 8, 8\)"):
        digits_in_mnist_frame(torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="size 8 .* or 28 .* got 16"):
        load_digits(size=16)


def test_stratified_split_partitions_indices():
    y = torch.tensor([0] * 10 + [1] * 7 + [2] * 3)
    kept, held = stratified_split(y, 0.3, seed=4)
    assert sorted(torch.cat([kept, held]).tolist()) == list(range(20))
    assert y[held].bincount(minlength=3).tolist() == [3, 2, 1]
    assert torch.equal(held, stratified_split(y, 0.3, seed=4)[1])
    with pytest.raises(ValueError, match="fraction"):
        stratified_split(y, 1.5)


def test_with_online_fraction_stratification_disjointness():
    ds = load_dataset("digits")
    on = with_online(ds, fraction=0.25, seed=3)
    n = ds.train.y.numel()
    assert on.train.y.numel() + on.online.y.numel() == n
    assert abs(on.online.y.numel() / n - 0.25) < 0.01
    per_class = on.online.y.bincount(minlength=10) / ds.train.y.bincount(minlength=10)
    assert torch.all((per_class - 0.25).abs() < 0.01)
    train, online, test = row_keys(on.train.x), row_keys(on.online.x), row_keys(on.test.x)
    assert not train & online and not online & test and not train & test
    assert train | online == row_keys(ds.train.x)
    assert on.test is ds.test and on.meta["online"]["n_online"] == on.online.y.numel()
    again = with_online(ds, fraction=0.25, seed=3)
    assert torch.equal(again.online.x, on.online.x)
    assert row_keys(with_online(ds, fraction=0.25, seed=4).online.x) != online


def test_with_online_tracks_ids_and_rejects_bad_use():
    ds = id_dataset([0, 1] * 10, 2)
    on = with_online(ds, 0.3, seed=0)
    ids_train, ids_online = set(on.train.x.flatten().tolist()), set(on.online.x.flatten().tolist())
    assert not ids_train & ids_online and ids_train | ids_online == set(range(20))
    assert on.online.y.bincount().tolist() == [3, 3]
    with pytest.raises(ValueError, match="already has an online split"):
        with_online(on)
    with pytest.raises(ValueError, match="strictly between"):
        with_online(ds, 1.0)


@pytest.mark.parametrize(
    "x, y, message",
    [
        (torch.tensor([[0.0], [float("nan")]]), torch.tensor([0, 1]), "non-finite"),
        (torch.tensor([[0.0], [1.0]]), torch.tensor([0, 2]), "labels must lie in 0..1"),
        (torch.tensor([[0.0], [1.0]], dtype=torch.float64), torch.tensor([0, 1]), "float32"),
        (torch.tensor([[0.0], [1.0]]), torch.tensor([0, 1], dtype=torch.int32), "int64"),
        (torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 1]), "expected \\(1,\\)"),
        (torch.tensor([[0.0]]), torch.tensor([0, 1]), "1 inputs but 2 labels"),
    ],
)
def test_dataset_validates_its_splits(x, y, message):
    good = Split(torch.zeros(1, 1), torch.zeros(1, dtype=torch.int64))
    with pytest.raises(ValueError, match=message):
        Dataset("bad", Split(x, y), good, (1,), ("a", "b"))


# -------------------------------------------------------------------------------------------- IDX

def write_mnist(folder: Path, n_train: int = 5, n_test: int = 3, **override: bytes) -> dict:
    """Four small MNIST-format files in ``folder``; returns ``{filename: (md5, array)}``.
    ``override`` replaces a file's raw (uncompressed) bytes, keyed by e.g. ``train_labels``."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    out = {}
    for filename, arr in arrays.items():
        key = filename.split("-idx")[0].replace("t10k", "test").replace("-", "_")
        raw = override.get(key, idx_bytes(arr, 0x08))
        out[filename] = (write_gz(folder / filename, raw), arr)
    return out


def test_idx_files_load_with_matching_md5(tmp_path, monkeypatch):
    files = write_mnist(tmp_path / "mnist")
    trust(monkeypatch, files)
    ds = load_dataset("mnist", data_dir=tmp_path)
    images = files["train-images-idx3-ubyte.gz"][1]
    assert ds.train.x.shape == (5, 1, 28, 28) and ds.test.x.shape == (3, 1, 28, 28)
    assert ds.input_shape == (1, 28, 28) and ds.n_classes == 10
    assert torch.allclose(ds.train.x[:, 0], torch.from_numpy(images).float() / 255)
    assert ds.train.y.tolist() == files["train-labels-idx1-ubyte.gz"][1].tolist()
    assert ds.test.y.dtype == torch.int64 and 0.0 <= float(ds.train.x.min()) <= 1.0
    assert ds.meta["md5"]["train-images-idx3-ubyte.gz"] == files["train-images-idx3-ubyte.gz"][0]


@pytest.mark.parametrize("layout", ["direct", "subfolder", "env", "cache"])
def test_idx_lookup_places(tmp_path, monkeypatch, layout):
    folder = {
        "direct": tmp_path / "d",
        "subfolder": tmp_path / "d" / "kmnist",
        "env": tmp_path / "e" / "kmnist",
        "cache": tmp_path / "cache" / "edgetrain" / "kmnist",
    }[layout]
    trust(monkeypatch, write_mnist(folder), "kmnist")
    monkeypatch.setenv("EDGETRAIN_DATA", str(tmp_path / "e"))
    ds = load_dataset("KMNIST", data_dir=tmp_path / "d")
    assert ds.name == "kmnist" and ds.classes[0] == "o"
    assert Path(ds.meta["files"]["t10k-labels-idx1-ubyte.gz"]).parent == folder


def test_idx_missing_file_names_file_md5_places_and_remedy(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("download=False must not open a URL")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    files = write_mnist(tmp_path)
    trust(monkeypatch, files)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("mnist", data_dir=tmp_path, download=False)
    msg = str(err.value)
    assert "t10k-labels-idx1-ubyte.gz" in msg and files["t10k-labels-idx1-ubyte.gz"][0] in msg
    assert "train-images" not in msg  # only the missing file is reported
    for hint in ("--data-dir", "EDGETRAIN_DATA", "--download", str(tmp_path)):
        assert hint in msg


def test_idx_real_checksums_reject_foreign_files(tmp_path):
    write_mnist(tmp_path)  # not the published MNIST bytes
    with pytest.raises(ValueError) as err:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    msg = str(err.value)
    assert "md5 mismatch" in msg and "train-images-idx3-ubyte.gz" in msg
    assert IDX_SOURCES["fashion-mnist"].md5["train-images-idx3-ubyte.gz"] in msg
    assert "8d4fb7e6c68d591d4c3dfef9ec88bf0d" in msg


def test_idx_flipped_byte_fails_checksum(tmp_path, monkeypatch):
    files = write_mnist(tmp_path)
    trust(monkeypatch, files)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="md5 mismatch") as err:
        load_dataset("mnist", data_dir=tmp_path)
    assert str(path) in str(err.value) and files[path.name][0] in str(err.value)


def test_idx_good_copy_elsewhere_wins_over_corrupt_one(tmp_path, monkeypatch):
    files = write_mnist(tmp_path / "cache" / "edgetrain" / "mnist")
    write_mnist(tmp_path / "user", n_train=6)  # other content, wrong md5
    trust(monkeypatch, files)
    assert load_dataset("mnist", data_dir=tmp_path / "user").train.y.numel() == 5


@pytest.mark.parametrize(
    "override, message",
    [
        ({"train_images": idx_bytes(np.zeros((5, 28, 28)), 0x08)[:-100]}, "truncated payload"),
        ({"train_images": idx_bytes(np.zeros((5, 28, 28)), 0x08) + b"x"}, "unexpected bytes"),
        ({"train_labels": idx_bytes(np.zeros((5, 1, 1)), 0x08)}, "expected 0x00000801"),
        ({"test_images": idx_bytes(np.zeros((3, 28, 28)), 0x08, magic=0x0803 | 1 << 24)},
         "wrong IDX magic"),
        ({"train_labels": idx_bytes(np.zeros(4), 0x08)}, "5 images but .* 4 labels"),
        ({"train_labels": idx_bytes(np.full(5, 10), 0x08)}, "label 10 out of range"),
    ],
)
def test_idx_corrupt_payloads_name_file_and_expectation(tmp_path, monkeypatch, override, message):
    files = write_mnist(tmp_path, **override)
    trust(monkeypatch, files)
    with pytest.raises(ValueError, match=message) as err:
        load_dataset("mnist", data_dir=tmp_path)
    assert str(tmp_path) in str(err.value) and "idx" in str(err.value)


def test_idx_bad_gzip(tmp_path, monkeypatch):
    files = write_mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])  # cut the gzip trailer off
    files[path.name] = (hashlib.md5(path.read_bytes()).hexdigest(), None)
    trust(monkeypatch, files)
    with pytest.raises(ValueError, match="not a valid gzip file") as err:
        load_dataset("mnist", data_dir=tmp_path)
    assert str(path) in str(err.value)


def test_parse_idx_types_and_header_errors():
    a = np.arange(-6, 6, dtype=np.int16).reshape(3, 4)
    out = parse_idx(idx_bytes(a, 0x0B))
    assert out.dtype == np.int16 and out.dtype.isnative and np.array_equal(out, a)
    f = np.linspace(0, 1, 5, dtype=np.float32)
    assert np.array_equal(parse_idx(idx_bytes(f, 0x0D)), f)
    with pytest.raises(ValueError, match="too short"):
        parse_idx(b"\x00\x00", "x.idx")
    with pytest.raises(ValueError, match="not an IDX file"):
        parse_idx(b"\x00\x00\x42\x01" + bytes(8), "x.idx")
    with pytest.raises(ValueError, match="truncated IDX header"):
        parse_idx(b"\x00\x00\x08\x03" + bytes(4), "x.idx")


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_idx_download_goes_to_cache_atomically(tmp_path, monkeypatch):
    served = tmp_path / "served"
    files = write_mnist(served)
    trust(monkeypatch, files)
    urls = []

    def fake_urlopen(url, timeout=None):
        urls.append(url)
        return FakeResponse((served / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    ds = load_dataset("mnist", download=True)
    cache = tmp_path / "cache" / "edgetrain" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(files)  # no temp files left
    assert urls[0] == IDX_SOURCES["mnist"].mirrors[0] + "train-images-idx3-ubyte.gz"
    assert ds.train.x.shape == (5, 1, 28, 28)
    urls.clear()
    load_dataset("mnist", download=True)
    assert urls == []  # already cached and verified


def test_idx_download_with_wrong_md5_leaves_nothing(tmp_path, monkeypatch):
    trust(monkeypatch, write_mnist(tmp_path / "served"))
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: FakeResponse(b"junk"))
    with pytest.raises(OSError, match="download failed.*md5"):
        load_dataset("mnist", download=True)
    assert list((tmp_path / "cache" / "edgetrain" / "mnist").iterdir()) == []


# --------------------------------------------------------------------------------------------- ts

def shared_dir(name: str) -> Path:
    for d in shared_data_dirs():
        if (d / name / f"{name}_TRAIN.ts").is_file():
            return d / name
    pytest.skip(f"shared/data/{name} not present")


def test_ts_basic_motions():
    shared_dir("BasicMotions")
    ds = load_dataset("BasicMotions")
    assert ds.train.x.shape == (40, 6, 100) and ds.test.x.shape == (40, 6, 100)
    assert ds.input_shape == (6, 100) and ds.classes == ("Standing", "Running", "Walking",
                                                         "Badminton")
    assert ds.train.y.bincount().tolist() == [10, 10, 10, 10]
    assert torch.allclose(ds.train.x.mean(dim=(0, 2)), torch.zeros(6), atol=1e-5)
    assert torch.allclose(ds.train.x.std(dim=(0, 2), correction=0), torch.ones(6), atol=1e-4)
    assert len(ds.meta["normalization"]["mean"]) == 6 and ds.meta["normalization"]["stats_from"]


def test_ts_gunpoint_with_prefix():
    shared_dir("GunPoint")
    ds = load_dataset("ts:GunPoint")
    assert ds.name == "GunPoint" and ds.input_shape == (1, 150) and ds.classes == ("1", "2")
    assert ds.train.x.shape[0] == 50 and ds.test.x.shape[0] == 150
    assert ds.train.y.bincount().tolist() == [24, 26] and ds.test.y.bincount().tolist() == [76, 74]


def test_ts_japanese_vowels_unequal_then_padded():
    folder = shared_dir("JapaneseVowels")
    with pytest.raises(ValueError, match="unequal series lengths") as err:
        load_dataset("JapaneseVowels")
    msg = str(err.value)
    assert "JapaneseVowels_TRAIN.ts: lengths 7 to 26" in msg and "lengths 7 to 29" in msg
    assert "pad='edge'" in msg
    ds = load_ts(folder / "JapaneseVowels_TRAIN.ts", folder / "JapaneseVowels_TEST.ts",
                 pad="edge", normalize=False)
    assert ds.train.x.shape == (270, 12, 29) and ds.test.x.shape == (370, 12, 29)
    assert ds.n_classes == 9 and ds.train.y.bincount().tolist() == [30] * 9
    first = ds.train.x[0]  # the first training case has 20 time points
    assert torch.equal(first[:, 20:], first[:, 19:20].expand(12, 9))
    assert load_dataset("JapaneseVowels", ts_pad="edge").input_shape == (12, 29)


TS_HEADER = "# tiny\n@problemName Tiny\n@univariate false\n@dimensions 2\n@classLabel true a b\n@data\n"


def write_ts(folder: Path, train_rows: list[str], test_rows: list[str] | None = None,
             header: str = TS_HEADER) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    train, test = folder / "Tiny_TRAIN.ts", folder / "Tiny_TEST.ts"
    train.write_text(header + "\n".join(train_rows) + "\n")
    test.write_text(header + "\n".join(test_rows or ["1,1,1:2,2,2:a"]) + "\n")
    return train, test


def test_ts_tiny_values_and_train_normalization(tmp_path):
    train, test = write_ts(tmp_path, ["1,2,3:0,0,0:a", "3,4,5:2,2,2:b"], ["2,2,2:1,1,1:b"])
    ds = load_ts(train, test)
    assert ds.name == "Tiny" and ds.classes == ("a", "b") and ds.train.y.tolist() == [0, 1]
    mean, std = ds.meta["normalization"]["mean"], ds.meta["normalization"]["std"]
    assert mean == pytest.approx([3.0, 1.0]) and std == pytest.approx([np.sqrt(5 / 3), 1.0])
    expected = (torch.tensor([[2.0] * 3, [1.0] * 3]) - torch.tensor([[3.0], [1.0]])) \
        / torch.tensor([[np.sqrt(5 / 3)], [1.0]])
    assert torch.allclose(ds.test.x[0], expected.float())
    raw = load_ts(train, test, normalize=False)
    assert raw.train.x[0].tolist() == [[1, 2, 3], [0, 0, 0]] and "normalization" not in raw.meta


@pytest.mark.parametrize(
    "rows, line, message",
    [
        (["1,2,3:0,0,0:a", "1,?,3:0,0,0:b"], 8, "missing value '\\?' in channel 0"),
        (["1,2,3:0,0,0:a", "1,2,3:0,0,0:c"], 8, "label 'c' is not among .*'a', 'b'"),
        (["1,2,3:0,0,0:a", "1,2,3:a"], 8, "expected 2 channel\\(s\\), found 1"),
        (["1,2,3:0,0,0:a", "1,2,x3:0,0,0:b"], 8, "'x3' is not a number"),
        (["1,2,3:0,0,0:a", "b"], 8, "expected channel values"),
        (["1,2,3:0,0:a"], 7, "channels have different lengths"),
    ],
)
def test_ts_line_errors_name_file_and_line(tmp_path, rows, line, message):
    train, test = write_ts(tmp_path, rows)
    with pytest.raises(ValueError, match=message) as err:
        load_ts(train, test)
    assert f"{train}:{line}:" in str(err.value)


@pytest.mark.parametrize(
    "header, message",
    [
        ("@problemName T\n@data\n", "no '@classLabel true"),
        ("@classLabel false\n@data\n", "expected '@classLabel true"),
        ("@classLabel true a b\n", "no '@data' line"),
        ("@timeStamps true\n@classLabel true a b\n@data\n", "time-stamped"),
        ("@classLabel true a b\n1,2:a\n@data\n", "expected a '@' header line"),
        ("@dimensions two\n@classLabel true a\n@data\n", "@dimensions must be a positive"),
    ],
)
def test_ts_header_errors(tmp_path, header, message):
    train, test = write_ts(tmp_path, [], header=header)
    with pytest.raises(ValueError, match=message) as err:
        load_ts(train, test)
    assert str(train) in str(err.value)


def test_ts_declared_series_length_is_checked(tmp_path):
    header = TS_HEADER.replace("@data", "@equalLength true\n@seriesLength 3\n@data")
    train, test = write_ts(tmp_path, ["1,2,3:0,0,0:a", "1,2,3,4:0,0,0,0:b"], header=header)
    with pytest.raises(ValueError, match="length 4, expected 3") as err:
        load_ts(train, test)
    assert f"{train}:10:" in str(err.value)


def test_ts_unequal_tiny_and_pad(tmp_path):
    train, test = write_ts(tmp_path, ["1,2,3:0,0,0:a", "1,2:5,6:b"])
    with pytest.raises(ValueError, match=r"lengths 2 to 3 \(line 8 has 2, line 7 has 3\)"):
        load_ts(train, test)
    ds = load_ts(train, test, pad="edge", normalize=False)
    assert ds.train.x[1].tolist() == [[1, 2, 2], [5, 6, 6]]
    with pytest.raises(ValueError, match="pad must be one of"):
        load_ts(train, test, pad="zero")


def test_ts_found_through_env_and_unknown_name(tmp_path, monkeypatch):
    write_ts(tmp_path / "Tiny", ["1,2,3:0,0,0:a", "3,4,5:2,2,2:b"])
    monkeypatch.setenv("EDGETRAIN_DATA", str(tmp_path))
    assert load_dataset("Tiny").train.x.shape == (2, 2, 3)
    with pytest.raises(FileNotFoundError, match="Nope_TRAIN.ts") as err:
        load_dataset("Nope")
    assert str(tmp_path / "Nope") in str(err.value) and "EDGETRAIN_DATA" in str(err.value)


def test_datasets_table_names():
    assert DATASETS[:5] == ("digits", "digits28", "mnist", "fashion-mnist", "kmnist")
    assert "BasicMotions" in DATASETS and len(set(DATASETS)) == len(DATASETS)


# ----------------------------------------------------------------------------------------- stream

def test_stream_yields_every_sample_once_deterministically():
    split = id_dataset([0, 1, 2, 0, 1, 2, 0, 1], 3).train
    steps = list(stream(split, seed=5))
    assert [s.t for s in steps] == list(range(8))
    ids = [int(s.x.item()) for s in steps]
    assert sorted(ids) == list(range(8)) and ids != list(range(8))
    assert all(isinstance(s, Sample) and s.x.shape == (1,) and s.y == split.y[i]
               for s, i in zip(steps, ids, strict=True))
    assert [int(s.x.item()) for s in stream(split, seed=5)] == ids
    assert [int(s.x.item()) for s in stream(split, seed=6)] != ids
    assert [int(s.x.item()) for s in stream(split, seed=None)] == list(range(8))


def test_stream_honours_order():
    split = id_dataset([0, 1, 2, 0, 1, 2], 3).train
    order = torch.tensor([0, 3, 1, 4, 2, 5])  # class-clustered
    steps = list(stream(split, seed=123, order=order))
    assert [int(s.x.item()) for s in steps] == order.tolist()
    assert [s.y for s in steps] == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="0..5"):
        list(stream(split, order=torch.tensor([0, 6])))
    with pytest.raises(ValueError, match="integer"):
        list(stream(split, order=torch.tensor([0.0, 1.0])))


def test_stream_over_digits_online_split():
    on = with_online(load_dataset("digits"), 0.3)
    steps = list(stream(on.online, seed=0))
    assert len(steps) == on.online.y.numel() and steps[0].x.shape == (1, 8, 8)
    assert sorted(s.y for s in steps) == sorted(on.online.y.tolist())
