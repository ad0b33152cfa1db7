"""Train a small language model with optax's loss, then with lossax's, and compare.

Plain JAX + optax, no other dependency: a next-token MLP over a window of 8 tokens with
tied embeddings (the embedding table ``E`` [V, D] is also the output layer), trained on
a generated corpus (a random Markov chain, so the best possible loss is known). The
three ``--loss`` choices differ in one line each (see ``LOSSES``):

- ``optax``: ``optax.losses.softmax_cross_entropy_with_integer_labels(h @ E.T, y)``
- ``lossax``: the same call from lossax (the drop-in)
- ``lossax-fused``: ``lossax.linear_softmax_cross_entropy(h, y, E.T)``, which never
  builds the [batch, V] logits

Run::

    python examples/train_lm.py                          # all three, 300 steps
    python examples/train_lm.py --loss lossax-fused --vocab 32768 --steps 1000

It prints the loss curves side by side, their largest difference, the training speed
(tokens/s) and the temporaries of the compiled step (``memory_analysis()``: the
scratch memory XLA allocates besides parameters, inputs and outputs). At the default
size all three need the same temporaries: with ``reduction="mean"`` the fused loss
works on tiles of 2^23 logits on CPU, so it saves memory once batch x V is larger
(``--vocab 32768 --batch 1024 --steps 50``: about 0.2 s a step on 2 cores).
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lossax

# The one line that changes: h [B, D] hidden states, y [B] next tokens, emb [V, D].
LOSSES = {
    "optax": lambda h, y, emb: optax.losses.softmax_cross_entropy_with_integer_labels(
        h @ emb.T, y).mean(),
    "lossax": lambda h, y, emb: lossax.softmax_cross_entropy_with_integer_labels(
        h @ emb.T, y, reduction="mean"),
    "lossax-fused": lambda h, y, emb: lossax.linear_softmax_cross_entropy(
        h, y, emb.T, reduction="mean"),  # tied [V, D] embeddings: pass E.T ([D, V])
}


def make_corpus(vocab: int, length: int, seed: int = 0) -> tuple[np.ndarray, float]:
    """Tokens from a random Markov chain (4 likely successors per token), and the
    chain's entropy in nats: the lowest loss a model can reach."""
    rng = np.random.default_rng(seed)
    successors = rng.integers(0, vocab, size=(vocab, 4))
    probs = np.array([0.5, 0.25, 0.15, 0.10])
    choice = rng.choice(4, size=length, p=probs)
    tokens = [int(rng.integers(vocab))]
    for c in choice[1:]:
        tokens.append(int(successors[tokens[-1], c]))
    return np.asarray(tokens, np.int32), float(-(probs * np.log(probs)).sum())


def init_params(key: jax.Array, vocab: int, dim: int, context: int, hidden: int) -> dict:
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "embed": jax.random.normal(k1, (vocab, dim)) / math.sqrt(dim),  # also the output
        "w1": jax.random.normal(k2, (context * dim, hidden)) / math.sqrt(context * dim),
        "w2": jax.random.normal(k3, (hidden, dim)) / math.sqrt(hidden),
    }


def hidden_states(params: dict, context: jax.Array) -> jax.Array:
    """[B, C] token ids -> [B, D] hidden states (the input of the output layer)."""
    e = params["embed"][context].reshape(context.shape[0], -1)
    return jax.nn.gelu(e @ params["w1"]) @ params["w2"]


def make_step(loss_fn, optimizer, corpus: jax.Array, batch: int, context: int, seed: int):
    def step(params, opt_state, i):
        # A batch of random windows of the corpus: `context` tokens, then the target.
        key = jax.random.fold_in(jax.random.key(seed), i)
        start = jax.random.randint(key, (batch,), 0, corpus.shape[0] - context)
        window = corpus[start[:, None] + jnp.arange(context + 1)[None, :]]  # [B, C + 1]
        x, y = window[:, :-1], window[:, -1]
        loss, grads = jax.value_and_grad(
            lambda p: loss_fn(hidden_states(p, x), y, p["embed"]))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step)


def train(name: str, args: argparse.Namespace, corpus: jax.Array) -> dict:
    params = init_params(jax.random.key(args.seed), args.vocab, args.dim, args.context,
                         args.hidden)
    optimizer = optax.adam(args.lr)
    opt_state = optimizer.init(params)
    step = make_step(LOSSES[name], optimizer, corpus, args.batch, args.context, args.seed)
    compiled = step.lower(params, opt_state, np.int32(0)).compile()
    temp_bytes = compiled.memory_analysis().temp_size_in_bytes
    params, opt_state, loss = compiled(params, opt_state, np.int32(0))  # the first step
    losses = [jax.block_until_ready(loss)]
    start = time.perf_counter()  # the other steps are timed
    for i in range(1, args.steps):
        params, opt_state, loss = compiled(params, opt_state, np.int32(i))
        losses.append(loss)
    jax.block_until_ready(loss)
    seconds = time.perf_counter() - start
    losses = np.asarray(jax.device_get(losses), np.float64)
    tokens_per_s = (args.steps - 1) * args.batch / seconds if args.steps > 1 else math.nan
    return {"losses": losses, "tokens_per_s": tokens_per_s, "temp_bytes": temp_bytes}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--loss", default="all", choices=["all", *LOSSES])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=256, help="tokens per step")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--context", type=int, default=8)
    p.add_argument("--corpus", type=int, default=200_000, help="corpus length in tokens")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--every", type=int, help="print the loss every this many steps")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    args = parse_args(argv)
    names = list(LOSSES) if args.loss == "all" else [args.loss]
    tokens, entropy = make_corpus(args.vocab, args.corpus, args.seed)
    print(f"corpus: {len(tokens)} tokens, V={args.vocab}; best possible loss "
          f"{entropy:.3f}, uniform guess {math.log(args.vocab):.3f}")
    print(f"model: context {args.context}, D={args.dim}, hidden {args.hidden}, tied "
          f"embeddings; {args.steps} steps of {args.batch} tokens, adam {args.lr:g}\n")
    corpus = jnp.asarray(tokens)
    results = {name: train(name, args, corpus) for name in names}

    every = args.every or max(1, args.steps // 10)
    rows = sorted({*range(0, args.steps, every), args.steps - 1})
    print("step " + "".join(f"{n:>14}" for n in names))
    for i in rows:
        print(f"{i:4d} " + "".join(f"{results[n]['losses'][i]:14.5f}" for n in names))
    if len(names) > 1:
        ref = results[names[0]]["losses"]
        diffs = ", ".join(f"{n} {np.max(np.abs(results[n]['losses'] - ref)):.2e}"
                          for n in names[1:])
        print(f"\nlargest difference from {names[0]} over {args.steps} steps: {diffs}")
    print(f"\n{'loss':14}{'tokens/s':>12}{'step temporaries':>20}")
    for n in names:
        r = results[n]
        print(f"{n:14}{r['tokens_per_s']:12.0f}{r['temp_bytes'] / 2**20:16.2f} MiB")
    return results


if __name__ == "__main__":
    main()
