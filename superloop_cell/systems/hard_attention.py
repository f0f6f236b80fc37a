"""A hard read head whose moves are sampled: trained by policy gradient."""

import keras
from keras import ops

from superloop_cell import _random, _validation
from superloop_cell.systems._precision import computes_in_float32
from superloop_cell.systems.base import ExternalSystem

MOVES = (-1.0, 0.0, 1.0)


def _log_softmax(logits):
    return logits - ops.logsumexp(logits, axis=-1, keepdims=True)


@keras.saving.register_keras_serializable(package="superloop_cell")
class HardAttention(ExternalSystem):
    """A head that stands on one slot of per-sample data and steps −1, 0, +1.

    Control (3): the logits of the moves `[−1, 0, +1]`. With `data` of shape
    `(batch, positions, width)` and `p_0 = 0`:

        π_t    = softmax(control)                        (batch, 3)
        a_t    ~ π_t in training, argmax π_t otherwise   a move in {−1, 0, +1}
        p_t    = clip(p_{t−1} + a_t, 0, positions − 1)
        output = data[p_t]                               (batch, width)
        L_t    = L_{t−1} + log π_t(a_t)
        H_t    = H_{t−1} − Σ π_t · log π_t

    No gradient flows through the move or the read: the head is trained by
    the score-function (REINFORCE) estimator, from the sum of log-
    probabilities `L` of the moves it made, which depends on the
    controller's weights. Its states are `[p, L, H, key, data]`; read the
    final ones with `keras.layers.RNN(..., return_state=True)` and
    `SuperloopCell.system_states`, and train with
    `superloop_cell.reinforce_loss(reward, L, H)`, where the reward scores
    the final position (see `examples/find_last_two.py`). Because each move
    is credited with the reward of the walk it was part of, a move that did
    not change where the walk ended (a pause on the way) is not pushed
    either way, unlike the straight-through gradient of
    `Attention(integer_moves=True)`, which pushes every move alike.

    In training (`training=True`, e.g. under `fit`) the moves are sampled
    with the Gumbel-max trick, `a_t = argmax(log π_t − log(−log u_t))`
    with `u_t` uniform; otherwise (`predict`, `evaluate`) the head takes
    the most likely move, so answers are deterministic. The uniform draws
    come from a per-sequence random key carried as a state (`key`, 4
    values): `superloop_cell.initial_state` draws fresh keys for every
    batch from `seed`, and each step hashes and advances the key, the same
    way on every backend (see `superloop_cell/_random.py`).

    Args:
        positions: Positive integer, number of data slots.
        width: Positive integer, values per slot.
        forward_bias: Float, the initial logit of the +1 move (the others
            start at 0). Default 2.0: an untrained head steps forward with
            probability 0.79, so it walks over the data.
        seed: Optional integer seed of the keys the moves are sampled
            from (None: a different walk every run).
        control_bias: None (default) or a dict from control field to float, the
            field's starting value in the superloop's `control_bias`. Fields
            (`control_layout`): `"back"`, `"stay"`, `"forward"` (the move
            logits; `forward_bias` is the default start of `"forward"`).
        **kwargs: Base `keras.layers.Layer` arguments.
    """

    def __init__(self, *args, positions=None, width=None, forward_bias=2.0,
                 seed=None, **kwargs):
        _validation.keyword_only(
            "HardAttention", args, "HardAttention(positions=16, width=1)")
        super().__init__(**kwargs)
        self.positions = _validation.positive_int(
            "positions", _validation.required("positions", positions))
        self.width = _validation.positive_int(
            "width", _validation.required("width", width))
        self.forward_bias = _validation.finite_float("forward_bias",
                                                     forward_bias)
        self.seed = _validation.optional_int("seed", seed)
        self.control_size = len(MOVES)
        self.output_size = self.width
        self.context_shape = (self.positions, self.width)
        self.state_size = [1, 1, 1, _random.KEY_SIZE,
                           self.positions * self.width]
        self.key_state = 3
        self.trace_sizes = {"position": 1, "weights": self.positions,
                            "probabilities": len(MOVES)}
        # The move probabilities' rows are the moves −1, 0, +1.
        self.trace_labels = {"weights": "position",
                             "probabilities": "move + 1"}
        self.control_kernel_initializer = keras.initializers.RandomUniform(
            -0.05, 0.05
        )
        self.control_bias_initializer = keras.initializers.Constant(
            [0.0, 0.0, self.forward_bias]
        )
        self.key_generator = keras.random.SeedGenerator(seed)
        self.check_control_layout()

    @property
    def control_layout(self):
        return [("back", 1), ("stay", 1), ("forward", 1)]

    @computes_in_float32
    def call(self, control, states, training=False, traces=False):
        position, log_prob, entropy, key, data = states
        log_pi = _log_softmax(control)
        scores = ops.stop_gradient(log_pi)
        uniform, key = _random.uniform(key, len(MOVES))
        if training:
            # Gumbel-max: argmax(log π + Gumbel noise) is distributed as π.
            scores = scores - ops.log(-ops.log(ops.cast(uniform,
                                                        scores.dtype)))
        chosen = ops.one_hot(ops.argmax(scores, axis=-1), len(MOVES),
                             dtype=control.dtype)
        move = ops.sum(chosen * ops.convert_to_tensor(MOVES, control.dtype),
                       axis=-1, keepdims=True)
        position = ops.clip(position + move, 0.0, float(self.positions - 1))
        weights = ops.one_hot(ops.cast(position[:, 0], "int32"),
                              self.positions, dtype=data.dtype)
        log_prob = log_prob + ops.sum(chosen * log_pi, axis=-1, keepdims=True)
        probabilities = ops.exp(log_pi)
        entropy = entropy - ops.sum(probabilities * log_pi, axis=-1,
                                    keepdims=True)
        data3 = ops.reshape(data, (-1, self.positions, self.width))
        output = ops.sum(weights[:, :, None] * data3, axis=1)
        new_states = [position, log_prob, entropy, key, data]
        if traces:
            return output, new_states, {"position": position,
                                        "weights": weights,
                                        "probabilities": probabilities}
        return output, new_states

    def get_config(self):
        return {
            **super().get_config(),
            "positions": self.positions,
            "width": self.width,
            "forward_bias": self.forward_bias,
            "seed": self.seed,
        }


def reinforce_loss(reward, log_prob, entropy=None, entropy_weight=0.0):
    """Per-sample REINFORCE loss for heads such as `HardAttention`.

        advantage = (reward − mean(reward)) / (std(reward) + 1e-3)
        loss      = −stop_gradient(advantage) · log_prob
                    − entropy_weight · entropy

    The batch mean is the baseline, and dividing by the batch's spread keeps
    the step size steady as the rewards shrink. Minimising the loss raises
    the log-probability of the moves of walks that did better than the
    batch; the entropy bonus keeps the policy from settling early on one
    walk.

    Args:
        reward: `(batch,)` tensor, higher is better; no gradient is taken.
        log_prob: `(batch,)` sum of the log-probabilities of the moves made
            (`HardAttention`'s second state).
        entropy: Optional `(batch,)` policy entropy per step (the third
            state divided by the number of steps).
        entropy_weight: Non-negative float. Default 0.0.

    Returns:
        `(batch,)` loss.
    """
    entropy_weight = _validation.non_negative_float("entropy_weight",
                                                    entropy_weight)
    reward = ops.stop_gradient(ops.convert_to_tensor(reward))
    advantage = reward - ops.mean(reward)
    advantage = advantage / (ops.std(advantage) + 1e-3)
    loss = -advantage * log_prob
    if entropy is not None and entropy_weight:
        loss = loss - entropy_weight * entropy
    return loss
