"""python -m nvit archtable: the architecture columns of Tables 1 and 7 (exact counts), and the timing at tiny scale."""

from __future__ import annotations

import pytest
import torch

from common.config import override
from common.results import read_block
from common.runtime import REPO_ROOT
from nvit import archtable
from nvit.archtable import ArchTableConfig, arch_dims
from nvit.models import count_dims_params, vit_macs

pytestmark = pytest.mark.kernel_independent  # make test's second kernel pass skips it (pyproject.toml)


@pytest.mark.parametrize(
    "name, dist, params, macs",
    [  # closed forms at 224², patch 16, 1000 classes (integers; the paper rounds: 86M/17.6G, 22M/4.6G, 5.6M/1.2G)
        ("DeiT-B", False, 86_567_656, 17_563_828_224),
        ("DeiT-S", False, 22_050_664, 4_598_882_304),
        ("DeiT-T", False, 5_717_416, 1_253_683_200),
        ("ReViT-S", True, 23_123_280, 4_705_190_400),  # Table 7: 23M, 4.7G
        ("ReViT-T", True, 5_339_136, 1_135_290_112),  # Table 7: 5.9M, 1.3G (not reproduced by the official builder)
    ],
)
def test_architecture_sizes(name, dist, params, macs):
    dims = arch_dims(name, ArchTableConfig(), distillation_token=dist)
    assert count_dims_params(dims) == params and vit_macs(dims) == macs


def test_tiny_run_counts_times_and_renders(tmp_path):
    """Two small models at 32² input, one timed round: the record, its counts (equal to the closed forms, checked
    inside run) and the rendered block; the card's block is rewritten only in a copy of the card."""
    cfg = override(ArchTableConfig(), ["models=('DeiT-T', 'ReViT-T')", "reference='DeiT-T'", "image_size=32",
                                       "batch_size=1", "rounds=2", "warmup=0"])  # fmt: skip
    record = archtable.run(cfg, device=torch.device("cpu"), threads=1, command="python -m nvit archtable --set ...")
    rows, speed = record.extra["rows"], record.extra["speedups"]
    assert set(rows) == set(speed) == {"DeiT-T", "ReViT-T"} and speed["DeiT-T"]["median"] == 1.0
    assert rows["ReViT-T"]["params"] == count_dims_params(arch_dims("ReViT-T", cfg))
    m = record.get(archtable.T_ARCH, "DeiT-T", "params, with distillation token")
    assert m.paper == 5.6 and "Table 1" in m.paper_source
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- BEGIN GENERATED: archtable -->\n<!-- END GENERATED: archtable -->\n")
    archtable.write(record, tmp_path / "out", readme)
    block = read_block(readme.read_text(), "archtable")
    assert "| ReViT-T | 176 |" in block and "5.9" in block and "measured here" in block
    assert (tmp_path / "out" / archtable.TABLE_FILE).exists()
    untimed = archtable.run(override(cfg, ["rounds=0"]), device=torch.device("cpu"), threads=1, command="c")
    assert untimed.extra["speedups"] == {} and "Not timed" in archtable.render(untimed)
    with pytest.raises(Exception, match="reference"):
        archtable.run(override(cfg, ["reference='DeiT-B'"]), device=torch.device("cpu"), threads=1, command="c")


def test_card_block_matches_the_committed_table():
    saved = REPO_ROOT / "results" / "nvit" / "archtable" / archtable.TABLE_FILE
    if not saved.exists():
        pytest.skip("no archtable record committed yet")
    from common.results import load_record

    block = read_block((REPO_ROOT / "nvit" / "README.md").read_text(), archtable.BLOCK)
    assert block == archtable.render(load_record(saved)).strip()
