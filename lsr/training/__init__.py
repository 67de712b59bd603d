"""``lsr train``: fine-tune a masked-LM checkpoint as a SPLADE model on (query, positive document) pairs.

Training data is a BEIR dataset's ``qrels/<split>.tsv`` (default ``train``) or a file of pairs (``--pairs``: JSONL
or TSV, with texts or with ids resolved against the dataset). Every problem in the input is reported with file
and line (:class:`lsr.corpus.CorpusError`).

The loss, per batch of B (query, positive) pairs with n mined hard negatives each:

* contrastive cross-entropy of each query against all B·(1+n) documents of the batch (in-batch negatives plus hard
  negatives); documents judged relevant to a query other than its own target are masked out;
* FLOPS regularisation (Paria et al. 2020, as in SPLADE v2): ``sum_j (mean_i w_ij)^2`` over the vocabulary, on the
  queries (``lambda_q``) and on the documents (``lambda_d``), with the SPLADE v2 quadratic warm-up of both lambdas
  (``lambda_t = lambda * min(1, t / T)^2``, T a third of the steps by default);
* with ``query_encoder="inference-free"`` (the document-only variant) queries are not encoded by the model but are
  the index-time IDF of their tokens, so the ranking gradient of a document term is IDF-weighted (Geng et al.
  2024's IDF-aware matching); ``doc_reg="l0"`` replaces FLOPS on documents by an ℓ0 relaxation
  ``mean_i sum_j (1 - exp(-w_ij / eps))`` (a smooth count of non-zero terms), ``doc_reg="idf-flops"`` weights the
  FLOPS term of each vocabulary entry by ``1 / (1 + idf_j)`` so frequent, uninformative terms cost more;
* optional distillation from a teacher's scores (``--teacher FILE`` of query, document, score): Margin-MSE on
  (positive, negative) score margins, or KL between the teacher's and the student's softmax over them.

Hard negatives are mined once, before training, from an index of the corpus: BM25 (bm25s) or the starting
model's own sparse retrieval (the ``lsr eval`` cache index of the dataset, built when missing).

SPLADE's max pooling is trained without materialising gradients for the [tokens × vocabulary] logits: the logits
are computed without autograd to find, for each vocabulary entry, the token holding the maximum, then only the
positive maxima are recomputed with autograd from that token's hidden state (``relu`` zeroes the gradient of the
others). The gradient is exactly that of ``max`` (up to ties), at a fraction of the memory and time.

Checkpoints (model, optimizer, LR schedule, RNG state, position in the data order) are written atomically every
``checkpoint_every`` steps and at the end of each epoch; data order and negative sampling are pure functions of
(seed, epoch, position), so a run resumed from a checkpoint ends with the same weights as an uninterrupted run.
The result is a standard Hugging Face checkpoint directory (``save_pretrained`` model and tokenizer) that
``lsr index --model DIR`` takes; the run's files (report, mined negatives, checkpoints) sit in ``DIR/lsr_train/``.

Modules: ``config`` (settings, file names), ``data`` (pairs, queries, documents, teacher scores), ``model`` (SPLADE
pooling for training), ``negatives`` (hard-negative mining, the IDF table), ``loss`` (one batch's loss),
``checkpoints``, ``loop`` (the training loop, :func:`train`) and ``before_after`` (``lsr eval`` of both models).
"""

from lsr.training.before_after import evaluate_before_after
from lsr.training.config import REPORT, RUN_DIR, TrainConfig, TrainError
from lsr.training.data import TrainingData, load_training_data
from lsr.training.loop import TrainResult, train
from lsr.training.model import SpladeModel

__all__ = ["REPORT", "RUN_DIR", "SpladeModel", "TrainConfig", "TrainError", "TrainResult", "TrainingData",
           "evaluate_before_after", "load_training_data", "train"]
