"""What a user sees on a first selection: the picks, and no ERROR line from Ray.

Ray logs an ERROR for every actor whose constructor arguments sit in the object store while
max_restarts > 0 (core_worker.cc, ray-project/ray#53727): Ray Data's scoring actors had it. The
driver here is a fresh process joined to the session cluster with Ray's default log_to_driver,
so the workers' log lines reach its output too.
"""
import os
import re
import subprocess
import sys

import pytest

from raydal.models import ModelSpec, create_model, save_checkpoint
from raydal.pool import Pool

pytestmark = pytest.mark.integration
#: the ERROR core_worker.cc logs per actor (the text of Ray 2.60's message)
CONSTRUCTOR_ARGS = re.compile(r"constructor arguments in the object store and max_restarts > 0")


@pytest.mark.timeout(600)
def test_a_selection_prints_no_ray_error_lines(ray_cluster, tmp_path, random_images):
    pool = Pool.from_numpy(random_images(240, seed=5), path=tmp_path / "pool.parquet")
    spec = ModelSpec(name="test_resnet", num_classes=10, in_chans=1, img_size=28)
    ckpt = save_checkpoint(create_model(spec, seed=0), spec, tmp_path / "ckpt")
    labels = {f"{i:08d}": i % 10 for i in range(0, 240, 24)}
    code = (f"import ray, raydal\n"
            f"ray.init(address={ray_cluster!r})\n"
            f"sel = raydal.select({pool.path!r}, {str(ckpt)!r}, 'entropy', budget=12, "
            f"labeled={labels!r}, num_actors=2, batch_size=64, progress=False)\n"
            f"print('picked', len(sel.ids), flush=True)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=540, env={**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"})
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert "picked 12" in out.stdout
    errors = [line for line in text.splitlines() if CONSTRUCTOR_ARGS.search(line)]
    assert errors == [], "\n".join(errors)
