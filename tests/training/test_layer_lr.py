"""Per-layer learning rates that make up for the steps a layer sat out (--layer-lr-cap, ours)."""

import pytest
import torch

from dht.model import DynamicEncoder, EncoderConfig
from dht.training.layer_lr import LayerLR, layer_group


def tiny_model() -> DynamicEncoder:
    return DynamicEncoder(EncoderConfig(vocab_size=20, hidden_size=8, num_layers=3, num_heads=2,
                                        intermediate_size=16, max_position=16, num_classes=2))


def backward_through(model: DynamicEncoder, depth: int) -> None:
    """One loss whose graph reaches the first ``depth`` layers only; gradients zeroed to None first."""
    model.zero_grad(set_to_none=True)
    ids, attn_mask = torch.tensor([[1, 2, 3]]), torch.ones(1, 1, 1, 3, dtype=torch.bool)
    h = model.embed(ids)
    for layer in model.layers[:depth]:
        h = layer(h, attn_mask, (0, 1))
    h.sum().backward()


def test_layer_group_names_encoder_layers_only():
    assert layer_group("layers.0.attention.query.weight") == "layer0"
    assert layer_group("layers.11.output.bias") == "layer11"
    assert layer_group("classifier.weight") == "" and layer_group("embeddings.position.weight") == ""


def test_factors_are_steps_over_updates_capped():
    """Three steps at depths 3, 1, 1: layer 0 is in all (factor 1), layers 1-2 in one (3/1 = 3, capped at 2.5)."""
    model, rates = tiny_model(), LayerLR(3, cap=2.5)
    assert rates.factors() == [1.0, 1.0, 1.0]
    for depth in (3, 1, 1):
        backward_through(model, depth)
        rates.observe(model)
    assert rates.updates == [3, 1, 1]
    assert rates.factors() == [1.0, 2.5, 2.5]
    backward_through(model, 2)
    rates.observe(model)  # steps 4; updates 4, 2, 1
    assert rates.factors() == [1.0, 2.0, 2.5]


def test_a_layer_never_updated_takes_the_cap_and_apply_sets_groups():
    model, rates = tiny_model(), LayerLR(3, cap=4.0)
    backward_through(model, 1)
    rates.observe(model)
    groups = {f"layer{i}": [p for n, p in model.named_parameters() if layer_group(n) == f"layer{i}"] for i in range(3)}
    optimizer = torch.optim.AdamW([{"params": ps, "lr_group": name} for name, ps in groups.items()]
                                  + [{"params": list(model.classifier.parameters()), "lr_group": ""}], lr=1.0)
    rates.apply(optimizer)
    assert [g.get("lr_scale") for g in optimizer.param_groups] == [1.0, 4.0, 4.0, None]


def test_state_round_trips_and_cap_is_checked():
    rates = LayerLR(2, cap=3.0)
    rates.steps, rates.updates = 5, [5, 2]
    again = LayerLR(2, cap=3.0)
    again.load_state_dict(rates.state_dict())
    assert again.factors() == [1.0, 2.5]
    with pytest.raises(ValueError, match="cap"):
        LayerLR(2, cap=0.5)


def test_make_optimizer_gives_dht_one_group_per_layer_and_decay_only_with_the_cap():
    """--layer-lr-cap splits AdamW's groups by layer (each by decay); without it, the two groups of BERT."""
    from dht.training.config import RunConfig, TrainConfig
    from dht.training.loop import make_optimizer
    from dht.training.setup import prepare

    def groups(options):
        run = RunConfig(method="dht", backbone="tiny", train=TrainConfig(max_train=8, max_test=8), options=options)
        return [(g["lr_group"], g["weight_decay"] > 0) for g in make_optimizer(prepare(run)).param_groups]

    assert groups({"config": "f-dht"}) == [("", True), ("", False)]
    layered = groups({"config": "f-dht", "layer_lr_cap": 2.0})
    assert layered[:2] == [("", True), ("", False)]
    assert layered[2:] == [(f"layer{i}", decays) for i in range(4) for decays in (True, False)]


def test_dht_scales_the_rates_of_the_layers_its_steps_reached_and_saves_the_counts():
    """DHT with --layer-lr-cap 3: a training step on a 2-layer arm (tiny backbone, 4 layers) counts layers
    0-1 as reached and 2-3 as not, so after it the rates of layers 2-3 are 3x the schedule's; the counts
    are method state; without the option DHT keeps one group and no counts."""
    from dht.data import iterate_batches
    from dht.training.config import RunConfig, TrainConfig
    from dht.training.loop import make_optimizer
    from dht.training.setup import prepare

    def make(**options):
        run = RunConfig(method="dht", backbone="tiny", train=TrainConfig(max_train=16, max_test=8, batch_size=8),
                        options={"config": "f-dht", **options})
        prepared = prepare(run)
        return prepared, make_optimizer(prepared)

    prepared, optimizer = make(layer_lr_cap=3.0)
    method = prepared.method
    assert method.lr_group("layers.2.ffn_in.weight") == "layer2" and method.lr_group("classifier.bias") == ""
    method.bind_optimizer(optimizer)
    method.on_epoch_start(0, prepared.train.ids, prepared.pad_id)
    batch = next(iterate_batches(prepared.train.ids, prepared.train.labels, 8, prepared.pad_id, shuffle=False))
    shallow = next(i for i, arm in enumerate(method.arms) if arm.depth == 2)
    step = method.training_step(queued_batch(method, batch, shallow))
    optimizer.zero_grad(set_to_none=True)
    step.loss.backward()
    method.after_backward()
    scales = {g["lr_group"]: g.get("lr_scale") for g in optimizer.param_groups}
    assert (scales["layer0"], scales["layer1"], scales["layer2"], scales["layer3"], scales[""]) == (1.0, 1.0, 3.0, 3.0,
                                                                                                   None)
    assert method.state_dict()["layer_lr"] == {"steps": 1, "updates": [1, 1, 0, 0]}
    again, _ = make(layer_lr_cap=3.0)
    again.method.load_state_dict(method.state_dict())
    assert again.method.layer_lr.updates == [1, 1, 0, 0] and again.method.layer_lr.steps == 1
    plain, _ = make()
    assert plain.method.layer_lr is None and plain.method.state_dict()["layer_lr"] is None
    with pytest.raises(ValueError, match="--layer-lr-cap"):
        make(layer_lr_cap=0.5)


def queued_batch(method, batch, arm):
    """``batch`` as a released queue whose samples all took ``arm``, with their probe contexts."""
    from dht.methods.dht import QueuedBatch

    _, x = method._probe(batch)
    return QueuedBatch(batch.input_ids, batch.attention_mask, batch.labels, batch.index,
                       arms=torch.full((len(batch),), arm), x=x)


def test_dht_without_the_cap_or_before_its_optimizer_leaves_the_rates_alone():
    """after_backward scales nothing without --layer-lr-cap (even with an optimizer bound) or before the
    optimizer is bound; a saved layer_lr state loads into a run without the option as nothing; the cap must
    be finite."""
    from dht.training.config import RunConfig, TrainConfig
    from dht.training.loop import make_optimizer
    from dht.training.setup import prepare

    def make(**options):
        run = RunConfig(method="dht", backbone="tiny", train=TrainConfig(max_train=16, max_test=8, batch_size=8),
                        options={"config": "f-dht", **options})
        return prepare(run)

    plain = make()
    optimizer = make_optimizer(plain)
    plain.method.bind_optimizer(optimizer)
    plain.method.after_backward()  # no cap: nothing to count or scale
    assert all("lr_scale" not in group for group in optimizer.param_groups)
    capped = make(layer_lr_cap=2.0)
    capped.method.after_backward()  # no optimizer bound yet (a step before bind_optimizer): nothing happens
    assert capped.method.layer_lr.steps == 0
    state = plain.method.state_dict()
    plain.method.load_state_dict({**state, "layer_lr": {"steps": 3, "updates": [3, 1, 1, 1]}})
    assert plain.method.layer_lr is None
    with pytest.raises(ValueError, match="--layer-lr-cap"):
        make(layer_lr_cap=float("inf"))
