"""Preparatory coding directions (CD) and decoding of the upcoming lick, per task context.

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
  (window-mean activity on the CD; the paper's code does the same), accuracy = fraction of held-out trials
  on their side of DB, over repeated seeded 50/50 splits per side.

Online, `ContextDecoder` computes the CD of settings `online.decoder.cd_method` (`classic` by default;
every method stays available by name) and takes correct trials one by one (running sums plus per-trial
window means, so an update is O(bins x neurons)) and decodes once both sides have `min_trials_per_side`
trials; before that it raises `DecoderNotReady` instead of guessing. It keeps the most recent
`trials_kept_per_side` correct trials per side (online.decoder.trials_kept_per_side), so memory stays
bounded over any session length.
`RunningProjection` is the closed-loop path: one dot product per frame. CDs travel as plain JSON-able data
(`CodingDirection.to_dict`) and `CodingDirectionStore` keeps them per (session, context) for a subject, so
a live CD can be compared with stored ones (dot product of unit vectors over the same ROI set).
"""

from online.decoding.batch import (
    EpochData,
    accuracy,
    decoding_accuracy,
    fit_vector,
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
    unit,
)
from online.decoding.projection import RunningProjection
from online.decoding.store import CodingDirectionStore, Similarity

__all__ = [
    "EPOCHS", "LDA_AXES", "METHODS", "Boundary", "CodingDirection", "CodingDirectionStore", "ContextDecoder",
    "Decode", "DecoderConfig", "DecoderNotReady", "EpochData", "EpochFeature", "LdaResult", "Method",
    "RunningProjection", "Side", "Similarity", "accuracy", "cd_similarity", "classic_cd",
    "cross_decoding_matrix", "decision_boundary", "decoding_accuracy", "fisher_lda_direction", "fit_vector",
    "gram_schmidt", "lda_cd", "split_half_similarity", "split_halves", "train", "trial_features", "unit",
]
