"""MedMNIST-C's summary metrics and its published AlexNet baseline, ported from medmnistc 0.1.0.

- ``balanced_error``: ``medmnistc/eval.py`` ``Evaluator.get_eval_metric``: one minus scikit-learn's
  ``balanced_accuracy_score`` (the mean recall over the classes present in ``y_true``), with the
  prediction rule of the MedMNIST task: multi-class and ordinal-regression take the arg-max of the
  scores, binary-class thresholds the last column (``y_score[:, -1] > threshold``), multi-label
  thresholds each label and averages the per-label balanced accuracies.
- ``be`` and ``rbe``: ``Evaluator.populate_summary``, per corruption over its five severities:
  ``BE = mean(errors) / E_alexnet`` and ``rBE = (mean(errors) - E_clean) / (E_alexnet - E_alexnet_clean)``,
  where ``E_alexnet`` is AlexNet's balanced error under that corruption already averaged over the
  severities and ``E_alexnet_clean`` its clean balanced error (``medmnistc/utils/baselines.py``
  ``BASELINES``: AlexNet trained on the 224-px images, Di Salvo et al. 2024). ``summary`` adds the
  dataset-level means, ``metrics.be`` and ``metrics.rbe``, as ``dump_summary`` writes them.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import numpy as np

from ..errors import UserError, did_you_mean

SOURCE = "medmnistc==0.1.0 medmnistc/utils/baselines.py BASELINES"

# dataset: (AlexNet clean balanced error, {corruption: AlexNet balanced error averaged over severities 1-5})
ALEXNET: dict[str, tuple[float, dict[str, float]]] = {
    "bloodmnist": (0.018369282094266692, {
        "pixelate": 0.05975618949678589,
        "jpeg_compression": 0.13976187053705183,
        "defocus_blur": 0.22399795597780647,
        "motion_blur": 0.1845192137218041,
        "brightness_up": 0.06946294328845175,
        "brightness_down": 0.0790077546902872,
        "contrast_up": 0.05215362284240639,
        "contrast_down": 0.07966068499560328,
        "saturate": 0.03478558170020538,
        "stain_deposit": 0.18536119379858546,
        "bubble": 0.12898833684644578,
    }),
    "breastmnist": (0.14536340852130336, {
        "pixelate": 0.46127819548872184,
        "jpeg_compression": 0.2986215538847118,
        "speckle_noise": 0.38709273182957393,
        "motion_blur": 0.25902255639097743,
        "brightness_up": 0.3197994987468672,
        "brightness_down": 0.21127819548872181,
        "contrast_down": 0.15864661654135334,
    }),
    "chestmnist": (0.2839064387513035, {
        "pixelate": 0.44895070087295996,
        "jpeg_compression": 0.34575690815860566,
        "gaussian_noise": 0.47688317292098203,
        "speckle_noise": 0.45687894795025785,
        "impulse_noise": 0.48553631547337917,
        "shot_noise": 0.4926966815396587,
        "gaussian_blur": 0.3176801263607164,
        "brightness_up": 0.2993721457134663,
        "brightness_down": 0.29711530406534037,
        "contrast_up": 0.28751004051276824,
        "contrast_down": 0.2954742427570406,
        "gamma_corr_up": 0.287462117104012,
        "gamma_corr_down": 0.2891642074561852,
    }),
    "dermamnist": (0.3985775597242611, {
        "pixelate": 0.5105118313063095,
        "jpeg_compression": 0.47716296678659287,
        "gaussian_noise": 0.770161396521756,
        "speckle_noise": 0.7688784860204994,
        "impulse_noise": 0.7995552265467947,
        "shot_noise": 0.8391552104792783,
        "defocus_blur": 0.7008318467374395,
        "motion_blur": 0.6266414682428412,
        "zoom_blur": 0.5277668583085878,
        "brightness_up": 0.4473990148869178,
        "brightness_down": 0.5772968080812169,
        "contrast_up": 0.430415384126964,
        "contrast_down": 0.5398210493891896,
        "black_corner": 0.7591457853547467,
        "characters": 0.4461917314736283,
    }),
    "octmnist": (0.20199999999999996, {
        "pixelate": 0.3124,
        "jpeg_compression": 0.29640000000000005,
        "speckle_noise": 0.386,
        "defocus_blur": 0.3084,
        "motion_blur": 0.4892,
        "contrast_down": 0.4196,
    }),
    "organamnist": (0.050053710403475504, {
        "pixelate": 0.07589728744538755,
        "jpeg_compression": 0.10233182799848468,
        "gaussian_noise": 0.558867512509986,
        "speckle_noise": 0.5008977196696448,
        "impulse_noise": 0.6005122792556206,
        "shot_noise": 0.5704549211261293,
        "gaussian_blur": 0.23340661727240267,
        "brightness_up": 0.14763547790322412,
        "brightness_down": 0.2646445055204496,
        "contrast_up": 0.10977873034814234,
        "contrast_down": 0.1268424696095805,
        "gamma_corr_up": 0.10360009998047674,
        "gamma_corr_down": 0.10577092296366888,
    }),
    "organcmnist": (0.07596783210891289, {
        "pixelate": 0.12161270665759313,
        "jpeg_compression": 0.10754481922990186,
        "gaussian_noise": 0.5736544084235357,
        "speckle_noise": 0.5130960298987614,
        "impulse_noise": 0.5997780092763433,
        "shot_noise": 0.5492477253691926,
        "gaussian_blur": 0.316895537101905,
        "brightness_up": 0.16011849294420644,
        "brightness_down": 0.2324271692594097,
        "contrast_up": 0.09991836613387597,
        "contrast_down": 0.15327395964015147,
        "gamma_corr_up": 0.1426418229218433,
        "gamma_corr_down": 0.12390902424472901,
    }),
    "organsmnist": (0.24300485476777922, {
        "pixelate": 0.31259415418134306,
        "jpeg_compression": 0.26996994867350865,
        "gaussian_noise": 0.5889124203738291,
        "speckle_noise": 0.5450100158501043,
        "impulse_noise": 0.6010108858901404,
        "shot_noise": 0.5519125643755777,
        "gaussian_blur": 0.4466645657200248,
        "brightness_up": 0.3598501969979232,
        "brightness_down": 0.3592866403894267,
        "contrast_up": 0.2871702451645464,
        "contrast_down": 0.3128243336438499,
        "gamma_corr_up": 0.30253196514691594,
        "gamma_corr_down": 0.3116016263827458,
    }),
    "pathmnist": (0.08839299601334816, {
        "pixelate": 0.20934201922262957,
        "jpeg_compression": 0.24709267033930377,
        "defocus_blur": 0.4621259742146214,
        "motion_blur": 0.3689076534699618,
        "brightness_up": 0.41551581022730166,
        "brightness_down": 0.2811688318161528,
        "contrast_up": 0.2338925659881773,
        "contrast_down": 0.13718687818913905,
        "saturate": 0.3341143518079194,
        "stain_deposit": 0.24930831751137275,
        "bubble": 0.10818301335634566,
    }),
    "pneumoniamnist": (0.10085470085470083, {
        "pixelate": 0.22102564102564104,
        "jpeg_compression": 0.2798290598290598,
        "gaussian_noise": 0.4414529914529915,
        "speckle_noise": 0.3457264957264957,
        "impulse_noise": 0.4581196581196581,
        "shot_noise": 0.4106837606837607,
        "gaussian_blur": 0.2730769230769231,
        "brightness_up": 0.14649572649572645,
        "brightness_down": 0.2782051282051282,
        "contrast_up": 0.09529914529914527,
        "contrast_down": 0.23743589743589744,
        "gamma_corr_up": 0.09606837606837607,
        "gamma_corr_down": 0.16641025641025642,
    }),
    "retinamnist": (0.5582064849927977, {
        "pixelate": 0.6017003263074344,
        "jpeg_compression": 0.6795223564688244,
        "gaussian_noise": 0.7040832524914012,
        "speckle_noise": 0.6135258841167651,
        "defocus_blur": 0.6882905018079196,
        "motion_blur": 0.7075760943057883,
        "brightness_down": 0.5844791133844842,
        "contrast_down": 0.6092882382338243,
    }),
    "tissuemnist": (0.3917787199385978, {
        "pixelate": 0.49272908707597907,
        "jpeg_compression": 0.508070087070269,
        "impulse_noise": 0.7970869222746931,
        "gaussian_blur": 0.4805143361974326,
        "brightness_up": 0.4618274173802247,
        "brightness_down": 0.51981943234386,
        "contrast_up": 0.5026233641102424,
        "contrast_down": 0.5369342652194591,
    }),
}

TASKS = ("multi-label, binary-class", "binary-class", "multi-class", "ordinal-regression")


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """scikit-learn ``balanced_accuracy_score(y_true, y_pred)`` (adjusted=False, no weights): the mean
    recall over the classes that occur in ``y_true`` (a class only predicted is left out)."""
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    recalls = [float(np.mean(y_pred[y_true == c] == c)) for c in np.unique(y_true)]
    return float(np.mean(recalls))


def balanced_error(y_true: np.ndarray, y_score: np.ndarray, task: str,
                   threshold: Union[float, Sequence[float], None] = 0.5) -> float:
    """One minus the balanced accuracy with the task's prediction rule (eval.py ``get_eval_metric``).
    ``y_true``: labels (N,) or (N, 1), or (N, L) for multi-label; ``y_score``: scores (N, C)."""
    y_true, y_score = np.asarray(y_true), np.asarray(y_score)
    if task == "multi-label, binary-class":
        thr = np.broadcast_to(np.asarray(0.5 if threshold is None else threshold, dtype=float), (y_true.shape[1],))
        return 1.0 - float(np.mean([balanced_accuracy(y_true[:, i], y_score[:, i] > thr[i])
                                    for i in range(y_true.shape[1])]))
    y_true = y_true.reshape(-1)
    if task == "binary-class":
        return 1.0 - balanced_accuracy(y_true, (y_score[:, -1] > (0.5 if threshold is None else threshold)).astype(int))
    if task in ("multi-class", "ordinal-regression"):
        return 1.0 - balanced_accuracy(y_true, np.argmax(y_score, axis=-1))
    raise UserError(f"unknown MedMNIST task {task!r}; {did_you_mean(task, TASKS)}")


def alexnet(dataset: str, corruption: Optional[str] = None) -> float:
    """AlexNet's clean balanced error on ``dataset`` (corruption None) or its error under
    ``corruption`` averaged over the five severities, as medmnistc publishes them."""
    if dataset not in ALEXNET:
        raise UserError(f"MedMNIST-C has no AlexNet baseline for {dataset!r}; {did_you_mean(dataset, ALEXNET)}")
    clean, raw = ALEXNET[dataset]
    if corruption is None:
        return clean
    if corruption not in raw:
        raise UserError(f"MedMNIST-C has no AlexNet baseline for {dataset} under {corruption!r}; "
                        f"{did_you_mean(corruption, raw)}")
    return raw[corruption]


def _mean_error(errors: Sequence[float]) -> float:
    errors = [float(e) for e in errors]
    if len(errors) != 5:
        raise UserError(f"BE/rBE need the balanced errors of the 5 severities, got {len(errors)}")
    return float(np.mean(errors))


def be(dataset: str, corruption: str, errors: Sequence[float]) -> float:
    """Normalised balanced error of one corruption: mean error over severities 1-5 / AlexNet's."""
    return _mean_error(errors) / alexnet(dataset, corruption)


def rbe(dataset: str, corruption: str, errors: Sequence[float], clean_error: float) -> float:
    """Relative balanced error: (mean error - clean error) / (AlexNet's mean error - AlexNet's clean error)."""
    return (_mean_error(errors) - float(clean_error)) / (alexnet(dataset, corruption) - alexnet(dataset))


def summary(dataset: str, errors: Mapping[str, Sequence[float]], clean_error: float) -> dict:
    """``Evaluator.populate_summary``: per-corruption BE and rBE, their means over the corruptions
    given, and the mean error per corruption (``raw_scores``)."""
    be_scores = {c: be(dataset, c, e) for c, e in errors.items()}
    rbe_scores = {c: rbe(dataset, c, e, clean_error) for c, e in errors.items()}
    return {"metrics": {"clean_score": float(clean_error), "be": float(np.mean(list(be_scores.values()))),
                        "rbe": float(np.mean(list(rbe_scores.values())))},
            "be_scores": be_scores, "rbe_scores": rbe_scores,
            "raw_scores": {c: _mean_error(e) for c, e in errors.items()}}
