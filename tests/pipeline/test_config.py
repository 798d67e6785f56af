import pytest

from scorebank.pipeline.config import Schedule, ScoreConfig, parse_seeds, resolve_config
from scorebank.stores.errors import InvalidArgumentError


def test_multistep_schedule_matches_torch_multisteplr():
    import torch

    s = Schedule.parse("multistep:2,4:0.5")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.8)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 4], gamma=0.5)
    for epoch in range(1, 8):
        assert s.lr_at(0.8, epoch) == pytest.approx(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert str(s) == "multistep:2,4:0.5"
    assert Schedule.parse("constant").lr_at(0.1, 100) == 0.1


@pytest.mark.parametrize("text", ["multistep", "multistep:5,3:0.1", "multistep:0,3:0.1", "multistep:3:0",
                                  "multistep:3:-1", "cosine", "multistep:a:0.1", ""])
def test_bad_schedules(text):
    with pytest.raises(InvalidArgumentError, match="schedule"):
        Schedule.parse(text)


def test_seeds():
    assert parse_seeds("0-3,7") == (0, 1, 2, 3, 7)
    assert parse_seeds("5") == (5,)
    assert parse_seeds("3,1,1") == (1, 3)
    for bad in ["", "a", "3-1", "-1", "1-", "0-2,x"]:
        with pytest.raises(InvalidArgumentError, match="seed"):
            parse_seeds(bad)


def test_record_epochs():
    assert resolve_config(epochs=5).record_epochs == (0, 1, 2, 3, 4, 5)
    assert resolve_config(epochs=5, record_every=2).record_epochs == (0, 2, 4, 5)
    assert resolve_config(epochs=5, record_epochs="5,0,2").record_epochs == (0, 2, 5)
    with pytest.raises(InvalidArgumentError, match="outside 0..5"):
        resolve_config(epochs=5, record_epochs="6")
    with pytest.raises(InvalidArgumentError, match="not both"):
        resolve_config(epochs=5, record_epochs="1", record_every=2)
    with pytest.raises(InvalidArgumentError, match="--grand-epochs"):
        resolve_config(epochs=5, grand_epochs="7")


@pytest.mark.parametrize("fields, message", [
    (dict(dataset="imagenet"), "unknown data set 'imagenet'"),
    (dict(model="vgg"), "unknown model 'vgg'"),
    (dict(optimizer="adam"), "unknown optimizer 'adam'"),
    (dict(lr=0.0), "--lr"),
    (dict(lr=float("nan")), "--lr"),
    (dict(batch_size=0), "--batch-size"),
    (dict(epochs=-1), "--epochs"),
    (dict(label_noise=1.5), "--label-noise"),
    (dict(momentum=1.0), "--momentum"),
    (dict(optimizer="m3", batch_size=32), "divisible by 3"),
    (dict(clip_count=2), "--clip-count 2 applies only to --optimizer winsorized, not 'sgd'"),
    (dict(limit=0), "--limit"),
    (dict(label_noise=0.5, label_noise_seed=-1), "--label-noise-seed must be an integer >= 0, got -1"),
    (dict(nesterov=True, momentum=0.0), "--nesterov needs --momentum > 0, got --momentum 0.0"),
    (dict(lr="fast"), "--lr must be a positive number, got 'fast'"),
    (dict(threshold_samples="yes"), "--threshold-samples must be true or false, got 'yes'"),
])
def test_bad_fields(fields, message):
    with pytest.raises(InvalidArgumentError, match=message.replace("(", r"\(")):
        resolve_config(**fields)


def test_json_round_trip_and_differences():
    c = resolve_config(epochs=4, grand_epochs="0,4", label_noise=0.2)
    assert ScoreConfig.from_json(c.to_json()) == c
    d = resolve_config(epochs=4, grand_epochs="0,4", label_noise=0.2, lr=0.1, data_dir="/elsewhere")
    assert set(c.differences(d)) == {"lr"}  # data_dir does not change values
    assert c.identity_hash() != d.identity_hash()


@pytest.mark.parametrize("text, message", [
    ("0-99999999999", "seeds go up to 2147483647"),
    ("9223372036854775808", "seeds go up to 2147483647"),
    ("1" * 5000, "seeds go up to 2147483647"),  # int() of it would fail
    ("2147483648", "names seed 2147483648; seeds go up to 2147483647"),
    ("0-100000", "names more than 100000 runs"),
    ("0-50000,60000-110000", "names more than 100000 runs"),
])
def test_absurd_seed_lists_are_refused_before_expanding(text, message):
    with pytest.raises(InvalidArgumentError, match=message):
        parse_seeds(text)


def test_largest_seed_list_accepted():
    from scorebank.core.config import MAX_SEED, MAX_SEEDS

    assert len(parse_seeds(f"0-{MAX_SEEDS - 1}")) == MAX_SEEDS
    assert parse_seeds(f"{MAX_SEED}") == (MAX_SEED,)


@pytest.mark.parametrize("fields, message", [
    (dict(width=100_000_000), "--width must be an integer >= 1, got 100000000; the maximum is 16384"),
    (dict(epochs=10**9), "--epochs must be an integer >= 0, got 1000000000; the maximum is 100000"),
    (dict(batch_size=10**7), "--batch-size must be an integer >= 1, got 10000000; the maximum is 1000000"),
    (dict(eval_batch_size=10**7), "--eval-batch-size must be an integer >= 1, got 10000000; the maximum is 1000000"),
    (dict(limit=10**12), "--limit must be an integer >= 1, got 1000000000000; the maximum is 100000000"),
    (dict(optimizer="winsorized", clip_count=10**9), "--clip-count must be an integer >= 0, got 1000000000; the maximum"),
    (dict(label_noise=0.1, label_noise_seed=2**63), "--label-noise-seed must be an integer >= 0, got 9223372036854775808"),
    (dict(width=True), "--width must be an integer >= 1, got True"),
    (dict(init_std=float("inf")), "--init-std must be a positive number, got inf"),
    (dict(dataset=None), "unknown data set None; --dataset takes digits, cifar10, cifar100, mnist, fashion-mnist, imagefolder:PATH, npz:PATH or package.module:FUNCTION"),
])
def test_every_numeric_option_is_bounded(fields, message):
    with pytest.raises(InvalidArgumentError, match=message.replace("(", r"\(")):
        resolve_config(**fields)
    with pytest.raises(InvalidArgumentError, match="--record-every must be an integer >= 1, got 1000000; the maximum"):
        resolve_config(record_every=10**6)


def test_short_differences():
    from scorebank.core.config import short_value

    assert short_value(tuple(range(21))) == "0..20 (21)"
    assert short_value((0, 1, 2, 5, 9, 10, 50)) == "0,1,2,...,50 (7)"
    assert short_value((0, 5, 10)) == "(0, 5, 10)" and short_value(0.05) == "0.05" and short_value("sgd") == "'sgd'"
    a, b = resolve_config(epochs=20), resolve_config(epochs=50, lr=0.1)
    assert a.describe_differences(b) == ("epochs: store has 20, asked 50; lr: store has 0.05, asked 0.1; "
                                         "record_epochs: store has 0..20 (21), asked 0..50 (51)")


def test_library_seed_sequences_are_checked():
    import numpy as np

    from scorebank.core.config import check_seeds

    assert check_seeds((np.int64(3), 1)) == (3, 1)
    for bad, message in [((), "no seeds given"), ((-1,), "seed -1 is not an integer in 0..2147483647"),
                         ((2**40,), "seed 1099511627776 is not"), ((True,), "seed True is not"),
                         (("3",), "seed '3' is not")]:
        with pytest.raises(InvalidArgumentError, match=message):
            check_seeds(bad)
