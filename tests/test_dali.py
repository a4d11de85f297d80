"""DALI CPU pipelines (device_id=None) on generated JPEGs; the GPU (mixed) path needs a GPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mplfast.data import dali
from mplfast.data.imagefolder import CorruptImageWarning, decode_pil, preflight
from mplfast.errors import UserError

pytestmark = pytest.mark.skipif(not dali.available(), reason="nvidia-dali is not installed")


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("jpegs")
    rs = np.random.RandomState(0)
    files = []
    for i in range(7):
        # smooth images (a gradient + colour per file) so JPEG round trips stay close
        yy, xx = np.mgrid[0:24, 0:30]
        arr = np.stack([(xx * 8 + i * 20) % 256, (yy * 10) % 256,
                        np.full_like(xx, 30 * i + 10)], -1).astype(np.uint8)
        f = root / f"img{i}.jpg"
        Image.fromarray(arr).save(f, quality=95)
        files.append(f)
    bad = root / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + bytes(rs.randint(0, 256, 300).astype(np.uint8)))
    return files, bad


def test_cpu_pipeline_decodes_in_order(jpegs):
    files, _ = jpegs
    x = dali.decode_files(files, 16, batch_size=3)  # 7 files, 3 per batch: padding dropped
    assert x.shape == (7, 16, 16, 3) and x.dtype == torch.uint8
    ref = decode_pil(files, 16).float()
    assert (x.float() - ref).abs().mean() < 6  # same images (resize filters differ slightly)
    # order: the blue channel encodes the file number
    assert torch.all(torch.diff(x[..., 2].float().mean(dim=(1, 2))) > 15)


def test_cpu_pipeline_sharded(jpegs):
    files, _ = jpegs
    seen = []
    for shard in range(2):
        p = dali.imagefolder_pipeline(files, list(range(7)), batch_size=2, image_size=8,
                                      shard_id=shard, num_shards=2)
        n = dali.shard_size(7, shard, 2)
        labels = torch.cat([y for _, y in dali.iterate(p, n)])
        assert labels.numel() == n
        seen.append(labels)
    assert sorted(torch.cat(seen).tolist()) == list(range(7))
    assert not set(seen[0].tolist()) & set(seen[1].tolist())


def test_cpu_random_resized_crop(jpegs):
    files, _ = jpegs
    p = dali.imagefolder_pipeline(files, None, batch_size=4, image_size=12, random_crop=True,
                                  shuffle=True, seed=3)
    x, y = next(dali.iterate(p, 4))
    assert x.shape == (4, 12, 12, 3) and int(x.float().std()) > 5


def test_corrupt_file_skipped_then_pipeline_runs(jpegs):
    files, bad = jpegs
    with pytest.warns(CorruptImageWarning, match="bad.jpg"):
        good, labels = preflight(files[:3] + [bad], [0, 1, 2, 3])
    assert good == files[:3] and labels == [0, 1, 2]
    assert dali.decode_files(good, 8).shape == (3, 8, 8, 3)
    with pytest.raises(UserError, match="bad.jpg"):
        preflight(files[:3] + [bad], None, strict=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="mixed (nvJPEG) decoding needs a GPU")
def test_gpu_mixed_pipeline(jpegs):
    files, _ = jpegs
    p = dali.imagefolder_pipeline(files, None, batch_size=4, image_size=16, device="gpu")
    x, _ = next(dali.iterate(p, 4))
    assert x.is_cuda and x.shape == (4, 16, 16, 3)


def test_stream_batcher_cpu(jpegs):
    files, _ = jpegs
    b = dali.DALIStreamBatcher(files[:4], [0, 1, 0, 1], files, batch_size=2, mu=2, image_size=16,
                               mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), seed=3)
    for step in range(3):  # runs past the end of the 4-file labeled epoch
        x_l, y_l, x_uw, x_us = b.batch(step)
        assert x_l.shape == (2, 3, 16, 16) and x_uw.shape == x_us.shape == (4, 3, 16, 16)
        assert x_l.is_contiguous(memory_format=torch.channels_last)
        assert x_uw.data_ptr() == x_l.data_ptr() + 2 * 768 * 4
        assert x_us.data_ptr() == x_uw.data_ptr() + 4 * 768 * 4
        assert set(y_l.tolist()) <= {0, 1}
        assert not torch.equal(x_uw, x_us)  # strong view differs from weak
        px = x_us * 0.25 + 0.5  # back to [0, 1]: real decoded content, bounded
        assert float(px.min()) >= -1e-5 and float(px.max()) <= 1 + 1e-5
        assert float(px.std()) > 0.05


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="mixed (nvJPEG) decoding needs a GPU")
def test_gpu_stream_batcher(jpegs):
    files, _ = jpegs
    b = dali.DALIStreamBatcher(files[:4], [0, 1, 0, 1], files, batch_size=2, mu=2, image_size=16,
                               mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), seed=3,
                               device="gpu", dtype=torch.bfloat16)
    x_l, y_l, x_uw, x_us = b.batch(0)
    assert x_l.is_cuda and y_l.is_cuda and x_us.shape == (4, 3, 16, 16)
