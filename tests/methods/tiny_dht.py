"""A DHT method on the tiny backbone and 64 rows of the embedded dataset, for the hand-computed tests
(imported by module name: pytest puts tests/methods on sys.path for its test files)."""

from dht.data import iterate_batches
from dht.training.config import RunConfig, TrainConfig
from dht.training.setup import prepare

SMALL = TrainConfig(epochs=2, batch_size=8, max_train=64, max_test=16, seed=11)


def make(config: str = "f-dht", train: TrainConfig = SMALL, **options):
    """(prepared run, its DHT method, the training split's batches of 8 in order)."""
    prepared = prepare(RunConfig(method="dht", backbone="tiny", train=train, options={"config": config, **options}))
    batches = list(iterate_batches(prepared.train.ids, prepared.train.labels, 8, prepared.pad_id, shuffle=False))
    return prepared, prepared.method, batches


def started(config: str = "f-dht", **options):
    """``make``, then the first epoch's arm features."""
    prepared, method, batches = make(config, **options)
    method.on_epoch_start(0, prepared.train.ids, prepared.pad_id)
    return prepared, method, batches
