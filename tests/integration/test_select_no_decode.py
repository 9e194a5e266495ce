"""``random`` scores ids, so its scorers check the images instead of decoding them
(transforms.check_image): the same rows are skipped and counted as by a strategy that decodes,
and the picks are the best hashes among the readable unlabeled rows, for either pipeline and
any sharding of a pool of JPEGs read in units (row-group slices)."""
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import raydal
from raydal.merge import top_k
from raydal.scoring.uncertainty import hash_uniform
from raydal.errors import BadImage
from raydal.transforms import InputSpec, load_image

pytestmark = pytest.mark.integration
SPEC = InputSpec(3, 32)


@pytest.fixture(scope="module")
def jpeg_pool(tmp_path_factory):
    """400 JPEGs of 48x36 in row groups of 64, some damaged in different ways; the ids that
    load_image refuses (the reference: a full decode) are ``bad``."""
    rng = np.random.default_rng(3)
    blobs = []
    for _ in range(400):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (36, 48, 3), dtype=np.uint8)).save(
            buf, format="JPEG", quality=85)
        blobs.append(buf.getvalue())
    bad = {5: blobs[5][: len(blobs[5]) // 2],       # cut in the scan
           17: blobs[17][:40],                       # cut in the header
           64: b"",                                  # empty
           99: b"GIF89a not really",                 # garbage
           130: blobs[130][:-300],                   # last blocks missing
           200: b"\x89PNG\r\n\x1a\n cut",            # a PNG signature, nothing else
           255: blobs[255][:len(blobs[255]) - 600],
           256: blobs[256][:200],
           399: blobs[399][:1000]}
    for i, b in bad.items():
        blobs[i] = b
    unreadable = []
    for i, b in enumerate(blobs):
        try:
            load_image(b, None, SPEC)
        except BadImage:
            unreadable.append(f"{i:05d}")
    assert len(unreadable) >= 7  # most damage is unreadable (PIL reads some cut JPEGs)
    path = tmp_path_factory.mktemp("nodecode") / "pool.parquet"
    ids = [f"{i:05d}" for i in range(400)]
    pq.write_table(pa.table({"id": pa.array(ids, pa.string()),
                             "image": pa.array(blobs, pa.binary())}), path, row_group_size=64)
    labeled = {f"{i:05d}": 0 for i in range(1, 400, 40)}  # 10 labeled, none of them bad
    assert not set(unreadable) & set(labeled)  # labeled rows are dropped before any check
    return path, ids, unreadable, labeled


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()


def test_random_skips_and_counts_what_a_decoding_strategy_skips(ray_cluster, jpeg_pool):
    path, ids, bad, labeled = jpeg_pool
    readable = [i for i in ids if i not in labeled and i not in bad]
    want_ids, want_scores = top_k(np.asarray(readable),
                                  hash_uniform(readable, 0).numpy(), 30)
    decoded = raydal.select(path, _model(), "entropy", budget=30, labeled=labeled,
                            input_spec=SPEC, num_actors=2, batch_size=16, progress=False)
    assert sorted(i for i, _ in decoded.skipped) == bad
    for pipeline, num_actors, batch_size, decode_tasks in [
            ("fused", 2, 16, None), ("fused", 1, 1000, None), ("staged", 1, 7, 2),
            ("staged", 2, 64, None)]:
        sel = raydal.select(path, None, "random", budget=30, labeled=labeled, input_spec=SPEC,
                            num_actors=num_actors, batch_size=batch_size, progress=False,
                            pipeline=pipeline, decode_tasks=decode_tasks)
        assert sel.ids == want_ids.tolist(), (pipeline, num_actors, batch_size)
        np.testing.assert_array_equal(sel.scores, want_scores)
        assert sel.num_scored == decoded.num_scored == len(readable)
        assert sorted(sel.skipped) == sorted(decoded.skipped)  # same rows, same reasons
