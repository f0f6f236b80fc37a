"""HardAttention (sampled moves) and reinforce_loss against NumPy."""

import keras
import numpy as np
import pytest

import superloop_cell as sc
from superloop_cell import _random
from helpers import to_numpy, value_and_gradients
from reference import hard_attention_step, key_uniform, reinforce_loss

ATOL = 1e-5


def _keys(batch, seed):
    return keras.ops.convert_to_numpy(_random.draw_keys(
        batch, keras.random.SeedGenerator(seed), "float32"))


def _states(batch, positions, width, rng):
    return [rng.integers(0, positions, (batch, 1)).astype("f4"),
            rng.normal(size=(batch, 1)).astype("f4"),
            rng.random((batch, 1)).astype("f4"),
            _keys(batch, 0),
            rng.normal(size=(batch, positions * width)).astype("f4")]


def test_greedy_steps_match_numpy():
    rng = np.random.default_rng(0)
    head = sc.HardAttention(positions=5, width=2)
    states = _states(6, 5, 2, rng)
    ref = [s.astype(np.float64) for s in states[:3]]
    data = states[4].reshape(6, 5, 2).astype(np.float64)
    for _ in range(8):  # walks into both clips
        control = (3 * rng.normal(size=(6, 3))).astype("f4")
        out, states = head(control, states, training=False)
        ref_out, *ref = hard_attention_step(control, *ref, data)
        np.testing.assert_allclose(out, ref_out, atol=ATOL)
        for got, want in zip(states[:3], ref):
            np.testing.assert_allclose(got, want, atol=ATOL)
    np.testing.assert_array_equal(states[4], data.reshape(6, 10))


POLICY = np.array([0.2, 0.3, 0.5])


def test_sampled_moves_follow_the_policy_and_are_scored():
    head = sc.HardAttention(positions=7, width=1, seed=3)
    n = 20000
    logits = np.log(POLICY[None].astype("f4")).repeat(n, axis=0)
    start = np.full((n, 1), 3.0, "f4")
    zeros = np.zeros((n, 1), "f4")
    data = np.tile(np.arange(7, dtype="f4"), (n, 1))
    out, (position, log_prob, entropy, key, _) = head(
        logits, [start, zeros, zeros, _keys(n, 3), data], training=True)
    moves = np.asarray(position)[:, 0] - 3.0
    share = [np.mean(moves == m) for m in (-1, 0, 1)]
    # The binomial standard error at n = 20000 is at most 0.0036: the bound
    # 0.015 is over 4 standard errors (a false failure once in ~10⁴ runs).
    np.testing.assert_allclose(share, POLICY, atol=0.015)
    # Successive steps draw afresh: a second step from the same position
    # with the advanced key repeats the first move only as often as two
    # independent draws agree (Σ π² = 0.38; standard error 0.0034).
    _, (again, *_) = head(logits, [start, zeros, zeros, key, data],
                          training=True)
    same = np.mean(np.asarray(again)[:, 0] - 3.0 == moves)
    np.testing.assert_allclose(same, np.sum(POLICY ** 2), atol=0.015)
    # Each sample's log-probability is that of the move it took; the read
    # is the slot it stands on.
    np.testing.assert_allclose(np.exp(log_prob)[:, 0],
                               np.array([0.2, 0.3, 0.5])[moves.astype(int) + 1],
                               atol=ATOL)
    np.testing.assert_allclose(out[:, 0], np.asarray(position)[:, 0])
    h = -np.sum([p * np.log(p) for p in (0.2, 0.3, 0.5)])
    np.testing.assert_allclose(entropy, np.full((n, 1), h), atol=ATOL)


def test_gradient_reaches_the_controls_only_through_log_prob_and_entropy():
    head = sc.HardAttention(positions=4, width=1)
    rng = np.random.default_rng(1)
    states = _states(3, 4, 1, rng)
    control = rng.normal(size=(3, 3)).astype("f4")

    def gradient(part):
        def of(control):
            out, new_states = head(control, states)
            return keras.ops.sum([out, *new_states][part])
        return value_and_gradients(of, inputs=[control])[2][0]

    for no_gradient in (0, 1):  # the read, the position
        np.testing.assert_array_equal(gradient(no_gradient), 0.0)
    # d log π(a)/d logits = onehot(a) − π for the greedy a.
    pi = np.exp(control) / np.exp(control).sum(-1, keepdims=True)
    expected = np.eye(3)[pi.argmax(-1)] - pi
    np.testing.assert_allclose(gradient(2), expected, atol=ATOL)
    assert np.abs(gradient(3)).max() > 0


def test_reinforce_loss_matches_numpy_and_favours_better_walks():
    rng = np.random.default_rng(2)
    reward = rng.normal(size=8).astype("f4")
    log_prob = rng.normal(size=8).astype("f4")
    entropy = rng.random(8).astype("f4")
    got = sc.reinforce_loss(reward, log_prob, entropy, 0.3)
    np.testing.assert_allclose(
        got, reinforce_loss(reward.astype(np.float64), log_prob, entropy, 0.3),
        atol=ATOL)
    # Lowering the loss raises the log-probability of above-average walks.
    _, _, (grad,) = value_and_gradients(
        lambda lp: keras.ops.sum(sc.reinforce_loss(reward, lp)),
        inputs=[log_prob])
    assert np.all(np.sign(-grad) == np.sign(reward - reward.mean()))
    with pytest.raises(ValueError, match="`entropy_weight`.*-1"):
        sc.reinforce_loss(reward, log_prob, entropy, -1)


def test_reinforce_loss_takes_numpy_arrays_on_every_backend():
    # Rewards often come straight from NumPy; Keras' torch `stop_gradient`
    # takes tensors only, so the reward is converted before it.
    rng = np.random.default_rng(21)
    reward, log_prob, entropy = rng.normal(size=(3, 6)).astype("f4")
    want = reinforce_loss(reward.astype(np.float64), log_prob, entropy, 0.5)
    as_tensors = [keras.ops.convert_to_tensor(a) for a in (log_prob, entropy)]
    for others in ([log_prob, entropy], as_tensors):
        got = sc.reinforce_loss(reward, *others, 0.5)
        assert keras.ops.is_tensor(got) and tuple(got.shape) == (6,)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got), want,
                                   atol=ATOL)


def test_untrained_head_walks_forward_and_trains_under_fit():
    keras.utils.set_random_seed(4)
    cell = sc.SuperloopCell([sc.SGUCell(4)], [sc.HardAttention(positions=6, width=1, seed=4)])
    steps = keras.Input((5, 0))
    data = keras.Input((6, 1))
    _, *final = keras.layers.RNN(cell, return_state=True)(
        steps, initial_state=sc.initial_state(cell, steps, data))
    position, log_prob, entropy = cell.system_states(final, 0)[:3]
    model = keras.Model([steps, data], keras.layers.Concatenate()(
        [position, log_prob, entropy]))
    x = [np.zeros((64, 5, 0), "f4"),
         np.random.default_rng(5).random((64, 6, 1)).astype("f4")]
    greedy = model.predict(x, verbose=0)
    # forward_bias 2: the greedy walk is +1 per step, 5 steps from slot 0.
    np.testing.assert_array_equal(greedy[:, 0], 5.0)

    def loss(target, out):
        return sc.reinforce_loss(-keras.ops.abs(out[:, 0] - target[:, 0]),
                                 out[:, 1], out[:, 2], 0.1)

    model.compile(keras.optimizers.Adam(1e-2), loss)
    before = [w.copy() for w in cell.get_weights()]
    model.fit(x, np.zeros((64, 1), "f4"), epochs=1, batch_size=32, verbose=0)
    changed = [np.abs(a - b).max() > 0
               for a, b in zip(before, cell.get_weights())]
    assert all(changed)


def test_config_round_trip_and_bad_arguments():
    head = sc.HardAttention(positions=9, width=2, forward_bias=1.5, seed=7)
    clone = sc.HardAttention.from_config(head.get_config())
    assert (clone.positions, clone.width, clone.forward_bias, clone.seed) == (
        9, 2, 1.5, 7)
    assert head.state_size == [1, 1, 1, 4, 18] and head.control_size == 3
    assert head.key_state == 3
    with pytest.raises(ValueError, match="`positions`.*0"):
        sc.HardAttention(positions=0, width=1)
    with pytest.raises(TypeError, match="`forward_bias`.*'2'"):
        sc.HardAttention(positions=3, width=1, forward_bias="2")
    with pytest.raises(ValueError, match="`forward_bias`.*finite.*inf"):
        sc.HardAttention(positions=3, width=1, forward_bias=float("inf"))
    with pytest.raises(TypeError, match="`seed`.*1.5"):
        sc.HardAttention(positions=3, width=1, seed=1.5)


def test_traces_follow_the_greedy_walk():
    cell = sc.SuperloopCell([sc.SGUCell(4)], [sc.HardAttention(positions=6, width=1)])
    steps = keras.Input((9, 0))
    data = keras.Input((6, 1))
    _, *final = keras.layers.RNN(cell, return_state=True)(
        steps, initial_state=sc.initial_state(cell, steps, data))
    model = keras.Model([steps, data], cell.system_states(final, 0)[0])
    rng = np.random.default_rng(8)
    cell.control_kernel.assign(rng.normal(size=(4, 3)).astype("f4"))
    x = np.zeros((5, 9, 0), "f4")
    d = rng.normal(size=(5, 6, 1)).astype("f4")
    _, traces = sc.run_with_traces(cell, x, d)
    position = traces["hard_attention/position"][..., 0]
    probabilities = traces["hard_attention/probabilities"]
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=ATOL)
    moves = probabilities.argmax(-1) - 1.0
    previous = np.concatenate([np.zeros((5, 1)), position[:, :-1]], axis=1)
    np.testing.assert_array_equal(position, np.clip(previous + moves, 0, 5))
    np.testing.assert_array_equal(traces["hard_attention/weights"],
                                  np.eye(6)[position.astype(int)])
    np.testing.assert_array_equal(position[:, -1],
                                  model.predict([x, d], verbose=0)[:, 0])


def _walker(seed):
    cell = sc.SuperloopCell([sc.SGUCell(4)], [sc.HardAttention(positions=6, width=1,
                                                              seed=seed)])
    steps = keras.Input((8, 0))
    data = keras.Input((6, 1))
    _, *final = keras.layers.RNN(cell, return_state=True)(
        steps, initial_state=sc.initial_state(cell, steps, data))
    model = keras.Model([steps, data], cell.system_states(final, 0)[:2])
    # Level logits: every walk is a fresh draw from one policy.
    cell.control_kernel.assign(np.zeros((4, 3), "f4"))
    cell.control_bias.assign(np.zeros(3, "f4"))
    return model


def test_a_fixed_seed_repeats_the_sampled_walks_and_each_batch_is_fresh():
    x = [np.zeros((64, 8, 0), "f4"), np.zeros((64, 6, 1), "f4")]

    def walks(model):
        position, log_prob = to_numpy(model(x, training=True))
        return position, log_prob

    first = _walker(seed=11)
    run_1, run_2 = walks(first), walks(first)
    again = walks(_walker(seed=11))
    np.testing.assert_array_equal(run_1[0], again[0])
    np.testing.assert_array_equal(run_1[1], again[1])
    # The next batch draws new keys: other walks (the 64 final positions of
    # 8 uniform moves agree by chance with probability far below 1e-9).
    assert np.any(run_1[0] != run_2[0])
    assert np.any(walks(_walker(seed=12))[0] != run_1[0])
    # The walks really are random: with level logits each move is −1, 0,
    # +1 with probability 1/3, so the sequences do not all end together.
    assert len(np.unique(run_1[0])) > 2
    np.testing.assert_allclose(run_1[1], 8 * np.log(1 / 3), rtol=1e-5)


def test_sampled_steps_match_numpy_gumbel_max_on_the_key():
    rng = np.random.default_rng(13)
    head = sc.HardAttention(positions=5, width=2)
    states = _states(16, 5, 2, rng)
    ref = [s.astype(np.float64) for s in states[:3]]
    key = states[3].astype(np.float64)
    data = states[4].reshape(16, 5, 2).astype(np.float64)
    for _ in range(6):
        control = rng.normal(size=(16, 3)).astype("f4")
        out, states = head(control, states, training=True)
        uniform, key = key_uniform(key, 3)
        log_pi = control - np.log(np.exp(control).sum(-1, keepdims=True))
        choice = np.argmax(log_pi - np.log(-np.log(uniform)), axis=-1)
        ref_out, *ref = hard_attention_step(control, *ref, data, choice)
        np.testing.assert_allclose(out, ref_out, atol=ATOL)
        for got, want in zip(states[:3], ref):
            np.testing.assert_allclose(got, want, atol=ATOL)
        np.testing.assert_array_equal(states[3], key)
