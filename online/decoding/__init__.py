"""Preparatory coding directions (CD) and decoding of the upcoming lick, per block (each visit to a task
context: 1, 2, 1', ...; protocols/blocks.py).

What is computed (task-and-analysis.md, "Coding direction (CD) and decoding"; Kim, Daie & Li 2025 and
their published analysis code, STEP3_*_CD.m and KD_LDA2.m), on correct trials only:

- classic CD (`method="classic"`): mean(right) - mean(left) of the window-mean activity, unit length;
- the paper's LDA CD (`method="lda"`): per time bin of the window, a Fisher LDA axis signed so right
  projects above left; those unit axes averaged over the window's bins; then Gram-Schmidt of
  [w, v1, v2, ...], v_i the right singular vectors (neuron space) of the trial-averaged activity in the
  window (left and right averages stacked, as in the paper's code); CD = the first unit vector.
  Gram-Schmidt leaves its first vector's direction alone, so the CD is w / |w|; the singular vectors only
  shape the rest of the basis (`LdaResult.basis`, for variance-explained plots). That is the paper's code
  read literally.
  The per-bin axis: the spec says "top eigenvector of pinv(W) B"; the published code takes the first RIGHT
  singular vector of pinv(W) B (`[u,s,v] = svd(pinv(W)*B); v(:,1)`). B has rank one for two classes, so
  that vector is the bin's unit mean difference d / |d|, while the eigenvector is pinv(W) d. Both are here:
  `method="lda"` is the code's (reproduces the paper's numbers), `method="lda_eigenvector"` the
  textbook one. With fewer trials than about the number of neurons, pinv(W) d is mostly noise (on the
  simulated rig, ~100 trials x 100 neurons: cosine ~0.3 with the true CD, against ~0.99 for the others);
- windows: sample = 0-1 s from sample onset (last SamplePeriod entry), delay = the last `delay_window_s`
  before the go cue, response = 0.16-1.5 s after the go cue; bins of one frame period by default;
- decision boundary DB = (muR/varR + muL/varL) / (1/varR + 1/varL) over the TRAINING trials' projections
  (window-mean activity on the CD; the paper's code does the same), accuracy = the balanced fraction of
  held-out trials on their side of DB (mean of the right and the left trials' fractions; the paper's code
  pools them, which an unbalanced test set inflates), over repeated seeded 50/50 splits per side;
- similarity of two blocks (`block_similarity`): dot products of CDs trained on disjoint halves of equal
  trial counts in each block, with each block's split-half ceiling at those counts (the paper's code dots
  CDs trained on halves too, so its within-session ceiling is comparable); `StoredHalves` keep two such
  half-CDs with a stored CD for later sessions;
- the neuron filter (`reliability`): split-half correlation of each neuron's concatenated PSTH, kept at
  r >= online.decoder.reliability_min_r (the paper: 0.5).

Checked against the paper's code: the per-bin axis is KD_LDA2's `v(:,1)` of `svd(pinv(W)*B)`, signed so
right projects above left; the bins' axes are averaged over the window (STEP3_Delay_CD.m: the last 4 bins
at 6 Hz before the go cue, 0.67 s; here `delay_window_s`, 0.6 s by default); Gram-Schmidt of [w, V] keeps
w's direction, so the CD is w / |w|; the boundary uses sample variances (MATLAB's std) of the training
projections. The paper's code takes the SVD of the first repeat's activity for every repeat; that only
changes the rest of the basis, not the CD.

Online, `ContextDecoder` (one per block) computes the CD of settings `online.decoder.cd_method` (the
paper's `lda` by default; every method stays available by name) and takes correct trials one by one
(running sums plus per-trial window means, so an update is O(bins x neurons)) and decodes once both sides
have `min_trials_per_side` trials (50 by default, as the paper requires); before that it raises
`DecoderNotReady` instead of guessing. It keeps the most recent `trials_kept_per_side` correct trials per
side (online.decoder.trials_kept_per_side), so memory stays bounded over any session length.
`RunningProjection` is the closed-loop path: one dot product per frame. CDs travel as plain JSON-able data
(`CodingDirection.to_dict`) and `CodingDirectionStore` keeps them per (session, block) for a subject, so
a live CD can be compared with stored ones (over the same ROI set).
"""

from online.decoding.batch import (
    BlockSimilarity,
    EpochData,
    accuracy,
    balanced_accuracy,
    block_similarity,
    decoding_accuracy,
    fit_vector,
    half_cds,
    similarity_to_halves,
    split_half_similarity,
    split_halves,
    train,
)
from online.decoding.boundary import Boundary, Decode, decision_boundary
from online.decoding.context_decoder import (
    ContextDecoder,
    DecoderConfig,
    EpochFeature,
    cross_decoding_matrix,
    trial_features,
)
from online.decoding.directions import (
    EPOCHS,
    LDA_AXES,
    METHODS,
    CodingDirection,
    DecoderNotReady,
    LdaResult,
    Method,
    Side,
    cd_similarity,
    classic_cd,
    fisher_lda_direction,
    gram_schmidt,
    lda_cd,
    lda_vector,
    unit,
)
from online.decoding.projection import RunningProjection
from online.decoding.reliability import reliable_neurons, split_half_reliability
from online.decoding.store import CodingDirectionStore, Similarity, StoredHalves

__all__ = [
    "EPOCHS", "LDA_AXES", "METHODS", "BlockSimilarity", "Boundary", "CodingDirection", "CodingDirectionStore",
    "ContextDecoder", "Decode", "DecoderConfig", "DecoderNotReady", "EpochData", "EpochFeature", "LdaResult",
    "Method", "RunningProjection", "Side", "Similarity", "StoredHalves", "accuracy", "balanced_accuracy",
    "block_similarity", "cd_similarity", "classic_cd", "cross_decoding_matrix", "decision_boundary",
    "decoding_accuracy", "fisher_lda_direction", "fit_vector", "gram_schmidt", "half_cds", "lda_cd",
    "lda_vector", "reliable_neurons", "similarity_to_halves", "split_half_reliability",
    "split_half_similarity", "split_halves", "train", "trial_features", "unit",
]
