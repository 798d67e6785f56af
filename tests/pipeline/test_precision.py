"""GPU fast path numerics, on the CPU (bf16 autocast runs there): training forwards run in
bf16, the clean pass and every stored score come from float32 logits, fp32 is unchanged."""

import json

import numpy as np
import pytest
import torch

from scorebank.core.config import ScoreConfig
from scorebank.pipeline.config import resolve_config
from scorebank.pipeline.datasets import load_dataset
from scorebank.pipeline.training import Trainer, example_scores, to_device_data
from scorebank.stores import schema as S


@pytest.fixture(scope="module")
def data():
    d = load_dataset("digits", limit=200)
    return to_device_data(d, d.train_labels, torch.device("cpu"))


def config(**kw):
    return resolve_config(dataset="digits", limit=200, model="mlp", width=16, epochs=2, batch_size=32, **kw)


def test_fp32_configuration_and_identity_are_unchanged():
    cfg = config()
    doc = json.loads(cfg.to_json())
    assert "precision" not in doc and "compile" not in doc
    assert "precision" not in cfg.identity() and "compile" not in cfg.identity()  # identity hashes unchanged
    bf = config(precision="bf16")
    assert json.loads(bf.to_json())["precision"] == "bf16"
    assert ScoreConfig.from_json(bf.to_json()) == bf and ScoreConfig.from_json(cfg.to_json()) == cfg
    assert set(cfg.differences(bf)) == {"precision"}
    assert not config(compile=True).differences(cfg)  # compile does not change what is computed


def test_bad_precision_is_refused():
    from scorebank.core.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="unknown --precision 'fp16'; choose fp32 or bf16"):
        config(precision="fp16")


def test_bf16_trains_in_bf16_and_scores_from_float32_logits(data):
    trainer = Trainer(config(precision="bf16"), data, 0, torch.device("cpu"))
    seen = []
    first = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Linear))
    hook = first.register_forward_hook(lambda m, i, o: seen.append((m.training, o.dtype)))
    result = trainer.run_epoch()
    hook.remove()
    assert {dt for training, dt in seen if training} == {torch.bfloat16}
    assert {dt for training, dt in seen if not training} == {torch.float32}  # clean pass and test set
    # the stored scores equal those of an independent float32 forward of the trained model
    trainer.model.eval()
    with torch.no_grad():
        logits = trainer.model(data.train_x)  # (N, classes) float32, no autocast
    ref = example_scores(logits, data.train_y)
    for name in (S.MARGIN, S.EL2N, S.LOSS):
        assert result.per_example[name].dtype == np.float32
        np.testing.assert_array_equal(result.per_example[name], ref[name].numpy())


def test_bf16_follows_fp32_closely(data):
    runs = {}
    for precision in ("fp32", "bf16"):
        t = Trainer(config(precision=precision), data, 0, torch.device("cpu"))
        runs[precision] = t.run_epoch().per_epoch
    assert runs["bf16"][S.TRAIN_LOSS] == pytest.approx(runs["fp32"][S.TRAIN_LOSS], rel=0.05)
    assert runs["bf16"][S.TRAIN_LOSS] != runs["fp32"][S.TRAIN_LOSS]  # bf16 really ran
