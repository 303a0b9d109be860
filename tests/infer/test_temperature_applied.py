"""A stored temperature reaches inference through open_runner (and can be switched off)."""

from __future__ import annotations

from pathlib import Path

import torch

from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.infer.runners import open_runner
from tunepp_deploy.model import TUNEPP
from tunepp_deploy.train.checkpoint import save_checkpoint


def test_checkpoint_temperature_divides_logits(net: TUNEPP, cfg: TuneppConfig, tmp_path: Path) -> None:
    p = save_checkpoint(tmp_path / "t.pt", net, cfg, temperature=torch.tensor([2.5]))
    x = torch.rand(1, 1, *cfg.window)
    masks = [torch.ones(s.mask_shape(cfg.window, 1)) for s in net.dropout_sites()]
    with open_runner(p, "torch", "cpu") as tempered, open_runner(p, "torch", "cpu", temperature=False) as raw:
        assert getattr(tempered, "temperature", None) == [2.5]
        assert getattr(raw, "temperature", None) is None
        lt, vt = tempered.infer(x, masks)
        lr, vr = raw.infer(x, masks)
    torch.testing.assert_close(lt * 2.5, lr, rtol=1e-5, atol=1e-5)
    # logit noise variance scales with the logits: log var shifts by -2 log T
    torch.testing.assert_close(vt, vr - 2 * torch.log(torch.tensor(2.5)), rtol=1e-5, atol=1e-5)
