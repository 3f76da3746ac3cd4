"""Fine-tuning (sequence-to-sequence) tasks, BERT WordPiece and T5 variants.

Every task yields int32 `inputs` / `targets` without eos (the feature
converter appends `eos eos`), keeps `*_pretokenized` strings for evaluation,
and drops examples whose tokenised inputs are empty.

Data (see narlm.tasks.sources for the directories and the bad-input policy):

* sentcomp_aligned_bert: the same data with source-aligned targets
  (`preprocessors.align_targets_to_source`: position i of the target is
  source token i or pad; decoding skips pads), for deletion compression.
* sentcomp_*: Google sentence compression, `$NARLM_DATA_DIR/sentcomp`
  {train,dev,test}.{src,tgt} (8,000 / 1,000 / 1,000); validation = dev.
* iwslt14_de_en_*: IWSLT'14 de->en (lowercased, tokenised),
  `$NARLM_DATA_DIR/iwslt14_de_en`. The offline copy has no train split, so
  train = the valid files' first 6,469 pairs, validation = their last 500
  (held out: a dev set for selection), test = test (6,750 pairs). A tiny
  scale for comparisons and demos, not a real IWSLT training run.
* sentcomp_distilled_bert: sentcomp_bert with the train targets replaced by
  a teacher's outputs (sequence-level knowledge distillation, written by
  `python -m narlm.distill`), read from `$NARLM_DISTILLED_DIR/sentcomp`
  {train,dev,test}.{src,tgt}; dev/test there are copies of the gold files.
  sentcomp_distilled_aligned_bert: the same files with source-aligned targets.
* gigaword_bert: `$NARLM_GIGAWORD_DIR` {train,dev,test}.{src,tgt}.
* gigaword_tfds_bert: TFDS `gigaword` 1.2.0, read-only: it must already be
  prepared in the TFDS data dir (`$TFDS_DATA_DIR`, default
  ~/tensorflow_datasets); nothing is downloaded, and it fails only when used.

Metrics are computed on normalised text (see `preprocessors.nar_postprocess`).
"""

import functools

import seqio

from narlm import vocabularies
from narlm.tasks import metrics
from narlm.tasks import preprocessors as prep
from narlm.tasks import sources

BERT = vocabularies.bert_vocabulary()
T5 = vocabularies.t5_vocabulary()

BERT_FEATURES = {
    "inputs": seqio.Feature(BERT, add_eos=False, required=True),
    "targets": seqio.Feature(BERT, add_eos=False),
}
T5_FEATURES = {
    "inputs": seqio.Feature(T5, add_eos=False, required=True),
    "targets": seqio.Feature(T5, add_eos=False),
}

TEXT_PAIR_PREPROCESSORS = [seqio.preprocessors.tokenize, prep.filter_empty_inputs]
# IWSLT14's MIXER text keeps HTML entities (&apos; &quot; in ~40% of lines):
# unescaped before tokenising, sources and references alike.
UNESCAPED_TEXT_PAIR_PREPROCESSORS = [prep.unescape_html, *TEXT_PAIR_PREPROCESSORS]

SRC_TGT_SPLITS = {
    "train": ("train.src", "train.tgt"),
    "validation": ("dev.src", "dev.tgt"),
    "test": ("test.src", "test.tgt"),
}
# The offline copy has no train split: train on the valid files minus their
# last 500 pairs, which are held out as the dev set (for checkpoint and alpha
# selection; never tune on test).
IWSLT14_DEV_PAIRS = 500
IWSLT14_DE_EN_SPLITS = {
    "train": ("valid.de-en.de", "valid.de-en.en", (0, -IWSLT14_DEV_PAIRS)),
    "validation": ("valid.de-en.de", "valid.de-en.en", (-IWSLT14_DEV_PAIRS, None)),
    "test": ("test.de-en.de", "test.de-en.en"),
}

# ------------------------------------------------------ sentence compression
seqio.TaskRegistry.add(
    "sentcomp_bert",
    source=sources.PairedTextFileSource(
        SRC_TGT_SPLITS, base_dir=sources.shared_dir("sentcomp")),
    output_features=BERT_FEATURES,
    preprocessors=TEXT_PAIR_PREPROCESSORS,
    postprocess_fn=prep.postprocess_for(BERT),
    metric_fns=[metrics.rouge, metrics.compression_ratio],
)

seqio.TaskRegistry.add(
    "sentcomp_t5",
    source=sources.PairedTextFileSource(
        SRC_TGT_SPLITS, base_dir=sources.shared_dir("sentcomp")),
    output_features=T5_FEATURES,
    preprocessors=TEXT_PAIR_PREPROCESSORS,
    postprocess_fn=prep.postprocess_for(T5),
    metric_fns=[metrics.rouge, metrics.compression_ratio],
)

# Sequence-level distillation: same task, teacher outputs as train targets.
seqio.TaskRegistry.add(
    "sentcomp_distilled_bert",
    source=sources.PairedTextFileSource(
        SRC_TGT_SPLITS, base_dir=sources.distilled_dir("sentcomp")),
    output_features=BERT_FEATURES,
    preprocessors=TEXT_PAIR_PREPROCESSORS,
    postprocess_fn=prep.postprocess_for(BERT),
    metric_fns=[metrics.rouge, metrics.compression_ratio],
)

# Deletion targets laid over the source ([CLS] x [SEP] framing: one leading
# pad): output position i emits x_i or pad, and decoding skips the pads.
# Metrics still compare against the reference compression.
seqio.TaskRegistry.add(
    "sentcomp_aligned_bert",
    source=sources.PairedTextFileSource(
        SRC_TGT_SPLITS, base_dir=sources.shared_dir("sentcomp")),
    output_features=BERT_FEATURES,
    preprocessors=[*TEXT_PAIR_PREPROCESSORS,
                   functools.partial(prep.align_targets_to_source, leading_pads=1)],
    postprocess_fn=prep.postprocess_for(BERT),
    metric_fns=[metrics.rouge, metrics.compression_ratio],
)

# The distilled targets laid over the source, as sentcomp_aligned_bert does
# with the references (a deletion teacher such as the tagger aligns exactly).
seqio.TaskRegistry.add(
    "sentcomp_distilled_aligned_bert",
    source=sources.PairedTextFileSource(
        SRC_TGT_SPLITS, base_dir=sources.distilled_dir("sentcomp")),
    output_features=BERT_FEATURES,
    preprocessors=[*TEXT_PAIR_PREPROCESSORS,
                   functools.partial(prep.align_targets_to_source, leading_pads=1)],
    postprocess_fn=prep.postprocess_for(BERT),
    metric_fns=[metrics.rouge, metrics.compression_ratio],
)

# ------------------------------------------------------- translation de->en
seqio.TaskRegistry.add(
    "iwslt14_de_en_bert",
    source=sources.PairedTextFileSource(
        IWSLT14_DE_EN_SPLITS, base_dir=sources.shared_dir("iwslt14_de_en")),
    output_features=BERT_FEATURES,
    preprocessors=UNESCAPED_TEXT_PAIR_PREPROCESSORS,
    postprocess_fn=prep.postprocess_for(BERT),
    metric_fns=[metrics.bleu],
)

seqio.TaskRegistry.add(
    "iwslt14_de_en_t5",
    source=sources.PairedTextFileSource(
        IWSLT14_DE_EN_SPLITS, base_dir=sources.shared_dir("iwslt14_de_en")),
    output_features=T5_FEATURES,
    preprocessors=UNESCAPED_TEXT_PAIR_PREPROCESSORS,
    postprocess_fn=prep.postprocess_for(T5),
    metric_fns=[metrics.bleu],
)

# ---------------------------------------------------- headline generation
seqio.TaskRegistry.add(
    "gigaword_bert",
    source=sources.PairedTextFileSource(
        SRC_TGT_SPLITS, base_dir=sources.gigaword_dir),
    output_features=BERT_FEATURES,
    preprocessors=TEXT_PAIR_PREPROCESSORS,
    postprocess_fn=prep.postprocess_for(BERT),
    metric_fns=[metrics.rouge, metrics.compression_ratio],
)

seqio.TaskRegistry.add(
    "gigaword_tfds_bert",
    source=seqio.TfdsDataSource(
        tfds_name="gigaword:1.2.0",
        splits={"train": "train", "validation": "validation", "test": "test"},
        read_only=True),
    output_features=BERT_FEATURES,
    preprocessors=[
        functools.partial(seqio.preprocessors.rekey,
                          key_map={"inputs": "document", "targets": "summary"}),
        *TEXT_PAIR_PREPROCESSORS,
    ],
    postprocess_fn=prep.postprocess_for(BERT),
    metric_fns=[metrics.rouge, metrics.compression_ratio],
)
