"""Vocabularies for narlm: BERT WordPiece and T5 SentencePiece, as seqio vocabs.

`WordPieceVocabulary` is a real `seqio.Vocabulary`:

* Python side (`encode` / `decode`): the Hugging Face `tokenizers` library with
  a `WordPiece` model, `BertNormalizer` and `BertPreTokenizer` -- exactly the
  BERT tokenisation pipeline, *without* adding `[CLS]` / `[SEP]`.
* TF side (`encode_tf` / `decode_tf`): `tensorflow_text.BertTokenizer` over a
  static lookup table built from the same vocab file, so it runs inside
  `tf.data` graphs (seqio's `tokenize` preprocessor).

The two agree on ordinary text (tests check this); corner cases where the two
libraries differ slightly: words longer than 100 *characters* (HF) vs 100
*bytes* (tf.text) become `[UNK]`, and exotic control characters.

Decoding joins WordPiece continuations (`##x`) onto the previous piece and
separates everything else with one space ("hello , world ."); it drops
`[PAD]`, `[CLS]` and `[SEP]`. `seqio.Vocabulary.decode` already cuts at the
first eos (`[SEP]`), which is what the NAG decoder relies on.

Data files are found through `data_dir()`: the env var `NARLM_DATA_DIR`, else
`<repo root>/../shared/data`. The vocabulary objects are lazy (they read their
file on first use, like `seqio.SentencePieceVocabulary`), so importing
`narlm.tasks` never touches the disk; `get_vocabulary` checks that the file
exists and raises `FileNotFoundError` naming it.
"""

import difflib
import functools
import os
import threading
from typing import List, Optional, Sequence, Union

import seqio
import tensorflow as tf

DATA_DIR_ENV = "NARLM_DATA_DIR"

BERT_UNCASED_VOCAB = ("vocab", "bert-base-uncased-vocab.txt")
T5_SPM = ("vocab", "t5_spiece.model")


def data_dir() -> str:
  """Root of narlm's offline data (`$NARLM_DATA_DIR` or `<repo>/../shared/data`).

  Resolved at call time, so setting the env var after import works for
  anything resolved lazily (data sources). The directory need not exist:
  callers that open files raise `FileNotFoundError` naming the full path.
  """
  env = os.environ.get(DATA_DIR_ENV)
  if env:
    return os.path.abspath(os.path.expanduser(env))
  repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return os.path.abspath(os.path.join(repo_root, os.pardir, "shared", "data"))


def data_path(*parts: str) -> str:
  return os.path.join(data_dir(), *parts)


def _missing_file_error(path: str, what: str) -> FileNotFoundError:
  return FileNotFoundError(
      f"{what} file not found: {path!r} (data dir comes from ${DATA_DIR_ENV}, "
      f"currently {data_dir()!r})")


class WordPieceVocabulary(seqio.Vocabulary):
  """BERT WordPiece vocabulary (one token per line, id = line number).

  Special ids are read from the file: `pad_id` = `[PAD]` (must be 0, seqio's
  convention), `eos_id` = `[SEP]`, `unk_id` = `[UNK]`, `bos_id` = `[CLS]`,
  `mask_id` = `[MASK]` (None if absent).

  Args:
    vocab_file: path of `vocab.txt`.
    lowercase: BERT-uncased normalisation (lowercase + strip accents).
  """

  def __init__(self, vocab_file: Union[str, os.PathLike], lowercase: bool = True):
    super().__init__(extra_ids=0)
    self._vocab_file = os.fspath(vocab_file)
    self._lowercase = bool(lowercase)
    self._lock = threading.RLock()
    self._tokens: Optional[List[str]] = None
    self._token_to_id = None
    self._hf_tokenizer = None
    self._tf_tokenizer = None
    self._tf_tokens = None

  # --------------------------------------------------------------- loading
  @property
  def vocab_file(self) -> str:
    return self._vocab_file

  @property
  def lowercase(self) -> bool:
    return self._lowercase

  @tf.autograph.experimental.do_not_convert
  def _load(self):
    if self._tokens is not None:
      return
    with self._lock:
      if self._tokens is not None:
        return
      from tokenizers import models  # pylint: disable=g-import-not-at-top
      if not os.path.isfile(self._vocab_file):
        raise _missing_file_error(self._vocab_file, "WordPiece vocabulary")
      token_to_id = dict(models.WordPiece.read_file(self._vocab_file))
      tokens = [None] * len(token_to_id)
      for tok, i in token_to_id.items():
        if not 0 <= i < len(tokens) or tokens[i] is not None:
          raise ValueError(
              f"{self._vocab_file}: ids are not 0..{len(tokens) - 1} "
              f"(duplicate token lines?)")
        tokens[i] = tok
      for special in ("[PAD]", "[UNK]", "[SEP]"):
        if special not in token_to_id:
          raise ValueError(f"{self._vocab_file}: no {special} token")
      if token_to_id["[PAD]"] != seqio.vocabularies.PAD_ID:
        raise ValueError(
            f"{self._vocab_file}: [PAD] has id {token_to_id['[PAD]']}, "
            f"seqio needs it at {seqio.vocabularies.PAD_ID}")
      self._token_to_id = token_to_id
      self._tokens = tokens

  @tf.autograph.experimental.do_not_convert
  def _hf(self):
    if self._hf_tokenizer is None:
      self._load()
      with self._lock:
        if self._hf_tokenizer is None:
          from tokenizers import Tokenizer, models, normalizers, pre_tokenizers  # pylint: disable=g-import-not-at-top,g-multiple-import
          tok = Tokenizer(
              models.WordPiece(
                  dict(self._token_to_id), unk_token="[UNK]",
                  max_input_chars_per_word=100))
          tok.normalizer = normalizers.BertNormalizer(
              clean_text=True, handle_chinese_chars=True, strip_accents=None,
              lowercase=self._lowercase)
          tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
          self._hf_tokenizer = tok
    return self._hf_tokenizer

  @tf.autograph.experimental.do_not_convert
  def _tf(self):
    """(BertTokenizer, id->token string tensor); built once, eagerly."""
    if self._tf_tokenizer is None:
      self._load()
      with self._lock, tf.init_scope():
        if self._tf_tokenizer is None:
          import tensorflow_text as tf_text  # pylint: disable=g-import-not-at-top
          table = tf.lookup.StaticVocabularyTable(
              tf.lookup.KeyValueTensorInitializer(
                  keys=tf.constant(self._tokens, tf.string),
                  values=tf.range(len(self._tokens), dtype=tf.int64)),
              num_oov_buckets=1)
          self._tf_tokens = tf.constant(self._tokens, tf.string)
          self._tf_tokenizer = tf_text.BertTokenizer(
              table, token_out_type=tf.int64, unknown_token="[UNK]",
              lower_case=False, max_bytes_per_word=100)
    return self._tf_tokenizer, self._tf_tokens

  # ------------------------------------------------------------ special ids
  def token_to_id(self, token: str) -> Optional[int]:
    self._load()
    return self._token_to_id.get(token)

  def id_to_token(self, i: int) -> str:
    self._load()
    return self._tokens[i] if 0 <= i < len(self._tokens) else "[UNK]"

  @property
  def pad_id(self) -> int:
    return seqio.vocabularies.PAD_ID  # checked in _load

  @property
  def eos_id(self) -> int:
    return self.token_to_id("[SEP]")

  @property
  def unk_id(self) -> int:
    return self.token_to_id("[UNK]")

  @property
  def bos_id(self) -> Optional[int]:
    return self.token_to_id("[CLS]")

  @property
  def cls_id(self) -> int:
    """`[CLS]`: the first position of a framed source (`[CLS] x [SEP]`)."""
    return self.token_to_id("[CLS]")

  @property
  def mask_id(self) -> Optional[int]:
    return self.token_to_id("[MASK]")

  @property
  def _base_vocab_size(self) -> int:
    self._load()
    return len(self._tokens)

  @functools.cached_property
  def special_ids(self) -> List[int]:
    """Ids of bracketed tokens (`[PAD]`, `[unused0]`, `[CLS]`, ...)."""
    self._load()
    return [i for i, t in enumerate(self._tokens)
            if len(t) > 2 and t.startswith("[") and t.endswith("]")]

  @functools.cached_property
  def regular_ids(self) -> List[int]:
    """Ids of all non-special tokens (for random-token corruption)."""
    special = set(self.special_ids)
    return [i for i in range(self._base_vocab_size) if i not in special]

  @property
  def _dropped_on_decode(self):
    return {i for i in (self.pad_id, self.bos_id, self.eos_id) if i is not None}

  # ---------------------------------------------------------------- python
  def _encode(self, s: str) -> Sequence[int]:
    if isinstance(s, bytes):
      s = s.decode("utf-8")
    return self._hf().encode(s, add_special_tokens=False).ids

  def _decode(self, ids: Sequence[int]) -> str:
    drop = self._dropped_on_decode
    pieces = [self.id_to_token(int(i)) for i in ids if int(i) not in drop]
    text = " ".join(pieces).replace(" ##", "")
    return text[2:] if text.startswith("##") else text

  # -------------------------------------------------------------------- tf
  @tf.autograph.experimental.do_not_convert
  def _encode_tf(self, s: tf.Tensor) -> Union[tf.Tensor, tf.RaggedTensor]:
    """Scalar string -> int32 [n]; rank-k strings -> ragged int32 [..., None]."""
    tokenizer, _ = self._tf()
    s = self._clean_text_tf(tf.convert_to_tensor(s, tf.string))
    if self._lowercase:
      s = self._normalize_uncased_tf(s)
    if s.shape.rank == 0:
      pieces = tokenizer.tokenize(tf.reshape(s, [1]))  # [1, words, pieces]
      return tf.cast(pieces.flat_values, tf.int32)
    pieces = tokenizer.tokenize(s).merge_dims(-2, -1)
    return tf.cast(pieces, tf.int32)

  @staticmethod
  def _clean_text_tf(s: tf.Tensor) -> tf.Tensor:
    """HF BertNormalizer(clean_text=True): drop control/format chars and
    U+FFFD, map every other Unicode whitespace to a plain space."""
    s = tf.strings.regex_replace(s, r"[\t\n\r]", " ")
    s = tf.strings.regex_replace(s, r"[\p{Cc}\p{Cf}\p{Co}\x{FFFD}]", "")
    return tf.strings.regex_replace(s, r"\p{Z}", " ")

  @staticmethod
  def _normalize_uncased_tf(s: tf.Tensor) -> tf.Tensor:
    """HF BertNormalizer order: NFD, drop combining marks, then lowercase.

    (tf.text's own `lower_case=True` uses ICU case *folding*, which maps
    "ß" to "ss" where BERT/HF keep "ß"; hence this explicit version.)
    """
    import tensorflow_text as tf_text  # pylint: disable=g-import-not-at-top
    s = tf_text.normalize_utf8(s, "NFD")
    s = tf.strings.regex_replace(s, r"\p{Mn}", "")
    return tf.strings.lower(s, encoding="utf-8")

  @tf.autograph.experimental.do_not_convert
  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """int [..., n] -> string [...] (dense or ragged ids)."""
    _, tokens = self._tf()
    ids = tf.cast(ids, tf.int32)
    if ids.shape.rank == 0:
      raise ValueError("decode_tf needs ids of rank >= 1")
    keep = tf.ones_like(ids, tf.bool)
    for i in self._dropped_on_decode:
      keep = tf.logical_and(keep, tf.not_equal(ids, i))
    ids = tf.ragged.boolean_mask(ids, keep)
    safe = tf.where(
        tf.logical_and(ids >= 0, ids < self._base_vocab_size), ids, self.unk_id)
    if isinstance(safe, tf.RaggedTensor):
      pieces = tf.ragged.map_flat_values(tf.gather, tokens, safe)
    else:
      pieces = tf.gather(tokens, safe)
    text = tf.strings.reduce_join(pieces, axis=-1, separator=" ")
    text = tf.strings.regex_replace(text, " ##", "")
    return tf.strings.regex_replace(text, "^##", "")

  # ------------------------------------------------------------ identity
  def __eq__(self, other):
    return (isinstance(other, WordPieceVocabulary)
            and os.path.abspath(self._vocab_file) == os.path.abspath(other._vocab_file)  # pylint: disable=protected-access
            and self._lowercase == other._lowercase)  # pylint: disable=protected-access

  def __hash__(self):
    return hash((WordPieceVocabulary, os.path.abspath(self._vocab_file),
                 self._lowercase))

  def __str__(self):
    return (f"WordPieceVocabulary(file={self._vocab_file!r}, "
            f"lowercase={self._lowercase})")

  __repr__ = __str__

  def __getstate__(self):
    # Tokenizers and TF objects are rebuilt lazily after unpickling/copying.
    return {"vocab_file": self._vocab_file, "lowercase": self._lowercase}

  def __setstate__(self, state):
    self.__init__(state["vocab_file"], state["lowercase"])


# ---------------------------------------------------------------- factories
@functools.lru_cache(maxsize=None)
def _cached_wordpiece(path: str, lowercase: bool) -> WordPieceVocabulary:
  return WordPieceVocabulary(path, lowercase=lowercase)


@functools.lru_cache(maxsize=None)
def _cached_sentencepiece(path: str, extra_ids: int) -> seqio.SentencePieceVocabulary:
  return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)


def wordpiece_vocabulary(path: Union[str, os.PathLike],
                         lowercase: bool = True) -> WordPieceVocabulary:
  """Cached `WordPieceVocabulary`; raises FileNotFoundError if `path` is missing."""
  path = os.path.abspath(os.fspath(path))
  if not os.path.isfile(path):
    raise _missing_file_error(path, "WordPiece vocabulary")
  return _cached_wordpiece(path, bool(lowercase))


def sentencepiece_vocabulary(path: Union[str, os.PathLike],
                             extra_ids: int = 0) -> seqio.SentencePieceVocabulary:
  """Cached `seqio.SentencePieceVocabulary`; FileNotFoundError if missing."""
  path = os.path.abspath(os.fspath(path))
  if not os.path.isfile(path):
    raise _missing_file_error(path, "SentencePiece model")
  return _cached_sentencepiece(path, int(extra_ids))


def bert_vocabulary() -> WordPieceVocabulary:
  """bert-base-uncased WordPiece (30,522) from the data dir; lazy, cached.

  Does not check the file (so task registration works without data); the
  first encode/decode raises FileNotFoundError naming it if it is missing.
  """
  return _cached_wordpiece(os.path.abspath(data_path(*BERT_UNCASED_VOCAB)), True)


def t5_vocabulary(extra_ids: int = 0) -> seqio.SentencePieceVocabulary:
  """T5's SentencePiece model (32,000 pieces, eos `</s>`=1); lazy, cached."""
  return _cached_sentencepiece(os.path.abspath(data_path(*T5_SPM)), int(extra_ids))


VOCABULARY_NAMES = {
    "bert_uncased": bert_vocabulary,
    "t5": t5_vocabulary,
}


def get_vocabulary(name_or_path: Union[str, os.PathLike]) -> seqio.Vocabulary:
  """Resolves 'bert_uncased', 't5', or a `.txt` (WordPiece) / `.model` path.

  Raises:
    ValueError: unknown name / unsupported file type.
    FileNotFoundError: the file (named in the message) does not exist.
  """
  name = os.fspath(name_or_path)
  if name in VOCABULARY_NAMES:
    vocab = VOCABULARY_NAMES[name]()
    path = vocab.vocab_file if isinstance(vocab, WordPieceVocabulary) else vocab.sentencepiece_model_file
    if not os.path.isfile(path):
      raise _missing_file_error(path, f"vocabulary {name!r}")
    return vocab
  if name.endswith(".txt"):
    return wordpiece_vocabulary(name)
  if name.endswith(".model"):
    return sentencepiece_vocabulary(name)
  close = difflib.get_close_matches(name, list(VOCABULARY_NAMES), n=3)
  hint = f" Did you mean {close}?" if close else ""
  raise ValueError(
      f"Unknown vocabulary {name!r}: use one of {sorted(VOCABULARY_NAMES)} or "
      f"a path ending in .txt (WordPiece) or .model (SentencePiece).{hint}")
