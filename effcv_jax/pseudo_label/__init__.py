"""Noisy Student pseudo-labelling: sharded teacher inference over an unlabelled pool,
selection of the examples to train on, and the pseudo-labelled dataset.

Three steps, each usable alone:

  manifest = label_pool(variables, task, pool, out_dir, mesh=mesh, batch_size=1024,
                        shard_size=50_000)                    # teacher pass, resumable
  indices, probs, confidence = load_pseudo_labels(out_dir)    # merged, sorted by index
  chosen, labels = select(indices, probs, confidence, threshold=0.3, per_class=K)
  student_source = PseudoLabelledSource(pool, chosen, labels) # for data.train_iterator

Modules: `labelling` (the pass), `store` (the shard files, manifests, fingerprints,
reading and re-tempering), `selection` (pure NumPy selection and the pseudo-labelled
source), `quality` (temperature scaling of the teacher fitted on its validation predictions,
the threshold reaching a target precision, precision and recall of a selection); this package
re-exports their public names.

The pass. The pool is cut into shards, contiguous index ranges of `shard_size`
examples. Each shard is read in padded batches (`data.eval_batches` over a
`Subset`, the last batch masked) and labelled by one jitted function with the
batch sharded over the ('data',) mesh and the teacher replicated: the jit
successor of a pmap, same data-parallel semantics. The teacher sees the clean
image (uint8 -> float, normalised by `task_lib.predict_logits` with the teacher's
own mean/std), optionally averaged over test-time-augmentation views
(`augment.tta.predict_probs`). Memory does not grow with the pool: batches are
read one shard at a time (a background thread prefetches the next batches while
the device computes) and each shard's labels are written, from a background
thread, as soon as the shard is done.

Under multi-host, process p of n labels `[p::n]` of every shard's index range
and writes its own part file; nothing is gathered across hosts (only which
shards are finished, a few bytes, so all processes skip the same shards); the
pass ends with a barrier, so every part is on disk when it returns. The reader
merges the parts. Simulate it on one host by passing `process_index` and
`process_count` explicitly.

On-disk layout of `out_dir` (written by process p of n):
  shard_{s:05d}.p{p}of{n}.npz   one part of shard s, arrays:
      indices     int64 (m,)      pool indices, increasing
      confidence  float32 (m,)    max probability at the pass temperature
      log_probs   float16 (m, K)  log-probabilities at the pass temperature   [store='soft']
      topk_classes int32 (m, k), topk_log_probs float16 (m, k)  the k largest [store='topk']
      spec        str             JSON of the pass spec (below)
  manifest.p{p}of{n}.json       written last: spec, and the list of p's parts
Every file is written to `<name>.tmp` in the same directory and renamed with
`os.replace`, so a file that exists is complete. A rerun with the same spec skips
the shards whose parts exist; a rerun whose spec differs (another teacher, pool,
temperature, storage or process count) refuses to mix its shards with the old.

Temperature. The pass stores log-probabilities of softmax(logits / T) for the
pass temperature T (float16, clipped at -65504 so it stays finite), not
probabilities: since log p_T = logits / T - c, a label at any other temperature
T' follows exactly as softmax(log p_T * T / T'), even for classes whose
probability underflows float16. `load_pseudo_labels(out_dir, temperature=T')`
does this; the softmax also renormalises the float16 rounding to sum 1. With TTA
the stored distribution is the mean over views of softmax(logits_v / T), and
re-tempering sharpens or softens that mean. With store='topk' the classes
outside the top k get probability 0 and the top k are renormalised.
"""

from effcv_jax.pseudo_label.labelling import jit_label_fn, label_pool, make_label_fn
from effcv_jax.pseudo_label.quality import (CALIBRATION_KINDS, QUALITY_BINS, fit_calibration,
                                            precision_threshold, selection_quality)
from effcv_jax.pseudo_label.selection import (BALANCE_KINDS, PseudoLabelledSource,
                                              balance_per_class, balance_stochastic,
                                              rank_by_confidence, select)
from effcv_jax.pseudo_label.store import (FORMAT_VERSION, STORE_KINDS, describe_shards,
                                          load_pseudo_labels, load_teacher_logits,
                                          manifest_path, pool_fingerprint,
                                          read_manifests, retemper, shard_path, shard_ranges,
                                          softmax, teacher_fingerprint)
