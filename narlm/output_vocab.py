"""A restricted output vocabulary: the token ids a task's targets use.

NAG-BERT predicts over its own target vocabulary, not BERT's 30,522
WordPieces. Sentence compression's 8,000 training targets use ~12.5k distinct
WordPieces, so restricting the output head (`[T, D] x [D, V']`) and the CRF's
beam top-k to them makes both ~2.4x cheaper, with the same encoder and the
same parameter layout (the head gathers the rows it needs; see
`narlm.modules.encoder.OutputHead`).

`OutputVocab` is immutable and hashable (a Flax module attribute); tokens
outside it map to the unknown token's class, so a target token the training
data never showed cannot be produced (its share is reported by `coverage`).

Usage (gin):  OUTPUT_VOCAB = @output_vocab.from_task()
              output_vocab.from_task.task_name = 'sentcomp_bert'
"""

from __future__ import annotations

import collections
import functools
import hashlib
from typing import Iterable, Optional, Sequence

import numpy as np


class OutputVocab:
  """Sorted vocabulary ids [V'] of the output classes.

  Class 0 is the pad id 0 (so "pad" means the same in both spaces); the
  required ids (pad, eos, unk) are always in.
  """

  def __init__(self, ids: Iterable[int], *, vocab_size: int, unk_id: int,
               required: Sequence[int] = ()):
    ids = sorted(set(int(i) for i in ids) | {0, int(unk_id), *map(int, required)})
    if ids[0] < 0 or ids[-1] >= vocab_size:
      raise ValueError(f"output vocabulary ids must lie in [0, {vocab_size}), got "
                       f"{ids[0]}..{ids[-1]}")
    self.ids = np.asarray(ids, np.int32)
    self.ids.setflags(write=False)
    self.vocab_size = int(vocab_size)
    self.unk_id = int(unk_id)
    table = np.full((vocab_size,), np.searchsorted(self.ids, unk_id), np.int32)
    table[self.ids] = np.arange(len(self.ids), dtype=np.int32)
    table.setflags(write=False)
    self.class_of_id = table  # [V] vocabulary id -> class (unk's class if absent)
    self.digest = hashlib.sha256(self.ids.tobytes() + str(vocab_size).encode()).hexdigest()[:16]

  @property
  def size(self) -> int:
    return int(len(self.ids))

  def index_of(self, token_id: int) -> int:
    return int(self.class_of_id[int(token_id)])

  def coverage(self, token_ids: Iterable[int]) -> float:
    """Share of `token_ids` that the output vocabulary contains."""
    ids = np.fromiter((int(i) for i in token_ids), np.int64)
    return float(np.isin(ids, self.ids).mean()) if ids.size else 1.0

  def __len__(self):
    return self.size

  def __hash__(self):
    return hash(self.digest)

  def __eq__(self, other):
    return isinstance(other, OutputVocab) and other.digest == self.digest

  def __repr__(self):
    return f"OutputVocab(size={self.size}, vocab_size={self.vocab_size}, digest={self.digest})"


@functools.lru_cache(maxsize=8)
def from_task(task_name: str, split: str = "train", min_count: int = 1,
              include_inputs: bool = False) -> OutputVocab:
  """The ids that occur >= `min_count` times in a seqio task's targets.

  Deterministic for fixed data, so a run's config.gin rebuilds the same
  vocabulary when it is served or compared (a changed data file changes
  the CRF's parameter shapes, and the restore then fails naming them).

  Args:
    task_name: a registered seqio task (importing narlm.tasks).
    split: where to count (the training split: never a test split).
    min_count: minimum number of occurrences.
    include_inputs: also count the sources' tokens (copy tasks).
  """
  from narlm import tasks  # pylint: disable=g-import-not-at-top
  if split == "test":
    raise ValueError("an output vocabulary must not be built from a test split")
  task = tasks.get_task_or_mixture(task_name)
  vocab = task.output_features["targets"].vocabulary
  counts: collections.Counter = collections.Counter()
  ds = task.get_dataset(sequence_length=None, split=split, shuffle=False)
  for ex in ds.as_numpy_iterator():
    counts.update(ex["targets"].tolist())
    if include_inputs:
      counts.update(ex["inputs"].tolist())
  if not counts:
    raise ValueError(f"task {task_name!r} split {split!r} has no target tokens to build an "
                     "output vocabulary from")
  ids = [i for i, c in counts.items() if c >= min_count]
  required = [vocab.eos_id]
  for name in ("cls_id", "unk_id"):
    if getattr(vocab, name, None) is not None:
      required.append(getattr(vocab, name))
  return OutputVocab(ids, vocab_size=vocab.vocab_size, unk_id=vocab.unk_id, required=required)


def task_coverage(output_vocab: OutputVocab, task_name: str,
                  split: str = "validation", max_examples: int = 5000) -> tuple[int, int]:
  """(target tokens of `split` outside `output_vocab`, all target tokens),
  pads not counted (source-aligned targets are mostly pad): what a model
  restricted to it can never produce on that split. Reads at most
  `max_examples` examples: a mixture's dataset repeats without end."""
  from narlm import tasks  # pylint: disable=g-import-not-at-top
  task = tasks.get_task_or_mixture(task_name)
  outside = total = 0
  dataset = task.get_dataset(sequence_length=None, split=split, shuffle=False)
  for ex in dataset.take(max_examples).as_numpy_iterator():
    ids = ex["targets"]
    ids = ids[ids != 0]
    outside += int((~np.isin(ids, output_vocab.ids)).sum())
    total += int(ids.size)
  return outside, total


def from_ids(ids: Sequence[int], vocab_size: int, unk_id: int,
             required: Sequence[int] = ()) -> OutputVocab:
  """An OutputVocab from explicit ids (tests, hand-made vocabularies)."""
  return OutputVocab(ids, vocab_size=vocab_size, unk_id=unk_id, required=required)


def maybe_class_of(output_vocab: Optional[OutputVocab], token_ids):
  """Vocabulary ids -> output classes (identity without a restriction)."""
  if output_vocab is None:
    return token_ids
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return jnp.asarray(output_vocab.class_of_id)[token_ids]


def maybe_id_of(output_vocab: Optional[OutputVocab], classes):
  """Output classes -> vocabulary ids (identity without a restriction)."""
  if output_vocab is None:
    return classes
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return jnp.asarray(output_vocab.ids)[classes]
