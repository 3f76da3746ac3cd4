"""Pretraining tasks: non-autoregressive denoising (see
`narlm.tasks.preprocessors` for the objective and why).

Each example: a clean span of text of at most
`min(targets_length - 2, inputs_length)` WordPiece tokens as `targets`, and its
corrupted copy (span deletion + BERT masking) as `inputs`. Long documents are
cut into consecutive spans; with `sequence_length=None` the documents are not
split.

* wikipedia_bert: TFDS `wikipedia/20230601.en` (train = first 99% of its only
  split, validation = the last 1%); read-only: it must already be prepared in
  the TFDS data dir (`$TFDS_DATA_DIR`); nothing is downloaded.
* bookcorpus_bert: `.txt` files under `$NARLM_BOOKCORPUS_DIR` (recursive; one
  example per paragraph). TFDS has no BookCorpus builder. Train split only.
* narlm_wiki_books: mixture of the two, rates proportional to the word counts
  BERT reported (Wikipedia 2,500M, BooksCorpus 800M).
* `<task>_both_ways` / `narlm_wiki_books[_local]_both_ways`: the same data
  with the stronger objective of narlm/tasks/span_corruption.py (shifts both
  ways, a masking ratio per example).
* `<task>_mlm` / `narlm_wiki_books[_local]_mlm`: plain MLM (BERT's masking, no
  deletion, loss on the masked positions only), the experiment's control.
* Offline stand-ins from `$NARLM_DATA_DIR/pretrain`: wikitext2_local_bert
  (train = WikiText-2 valid, validation = test; one example per paragraph of
  at least 40 characters, which drops the "= = Heading = =" lines),
  books_local_bert (Project Gutenberg books + tinyshakespeare; validation =
  botchan.txt), and their mixture narlm_wiki_books_local.
"""

import functools

import seqio
import tensorflow as tf

from narlm import vocabularies
from narlm.tasks import preprocessors as prep
from narlm.tasks import sources
from narlm.tasks import span_corruption

BERT = vocabularies.bert_vocabulary()

BERT_FEATURES = {
    "inputs": seqio.Feature(BERT, add_eos=False, required=True),
    "targets": seqio.Feature(BERT, add_eos=False),
}

def _text_to_spans_then(*corruption):
  """Text -> WordPiece spans (no empty ones) -> the given corruption steps."""
  return [
      functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
      functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
      prep.split_tokens,
      prep.filter_empty_targets,
      *corruption,
  ]


DENOISE_PREPROCESSORS = _text_to_spans_then(prep.nar_denoise, prep.filter_empty_inputs)

# The stronger objective (narlm/tasks/span_corruption.py): shifts both ways,
# span masking at a ratio drawn per example from 0.15-0.8.
BOTH_WAYS_PREPROCESSORS = _text_to_spans_then(span_corruption.both_ways_denoise,
                                              prep.filter_empty_inputs)

# Plain MLM, the control objective (preprocessors.mlm_denoise): no deletion,
# loss on the 15% selected positions only; for models with USE_CRF=False.
# The loss weights are an output feature: a seqio Mixture keeps only its
# output features, and without them the converter would weight every position.
MLM_FEATURES = {
    **BERT_FEATURES,
    "targets_loss_weights": seqio.Feature(seqio.PassThroughVocabulary(1), add_eos=False,
                                          required=False, dtype=tf.float32),
}
MLM_PREPROCESSORS = _text_to_spans_then(prep.mlm_denoise)

WIKI_RATE = 2.5
BOOKS_RATE = 0.8

LOCAL_BOOKS_TRAIN = [
    "11-0.txt", "2701-0.txt", "74-0.txt", "98-0.txt",
    "Pride_and_Prejudice_JaneAusten.txt", "pg1661.txt", "tinyshakespeare.txt",
]

# ---------------------------------------------------------------- full size
seqio.TaskRegistry.add(
    "wikipedia_bert",
    source=seqio.TfdsDataSource(
        tfds_name="wikipedia/20230601.en:1.0.0",
        splits={"train": "train[:99%]", "validation": "train[99%:]"},
        read_only=True),
    output_features=BERT_FEATURES,
    preprocessors=DENOISE_PREPROCESSORS,
    metric_fns=[],
)

seqio.TaskRegistry.add(
    "bookcorpus_bert",
    source=sources.TextFileSource(
        {"train": "**/*.txt"}, base_dir=sources.bookcorpus_dir,
        mode="paragraph", min_chars=40),
    output_features=BERT_FEATURES,
    preprocessors=DENOISE_PREPROCESSORS,
    metric_fns=[],
)

seqio.MixtureRegistry.add(
    "narlm_wiki_books",
    [("wikipedia_bert", WIKI_RATE), ("bookcorpus_bert", BOOKS_RATE)],
)

# ---------------------------------------------------------- offline stand-ins
seqio.TaskRegistry.add(
    "wikitext2_local_bert",
    source=sources.TextFileSource(
        {"train": "valid.txt", "validation": "test.txt"},
        base_dir=sources.shared_dir("pretrain", "wikitext2"),
        mode="paragraph", min_chars=40),
    output_features=BERT_FEATURES,
    preprocessors=DENOISE_PREPROCESSORS,
    metric_fns=[],
)

seqio.TaskRegistry.add(
    "books_local_bert",
    source=sources.TextFileSource(
        {"train": LOCAL_BOOKS_TRAIN, "validation": "botchan.txt"},
        base_dir=sources.shared_dir("pretrain", "books"),
        mode="paragraph", min_chars=40),
    output_features=BERT_FEATURES,
    preprocessors=DENOISE_PREPROCESSORS,
    metric_fns=[],
)

seqio.MixtureRegistry.add(
    "narlm_wiki_books_local",
    [("wikitext2_local_bert", WIKI_RATE), ("books_local_bert", BOOKS_RATE)],
)

# ------------- the same data, the both-ways objective (_both_ways) and plain MLM (_mlm)
_BASE_TASKS = ("wikipedia_bert", "bookcorpus_bert", "wikitext2_local_bert", "books_local_bert")
for _suffix, _preprocessors, _features in (("both_ways", BOTH_WAYS_PREPROCESSORS, BERT_FEATURES),
                                           ("mlm", MLM_PREPROCESSORS, MLM_FEATURES)):
  for _name in _BASE_TASKS:
    seqio.TaskRegistry.add(
        f"{_name}_{_suffix}",
        source=seqio.get_mixture_or_task(_name).source,
        output_features=_features,
        preprocessors=_preprocessors,
        metric_fns=[],
    )
  seqio.MixtureRegistry.add(
      f"narlm_wiki_books_{_suffix}",
      [(f"wikipedia_bert_{_suffix}", WIKI_RATE), (f"bookcorpus_bert_{_suffix}", BOOKS_RATE)],
  )
  seqio.MixtureRegistry.add(
      f"narlm_wiki_books_local_{_suffix}",
      [(f"wikitext2_local_bert_{_suffix}", WIKI_RATE), (f"books_local_bert_{_suffix}", BOOKS_RATE)],
  )
