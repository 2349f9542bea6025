"""Tests of jaxmed.data.batching: a pure, resumable, shardable batch order."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmed.data.batching import batch_indices, iterate_batches, steps_per_epoch

N, B = 23, 4  # 5 full batches per epoch, 3 examples dropped


def _epoch(epoch, *, seed=7, n=N, b=B):
    steps = steps_per_epoch(n, b)
    return np.stack([batch_indices(s, num_examples=n, batch_size=b, seed=seed) for s in range(epoch * steps, (epoch + 1) * steps)])


def test_steps_per_epoch_drops_remainder():
    assert steps_per_epoch(23, 4) == 5
    assert steps_per_epoch(24, 4) == 6
    assert steps_per_epoch(4, 4) == 1


def test_batch_matches_numpy_permutation_of_its_epoch():
    # Step 12 is epoch 2 (5 steps per epoch), position 2 within the epoch.
    expected = np.random.default_rng([7, 2]).permutation(N)[8:12]
    got = batch_indices(12, num_examples=N, batch_size=B, seed=7)
    np.testing.assert_array_equal(got, expected)


def test_same_seed_same_order_different_seed_different_order():
    a = _epoch(0, seed=7)
    np.testing.assert_array_equal(a, _epoch(0, seed=7))
    assert not np.array_equal(a, _epoch(0, seed=8))


def test_each_epoch_sees_every_example_at_most_once_and_reshuffles():
    epochs = [_epoch(e) for e in range(4)]
    for e in epochs:
        flat = e.ravel()
        assert flat.shape == (20,)
        assert len(np.unique(flat)) == 20  # no repeats within an epoch
        assert flat.min() >= 0 and flat.max() < N
    # Different epochs draw different permutations.
    for e1, e2 in itertools.combinations(range(4), 2):
        assert not np.array_equal(epochs[e1], epochs[e2])


def test_every_example_exactly_once_when_batch_divides():
    flat = _epoch(3, n=24, b=4).ravel()
    np.testing.assert_array_equal(np.sort(flat), np.arange(24))


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_process_shards_are_disjoint_and_union_is_global_batch(process_count):
    for step in [0, 3, 11]:
        global_batch = batch_indices(step, num_examples=N, batch_size=8, seed=1)
        shards = [
            batch_indices(step, num_examples=N, batch_size=8, seed=1, process_index=p, process_count=process_count)
            for p in range(process_count)
        ]
        assert all(s.shape == (8 // process_count,) for s in shards)
        np.testing.assert_array_equal(np.concatenate(shards), global_batch)
        assert len(np.unique(np.concatenate(shards))) == 8


def _data(n=N):
    x = np.arange(n * 6, dtype=np.float32).reshape(n, 2, 3)
    return {"image": x, "label": np.arange(n) % 3, "meta": (np.arange(n) * 10,)}


def test_iterate_batches_indexes_every_leaf_with_batch_indices():
    data = _data()
    batches = list(iterate_batches(data, batch_size=B, seed=3, num_steps=12))
    assert len(batches) == 12
    for step, batch in enumerate(batches):
        idx = batch_indices(step, num_examples=N, batch_size=B, seed=3)
        assert isinstance(batch["image"], np.ndarray)
        np.testing.assert_array_equal(batch["image"], data["image"][idx])
        np.testing.assert_array_equal(batch["label"], data["label"][idx])
        np.testing.assert_array_equal(batch["meta"][0], data["meta"][0][idx])


def test_starting_at_step_k_gives_the_tail():
    data = _data()
    full = list(iterate_batches(data, batch_size=B, seed=5, num_steps=17))
    tail = list(iterate_batches(data, batch_size=B, seed=5, start_step=7, num_steps=10))
    for a, b in zip(full[7:], tail, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])


def test_forever_iterator_and_jax_input():
    data = {"x": jnp.arange(10.0)}
    it = iterate_batches(data, batch_size=5, seed=0)
    seen = np.concatenate([next(it)["x"] for _ in range(6)])  # 3 epochs
    assert isinstance(seen, np.ndarray)
    for e in range(3):
        np.testing.assert_array_equal(np.sort(seen[10 * e : 10 * (e + 1)]), np.arange(10.0))


def test_process_shards_of_iterator_concatenate_to_global():
    data = _data()
    glob = list(iterate_batches(data, batch_size=8, seed=2, num_steps=5))
    parts = [list(iterate_batches(data, batch_size=8, seed=2, num_steps=5, process_index=p, process_count=2)) for p in range(2)]
    for s in range(5):
        joined = np.concatenate([parts[0][s]["image"], parts[1][s]["image"]])
        np.testing.assert_array_equal(joined, glob[s]["image"])


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="larger than the data set"):
        batch_indices(0, num_examples=3, batch_size=4, seed=0)
    with pytest.raises(ValueError, match="not divisible by process_count"):
        batch_indices(0, num_examples=10, batch_size=4, seed=0, process_count=3)
    with pytest.raises(ValueError, match="process_index"):
        batch_indices(0, num_examples=10, batch_size=4, seed=0, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="step must be"):
        batch_indices(-1, num_examples=10, batch_size=4, seed=0)
    with pytest.raises(ValueError, match="seed"):
        batch_indices(0, num_examples=10, batch_size=4, seed=-1)
    with pytest.raises(ValueError, match=r"data\['b'\]: 4"):
        iterate_batches({"a": np.zeros(5), "b": np.zeros(4)}, batch_size=2, seed=0)
    with pytest.raises(ValueError, match="scalar"):
        iterate_batches({"a": np.zeros(5), "b": 1.0}, batch_size=2, seed=0)


def test_batches_shard_onto_a_device_mesh():
    # The per-process batch feeds a batch-sharded global array unchanged.
    mesh = jax.make_mesh((4,), ("data",))
    sharding = jax.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    batch = next(iterate_batches(_data(), batch_size=8, seed=0))
    x = jax.make_array_from_process_local_data(sharding, batch["image"])
    np.testing.assert_array_equal(np.asarray(x), batch["image"])
    assert x.sharding.spec == jax.sharding.PartitionSpec("data")
