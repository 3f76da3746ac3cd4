"""Synthetic multimodality benchmark: what the CRF on top of NAG-BERT is for.

A non-autoregressive model predicts every output position independently.  When
the target has two equally likely renderings, per-position argmax can mix them
("a1 b2"), an output that is never in the data.  This benchmark isolates that
failure on generated data (numpy only, no seqio/TF):

* an example is k concepts c_1..c_k (k uniform in 3..6, concepts uniform in
  0..C-1, C = 12);
* the source repeats each concept token twice, ``c_1 c_1 c_2 c_2 .. eos eos``,
  so output positions 2j, 2j+1 are predicted from source positions 2j, 2j+1;
* the target renders each concept occurrence as ONE of two 2-token phrases,
  A_c = (a1_c, a2_c) or B_c, 50/50 and independently per occurrence, then
  ``eos eos`` (as NAG-BERT's targets), then pad.  B_c depends on the concept's
  kind (cycling over the concepts): 'distinct' B = (b1_c, b2_c); 'repeat'
  B = (w_c, w_c); 'swap' B = (a2_c, a1_c), whose mixtures (a1 a1), (a2 a2)
  are exactly NAR token repetitions.  'repeat' and 'swap' are the concepts
  where the CRF's self-transition diagonal can act directly (favour w -> w,
  penalise a -> a) without spending low-rank capacity.

Vocabulary: pad 0, eos 1, the C concept tokens, the phrase tokens (V = 50).
A tiny BertWithHead (2 layers, d = 64, no dropout) is trained with Adam
(lr 3e-3, batch 32) for a fixed number of steps on fresh batches, in four
variants, every seed of a variant vmapped into one program:

* ``no_crf``: token NLL, per-position argmax decoding;
* ``beam_crf``: crf_ops.crf_log_likelihood + viterbi_decode, beam K = 8 < V;
* ``exact_crf``: exact_numerator - exact_log_partition and
  exact_viterbi_decode with the dense low_rank_transitions (all V tokens);
* ``beam_crf_diag``: beam CRF + learned self-transition diagonal (eos and pad
  exempt, as the network does).

CRF losses are CRF NLL + 0.5 token NLL (narlm.losses.nag_loss); CRF rank 4.
Training batches are antithetic: each source appears twice, with every phrase
choice flipped in the copy.  With i.i.d. choices, a batch's A/B imbalance for
a concept pushes the logits of a1_c and a2_c (and b1_c, b2_c) in the same
direction at once, so the no-CRF argmax drifts towards whichever phrase the
last batches favoured and is consistent by accident (``--iid-batches
--variants no_crf``: 86-90% consistency, 50-64% validity over 3 seeds);
balanced batches leave the per-position marginals at 50/50,
the situation the CRF is meant for.  Held-out examples are i.i.d.

Outputs are decoded over the source's valid positions and cut at the first
eos.  Metrics (%) on held-out generated examples:

* ``consistency``: concept occurrences rendered as phrase A or B (also per
  kind: consistency_distinct / _repeat / _swap);
* ``validity``: outputs whose every concept is a valid phrase and whose
  length (up to the first eos) is exactly 2k;
* ``token_valid``: phrase positions holding one of the two phrases' tokens
  for that slot (the marginals are learned; mixing them is the failure).

Run: ``python -m narlm.multimodality [--steps 300] [--seeds 3] [--out F]``.
The default run (4 variants x 3 seeds) took 3 min 23 s and 3 min 59 s wall
in two runs, 144 s and 178 s CPU (/usr/bin/time; 2 CPU cores shared with
other jobs: load average 6-8, the run got 71-74% of one core); results (the
same in both runs) in docs/multimodality.json.  At the default
rank 4 every CRF variant saturates (100%).  ``--crf-rank 1 --variants
beam_crf,beam_crf_diag`` starves the low-rank part; there the diagonal
lifts validity from 63% to 78% and 'swap' consistency from 87% to 100%
(3 seeds, 1 min 57 s).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

PAD, EOS = 0, 1
VARIANTS = ('no_crf', 'beam_crf', 'exact_crf', 'beam_crf_diag')


KINDS = {'d': 'distinct', 'r': 'repeat', 's': 'swap'}


@dataclasses.dataclass(frozen=True)
class TaskConfig:
  """The synthetic task.

  ``kinds`` cycles over the concepts: concept c has kind kinds[c % len]:
  'd' distinct (A = a1 a2, B = b1 b2), 'r' repeat (B = w w),
  's' swap (B = a2 a1).
  """
  num_concepts: int = 12
  min_concepts: int = 3
  max_concepts: int = 6
  kinds: str = 'drs'

  def __post_init__(self):
    if self.num_concepts < 1:
      raise ValueError(f'num_concepts must be >= 1, got {self.num_concepts}')
    if not 1 <= self.min_concepts <= self.max_concepts:
      raise ValueError(f'need 1 <= min_concepts <= max_concepts, got '
                       f'{self.min_concepts}, {self.max_concepts}')
    if not self.kinds or set(self.kinds) - set(KINDS):
      raise ValueError(f'kinds must be a non-empty string over '
                       f'{sorted(KINDS)}, got {self.kinds!r}')

  @property
  def length(self) -> int:
    """Padded sequence length L: 2 tokens per concept + eos eos."""
    return 2 * self.max_concepts + 2

  def kind(self, c: int) -> str:
    return KINDS[self.kinds[c % len(self.kinds)]]


def phrase_table(cfg: TaskConfig) -> np.ndarray:
  """int32 [C, 2 phrases, 2 tokens]; ids after pad, eos and the concepts."""
  table = np.zeros((cfg.num_concepts, 2, 2), np.int32)
  next_id = 2 + cfg.num_concepts
  for c in range(cfg.num_concepts):
    a1, a2 = next_id, next_id + 1
    phrase_b = {'distinct': (a2 + 1, a2 + 2), 'repeat': (a2 + 1, a2 + 1),
                'swap': (a2, a1)}[cfg.kind(c)]
    table[c] = [[a1, a2], phrase_b]
    next_id = max(a2, *phrase_b) + 1
  return table


def vocab_size(cfg: TaskConfig) -> int:
  return int(phrase_table(cfg).max()) + 1


def generate(cfg: TaskConfig, rng: np.random.Generator, n: int,
             antithetic: bool = False) -> Dict[str, np.ndarray]:
  """n examples.

  With ``antithetic`` (n even) the second half repeats the first half's
  sources with every phrase choice flipped, so each concept occurrence of a
  batch is rendered once as A and once as B (see `train_and_evaluate`).

  Returns dict of numpy arrays: inputs, targets [n, L] int32; weights [n, L]
  float32 (1 on phrase and eos positions); concepts [n, max_concepts] int32
  (-1 past k); num_concepts [n] int32.
  """
  table = phrase_table(cfg)
  big_l, kmax = cfg.length, cfg.max_concepts
  k = rng.integers(cfg.min_concepts, kmax + 1, size=n)
  concepts = rng.integers(0, cfg.num_concepts, size=(n, kmax))
  concepts = np.where(np.arange(kmax)[None] < k[:, None], concepts, -1)
  choice = rng.integers(0, 2, size=(n, kmax))
  if antithetic:
    if n % 2:
      raise ValueError(f'antithetic batches need an even size, got {n}')
    half = n // 2
    k[half:], concepts[half:] = k[:half], concepts[:half]
    choice[half:] = 1 - choice[:half]
  inputs = np.full((n, big_l), PAD, np.int32)
  targets = np.full((n, big_l), PAD, np.int32)
  for i in range(n):
    cs = concepts[i, :k[i]]
    inputs[i, :2 * k[i]] = np.repeat(2 + cs, 2)
    targets[i, :2 * k[i]] = table[cs, choice[i, :k[i]]].reshape(-1)
    inputs[i, 2 * k[i]:2 * k[i] + 2] = EOS
    targets[i, 2 * k[i]:2 * k[i] + 2] = EOS
  weights = (np.arange(big_l)[None] < 2 * k[:, None] + 2).astype(np.float32)
  return dict(inputs=inputs, targets=targets, weights=weights,
              concepts=concepts.astype(np.int32),
              num_concepts=k.astype(np.int32))


def score_outputs(cfg: TaskConfig, tokens: np.ndarray, concepts: np.ndarray,
                  num_concepts: np.ndarray) -> Dict[str, float]:
  """Metrics (percent) of decoded tokens [n, L] against the examples.

  consistency / validity / token_valid (module docstring), plus
  consistency_<kind> over the occurrences of each concept kind.
  """
  table = phrase_table(cfg)
  phrases = [{tuple(p) for p in table[c].tolist()}
             for c in range(cfg.num_concepts)]
  kinds = sorted({cfg.kind(c) for c in range(cfg.num_concepts)})
  seen = {k: 0 for k in kinds}
  good_by_kind = {k: 0 for k in kinds}
  valid_rows = slot_ok = 0
  for row, cs, k in zip(tokens, concepts, num_concepts):
    eos = np.flatnonzero(row == EOS)
    ok_row = (int(eos[0]) if eos.size else len(row)) == 2 * k
    for j, c in enumerate(cs[:k]):
      pair = (int(row[2 * j]), int(row[2 * j + 1]))
      good = pair in phrases[c]
      seen[cfg.kind(c)] += 1
      good_by_kind[cfg.kind(c)] += good
      ok_row &= good
      slot_ok += (pair[0] in table[c, :, 0]) + (pair[1] in table[c, :, 1])
    valid_rows += ok_row
  occurrences = sum(seen.values())
  metrics = dict(consistency=100.0 * sum(good_by_kind.values()) / occurrences,
                 validity=100.0 * valid_rows / len(tokens),
                 token_valid=100.0 * slot_ok / (2 * occurrences))
  for k in kinds:
    metrics[f'consistency_{k}'] = 100.0 * good_by_kind[k] / max(seen[k], 1)
  return {name: float(x) for name, x in metrics.items()}


# ---------------------------------------------------------------------------
# Model, loss, decoding.
# ---------------------------------------------------------------------------


def _build(variant: str, cfg: TaskConfig, crf_rank: int, beam_size: int):
  from narlm.modules.crf import DynamicCRF  # pylint: disable=g-import-not-at-top
  from narlm.modules.encoder import BertConfig, BertWithHead  # pylint: disable=g-import-not-at-top
  v = vocab_size(cfg)
  bert = BertWithHead(BertConfig.tiny(
      v, max_position_embeddings=cfg.length, hidden_dropout=0.0,
      attention_dropout=0.0, pad_id=PAD))
  crf = None
  if variant != 'no_crf':
    crf = DynamicCRF(vocab_size=v, rank=crf_rank, beam_size=beam_size,
                     self_transition=variant == 'beam_crf_diag',
                     self_transition_exempt_ids=(PAD, EOS))
  return bert, crf


def _crf_log_likelihood(variant, crf, crf_params, logits, targets, mask):
  from narlm import crf_ops  # pylint: disable=g-import-not-at-top
  from narlm.modules.crf import DynamicCRF  # pylint: disable=g-import-not-at-top
  if variant == 'exact_crf':
    trans = crf.apply({'params': crf_params}, method=DynamicCRF.transitions)
    return (crf_ops.exact_numerator(logits, targets, mask, trans) -
            crf_ops.exact_log_partition(logits, mask, trans))
  return crf.apply({'params': crf_params}, logits, targets, mask)


def _decode(variant, crf, params, bert, inputs):
  """int [B, L] inputs -> int32 [B, L] tokens over the source's valid span."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from narlm import crf_ops  # pylint: disable=g-import-not-at-top
  from narlm.modules.crf import DynamicCRF  # pylint: disable=g-import-not-at-top
  _, logits = bert.apply({'params': params['bert']}, inputs)
  mask = inputs != PAD
  if variant == 'no_crf':
    return jnp.where(mask, jnp.argmax(logits, -1), PAD).astype(jnp.int32)
  if variant == 'exact_crf':
    trans = crf.apply({'params': params['crf']}, method=DynamicCRF.transitions)
    return crf_ops.exact_viterbi_decode(logits, mask, trans)[0]
  return crf.apply({'params': params['crf']}, logits, mask,
                   method=DynamicCRF.decode)[0]


@functools.lru_cache(maxsize=None)
def _programs(variant: str, cfg: TaskConfig, crf_rank: int, beam_size: int,
              learning_rate: float):
  """Jitted (init, train_step, decode) of a variant, vmapped over seeds.

  All seeds of a variant train in one program (leading axis S on params,
  optimiser state and batches): one compile and one dispatch per step for
  all S seeds.  (Per-step compute still grows ~linearly with S on CPU.)
  """
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from narlm import losses  # pylint: disable=g-import-not-at-top
  from narlm.modules.crf import DynamicCRF  # pylint: disable=g-import-not-at-top
  if variant not in VARIANTS:
    raise ValueError(f'unknown variant {variant!r}; known: {VARIANTS}')
  bert, crf = _build(variant, cfg, crf_rank, beam_size)
  tx = optax.adam(learning_rate)

  def init(rng):
    bert_rng, crf_rng = jax.random.split(rng)
    dummy = jax.numpy.full((1, cfg.length), EOS, jax.numpy.int32)
    params = {'bert': bert.init(bert_rng, dummy)['params']}
    if crf is not None:
      params['crf'] = crf.init(crf_rng,
                               method=DynamicCRF.transitions)['params']
    return params, tx.init(params)

  def loss_fn(params, batch):
    _, logits = bert.apply({'params': params['bert']}, batch['inputs'])
    ll = None
    if crf is not None:
      ll = _crf_log_likelihood(variant, crf, params['crf'], logits,
                               batch['targets'], batch['weights'] > 0)
    return losses.nag_loss(logits, batch['targets'], batch['weights'], ll,
                           token_nll_weight=0.5)[0]

  def train_step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def decode(params, inputs):
    return _decode(variant, crf, params, bert, inputs)

  # jit(vmap(init)) is one program: eager init costs ~80 tiny compiles.
  return (jax.jit(jax.vmap(init)), jax.jit(jax.vmap(train_step)),
          jax.jit(jax.vmap(decode)))


def train_and_evaluate(variant: str, seeds: Sequence[int], steps: int,
                       cfg: TaskConfig = TaskConfig(), *, batch_size: int = 32,
                       learning_rate: float = 3e-3, crf_rank: int = 4,
                       beam_size: int = 8, eval_size: int = 512,
                       antithetic: bool = True) -> List[Dict[str, float]]:
  """Trains one variant from scratch per seed; held-out metrics per seed."""
  import jax  # pylint: disable=g-import-not-at-top
  init, train_step, decode = _programs(variant, cfg, crf_rank, beam_size,
                                       learning_rate)
  params, opt_state = init(jax.numpy.stack(
      [jax.random.PRNGKey(seed) for seed in seeds]))
  # Per seed, separate streams: training batches and held-out examples never
  # share draws (fresh examples every step: there is no fixed training set).
  train_rngs = [np.random.default_rng([seed, 0]) for seed in seeds]
  losses = np.full(len(seeds), np.nan)
  for _ in range(steps):
    batches = [generate(cfg, rng, batch_size, antithetic=antithetic)
               for rng in train_rngs]
    batch = {k: np.stack([b[k] for b in batches])
             for k in ('inputs', 'targets', 'weights')}
    params, opt_state, losses = train_step(params, opt_state, batch)
  held_out = [generate(cfg, np.random.default_rng([seed, 1]), eval_size)
              for seed in seeds]
  tokens = np.asarray(decode(params,
                             np.stack([h['inputs'] for h in held_out])))
  results = []
  for i, h in enumerate(held_out):
    metrics = score_outputs(cfg, tokens[i], h['concepts'], h['num_concepts'])
    results.append(dict(metrics, final_loss=float(losses[i])))
  return results


def run(steps: int, seeds: int, variants: Sequence[str] = VARIANTS,
        cfg: TaskConfig = TaskConfig(), **kwargs) -> dict:
  """All variants x seeds 0..seeds-1 -> JSON-able result (means and per seed)."""
  start = time.perf_counter()
  results = {}
  for variant in variants:
    t0 = time.perf_counter()
    per_seed = train_and_evaluate(variant, range(seeds), steps, cfg, **kwargs)
    per_seed = [{k: round(x, 3) for k, x in m.items()} for m in per_seed]
    mean = {k: round(float(np.mean([m[k] for m in per_seed])), 2)
            for k in per_seed[0] if k != 'final_loss'}
    results[variant] = dict(mean=mean, per_seed=per_seed,
                            seconds=round(time.perf_counter() - t0, 1))
    print(f'[multimodality] {variant} ({results[variant]["seconds"]} s): '
          f'{mean}', file=sys.stderr, flush=True)
  return dict(
      config=dict(dataclasses.asdict(cfg), vocab_size=vocab_size(cfg),
                  steps=steps, seeds=seeds, **kwargs),
      results=results,
      wall_time_s=round(time.perf_counter() - start, 1))


class UsageError(ValueError):
  """A bad command-line argument (exit status 2)."""


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  """Parses and checks the flags; raises UsageError naming the bad one."""

  class Parser(argparse.ArgumentParser):

    def error(self, message):  # one line instead of usage + message
      raise UsageError(message)

  ap = Parser(prog='python -m narlm.multimodality',
              description=__doc__.split('\n')[0])
  ap.add_argument('--steps', type=int, default=300, help='Adam steps per run')
  ap.add_argument('--seeds', type=int, default=3, help='seeds 0..N-1')
  ap.add_argument('--out', default=None, help='also write the JSON here')
  ap.add_argument('--variants', default=','.join(VARIANTS),
                  help=f'comma-separated subset of {",".join(VARIANTS)}')
  ap.add_argument('--batch-size', type=int, default=32,
                  help='examples per step (even: antithetic pairs)')
  ap.add_argument('--crf-rank', type=int, default=4)
  ap.add_argument('--beam-size', type=int, default=8)
  ap.add_argument('--eval-size', type=int, default=512)
  ap.add_argument('--iid-batches', action='store_true',
                  help='i.i.d. phrase choices in training batches instead '
                       'of antithetic pairs (module docstring)')
  args = ap.parse_args(argv)
  for name in ('steps', 'seeds', 'batch_size', 'crf_rank', 'beam_size',
               'eval_size'):
    if getattr(args, name) < 1:
      raise UsageError(f'--{name.replace("_", "-")} must be >= 1, got '
                       f'{getattr(args, name)}')
  if args.batch_size % 2 and not args.iid_batches:
    raise UsageError(f'--batch-size must be even (antithetic pairs), got '
                     f'{args.batch_size}')
  args.variants = [v.strip() for v in args.variants.split(',') if v.strip()]
  unknown = sorted(set(args.variants) - set(VARIANTS))
  if unknown or not args.variants:
    raise UsageError(f'--variants: unknown {unknown or "(empty)"}; known: '
                     f'{",".join(VARIANTS)}')
  if args.beam_size > vocab_size(TaskConfig()):
    raise UsageError(f'--beam-size {args.beam_size} exceeds the vocabulary '
                     f'size V = {vocab_size(TaskConfig())}')
  return args


def main(argv: Optional[Sequence[str]] = None) -> dict:
  """CLI: runs the benchmark, prints its JSON (and writes it to --out)."""
  args = _parse_args(argv)
  result = run(args.steps, args.seeds, args.variants, TaskConfig(),
               batch_size=args.batch_size, crf_rank=args.crf_rank,
               beam_size=args.beam_size, eval_size=args.eval_size,
               antithetic=not args.iid_batches)
  result['argv'] = list(sys.argv[1:] if argv is None else argv)
  text = json.dumps(result, indent=1)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
      f.write(text + '\n')
  print(text)
  return result


if __name__ == '__main__':
  try:
    main()
  except UsageError as e:
    print(f'python -m narlm.multimodality: error: {e}', file=sys.stderr)
    sys.exit(2)
