"""Metrics against values computed by hand (derivations in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from vast.train.metrics import (
    bleu,
    caption_metrics,
    cider_d,
    exact_match,
    recall_metrics,
    rouge_l,
    t2v_ranks,
    v2t_ranks,
)


def test_bleu_matches_hand_computed_precisions():
    # "the cat sat on the mat" vs "the cat is on the mat": p1 5/6, p2 3/5, p3 1/4, same length (BP 1)
    b = bleu(["The cat sat on the mat."], [["the cat is on the mat"]])
    assert b[0] == pytest.approx(5 / 6)
    assert b[1] == pytest.approx(math.sqrt(5 / 6 * 3 / 5))
    assert b[2] == pytest.approx(0.5)
    # "... on a mat": p1 5/6, p2 3/5, p3 2/4, p4 1/3 -> BLEU-4 = (1/12) ** (1/4)
    assert bleu(["the cat sat on the mat"], [["the cat sat on a mat"]])[3] == pytest.approx(12 ** -0.25)
    # brevity: 2 words against 6 -> BP = exp(1 - 6/2), precisions 1
    assert bleu(["the cat"], [["the cat sat on the mat"]])[1] == pytest.approx(math.exp(-2))
    # the closest reference length decides the penalty
    assert bleu(["the cat"], [["the cat sat on the mat", "the cat"]])[1] == pytest.approx(1.0)


def test_rouge_l_matches_hand_computed_f_scores():
    assert rouge_l(["the cat sat on the mat"], [["the cat is on the mat"]]) == pytest.approx(5 / 6)
    p, r, beta2 = 1.0, 1 / 3, 1.2**2  # LCS 2 of 2 candidate and 6 reference words
    expected = (1 + beta2) * p * r / (r + beta2 * p)
    assert rouge_l(["the cat"], [["the cat sat on the mat"]]) == pytest.approx(expected)


def test_cider_d_matches_hand_computed_values():
    # Two images, one reference each; every n-gram has df 1 so all weights are log 2.
    # Perfect 2-word captions: unigram and bigram cosines 1, no 3/4-grams: mean 0.5, x10 = 5.
    assert cider_d(["a b", "c d"], [["a b"], ["c d"]]) == pytest.approx(5.0)
    # "a x" for "a b": unigram cosine 1/2, bigram 0 -> 1.25; with the perfect second image: 3.125
    assert cider_d(["a x", "c d"], [["a b"], ["c d"]]) == pytest.approx(3.125)
    # one image alone: idf log(1) = 0 makes every vector zero
    assert cider_d(["a b"], [["a b"]]) == 0.0


def test_caption_metrics_bundle_the_coco_names():
    m = caption_metrics(["a b", "c d"], [["a b"], ["c d"]], with_meteor=False)
    assert m["cider"] == pytest.approx(5.0) and m["rouge_l"] == pytest.approx(1.0)
    assert {"bleu4", "rouge_l", "cider"} <= set(m)


def test_meteor_is_left_out_without_java(monkeypatch):
    import vast.train.metrics as metrics

    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    assert metrics.meteor(["a b"], [["a b"]]) is None
    assert "meteor" not in caption_metrics(["a b"], [["a b"]])


def test_multi_caption_retrieval_follows_the_upstream_protocol():
    """3 videos with 2, 1 and 3 captions (as MSVD/VATEX test sets): 6 texts, ranks worked out by hand.

    t2v counts every caption (upstream compute_metric_ret 'forward'); v2t takes each video's best
    caption ('backward').
    """
    owner = [0, 0, 1, 2, 2, 2]
    scores = torch.tensor([
        [0.9, 0.1, 0.0],  # text 0 (video 0): rank 0
        [0.2, 0.8, 0.5],  # text 1 (video 0): video 1, 2 first -> rank 2
        [0.3, 0.4, 0.1],  # text 2 (video 1): rank 0
        [0.1, 0.2, 0.7],  # text 3 (video 2): rank 0
        [0.6, 0.5, 0.4],  # text 4 (video 2): rank 2
        [0.5, 0.6, 0.3],  # text 5 (video 2): rank 2
    ])
    assert t2v_ranks(scores, owner).tolist() == [0, 2, 0, 0, 2, 2]
    m = recall_metrics(t2v_ranks(scores, owner))
    assert m["r1"] == pytest.approx(50.0) and m["r5"] == m["r10"] == 100.0
    assert m["ravg"] == pytest.approx(250 / 3) and m["medr"] == 1.0  # ranks+1 [1,3,1,1,3,3]: lower median 1
    # video 0 column: texts by score 0(0.9) 4(0.6) 5(0.5) ... -> its best text is first: rank 0
    # video 1 column: 1(0.8) 5(0.6) 4(0.5) 2(0.4) -> its only text (2) at rank 3
    # video 2 column: 3(0.7) ... -> rank 0
    assert v2t_ranks(scores, owner).tolist() == [0, 3, 0]
    v = recall_metrics(v2t_ranks(scores, owner))
    assert v["r1"] == pytest.approx(200 / 3) and v["r5"] == 100.0


def test_exact_match_is_the_raw_string_unless_normalised():
    assert exact_match(["red", "two", "a dog"], ["red", "three", "a dog"]) == pytest.approx(200 / 3)
    assert exact_match(["Red.", "t - shirt"], ["red", "t-shirt"]) == 0.0  # upstream compares strings
    assert exact_match(["Red.", "t - shirt"], ["red", "t-shirt"], normalize=True) == 100.0
