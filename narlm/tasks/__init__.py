"""narlm's seqio tasks and mixtures; importing this package registers them.

Fine-tuning (narlm.tasks.finetuning): sentcomp_bert, sentcomp_aligned_bert,
sentcomp_t5, sentcomp_distilled_bert, sentcomp_distilled_aligned_bert,
iwslt14_de_en_bert, iwslt14_de_en_t5, gigaword_bert, gigaword_tfds_bert.
Pretraining (narlm.tasks.pretraining): wikipedia_bert, bookcorpus_bert,
wikitext2_local_bert, books_local_bert; mixtures narlm_wiki_books,
narlm_wiki_books_local.

Adding a task = one `seqio.TaskRegistry.add` call in one of those modules.
"""

import difflib
from typing import Union

import seqio

from narlm.tasks import finetuning  # pylint: disable=unused-import
from narlm.tasks import pretraining  # pylint: disable=unused-import

FINETUNING_TASKS = (
    "sentcomp_bert", "sentcomp_aligned_bert", "sentcomp_t5", "sentcomp_distilled_bert",
    "sentcomp_distilled_aligned_bert", "iwslt14_de_en_bert",
    "iwslt14_de_en_t5", "gigaword_bert", "gigaword_tfds_bert",
)
_PRETRAINING_BASE = ("wikipedia_bert", "bookcorpus_bert", "wikitext2_local_bert",
                     "books_local_bert")
# Each pretraining task with today's objective, the both-ways one and plain MLM.
PRETRAINING_TASKS = _PRETRAINING_BASE + tuple(
    f"{name}_{objective}" for objective in ("both_ways", "mlm") for name in _PRETRAINING_BASE)
MIXTURES = tuple(f"narlm_wiki_books{where}{objective}" for objective in ("", "_both_ways", "_mlm")
                 for where in ("", "_local"))


def get_task_or_mixture(name: str) -> Union[seqio.Task, seqio.Mixture]:
  """`seqio.get_mixture_or_task`, with a ValueError listing close matches."""
  names = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
  if name not in names:
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f" Close matches: {close}." if close else ""
    raise ValueError(
        f"Unknown seqio task or mixture {name!r}.{hint} narlm registers: "
        f"{sorted(FINETUNING_TASKS + PRETRAINING_TASKS + MIXTURES)}.")
  return seqio.get_mixture_or_task(name)
