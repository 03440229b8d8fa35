"""The correctness gate's rules on hand-made responses and references, one check at a time."""

from __future__ import annotations

import math

import orjson
import pytest

from cacheon.agent.correctness import (
    Reference,
    RefPosition,
    Reported,
    Response,
    ResponseScore,
    behavioural_copy_share,
    judge,
    percentile,
    score_response,
    union_kl,
)
from cacheon.agent.teacher import BaselineError, eos_token_ids, parse_completion, select_scored
from cacheon.protocol import GateThresholds, Outcome, ReasonCode

EOS = 0
EOS_IDS = frozenset({EOS})
T = GateThresholds()
LN = math.log


def dist(*probs: float, first: int = 1) -> tuple[tuple[int, float], ...]:
    """Token ids first, first+1, ... with these probabilities, most likely first."""
    return tuple((first + i, LN(p)) for i, p in enumerate(probs))


PEAKED = dist(0.7, 0.1, 0.08, 0.05, 0.03, 0.02)  # tokens 1..6


def honest(top: tuple[tuple[int, float], ...] = PEAKED, token: int | None = None) -> Reported:
    """What an engine that computes exactly the reference reports for `token` (default argmax)."""
    chosen = top[0][0] if token is None else token
    logprob = dict(top)[chosen]
    return Reported(chosen, logprob, top[:5])


def ref_for(tokens: list[Reported], top: tuple[tuple[int, float], ...] = PEAKED) -> Reference:
    return Reference(tuple(RefPosition(dict(top)[t.token], top) for t in tokens), top)


def response(tokens: list[Reported], finish: str = "length", key: str = "k") -> Response:
    max_tokens = len(tokens) if finish == "length" else 64
    return Response(key, tuple(tokens), finish, max_tokens)


def test_percentile_interpolates_like_numpy() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    assert percentile([0.0, 10.0], 99) == pytest.approx(9.9)
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_kl_is_zero_for_the_same_distribution_and_grows_with_disagreement() -> None:
    ref = RefPosition(PEAKED[0][1], PEAKED)
    assert union_kl(ref, 1, honest()) == pytest.approx(0.0, abs=1e-12)
    flatter = dist(0.4, 0.2, 0.15, 0.1, 0.1)
    assert union_kl(ref, 1, Reported(1, LN(0.4), flatter)) > 0.05
    disjoint = dist(0.5, 0.2, 0.1, 0.1, 0.05, first=100)
    assert union_kl(ref, 1, Reported(1, LN(0.01), ((1, LN(0.01)), *disjoint[:4]))) > 1.0


def test_an_exact_engine_passes_every_check() -> None:
    tokens = [honest() for _ in range(8)]
    score = score_response(response(tokens), ref_for(tokens), T, eos_ids=EOS_IDS)
    assert score.failure is None
    assert score.divergences == 0
    assert all(p.kl == pytest.approx(0.0, abs=1e-12) for p in score.positions)


NEAR_TIE = dist(0.7, 0.69, 0.01, 0.01, 0.01)
"""Where token 2 is a near-tie divergence from the argmax, token 1."""


def _filler(i: int) -> Reported:
    """An argmax token, a different one for each i (so no divergence repeats a loop's)."""
    return honest(dist(0.7, 0.1, 0.1, 0.05, 0.05, first=10 + i))


def _scored(tokens: list[Reported], key: str = "k") -> ResponseScore:
    """Scored against a reference that agrees with every token's own top-5."""
    ref = Reference(tuple(RefPosition(dict(t.top)[t.token], t.top) for t in tokens), PEAKED)
    return score_response(response(tokens, key=key), ref, T, eos_ids=EOS_IDS)


@pytest.mark.parametrize(
    ("divergences", "length", "expected"),
    [
        (1, 8, None),  # a near-tie divergence is honest drift
        (5, 128, None),  # 4% of a long response: possible at the honest 2%
        (10, 256, None),  # the same share, twice as long: the same verdict
        (14, 128, ReasonCode.GREEDY_CONSISTENCY),  # 11%: improbable at 2%
        (28, 256, ReasonCode.GREEDY_CONSISTENCY),
    ],
)
def test_greedy_consistency_is_a_rate(
    divergences: int, length: int, expected: ReasonCode | None
) -> None:
    tokens = [_filler(i) for i in range(length - divergences)]
    for i in range(divergences):
        tokens.insert(i * (length // divergences), honest(NEAR_TIE, token=2))
    score = _scored(tokens)
    assert score.divergences == divergences
    assert score.failure is expected, score.detail


def test_a_token_far_behind_the_argmax_is_sampled_not_greedy() -> None:
    top = dist(0.7, 0.2, 0.01, 0.01, 0.01)
    tokens = [honest(top, token=2), honest(top)]
    score = score_response(response(tokens), ref_for(tokens, top), T, eos_ids=EOS_IDS)
    assert score.failure is ReasonCode.GREEDY_CONSISTENCY, score.detail


def test_a_divergence_repeated_in_a_loop_counts_once() -> None:
    loop = [*(_filler(i) for i in range(5)), honest(NEAR_TIE, token=2)]
    score = _scored(loop * 40)  # 240 tokens, 40 divergences, one choice
    assert score.divergences == 1
    assert score.failure is None


def test_the_run_fails_a_divergence_rate_no_single_response_shows() -> None:
    scores = []
    for r in range(40):  # 40 responses of 32 tokens, 2 divergences each: 6%, 3x the honest 2%
        tokens = [_filler(i) for i in range(30)]
        tokens[5:5] = [honest(NEAR_TIE, token=2)]
        tokens[20:20] = [honest(NEAR_TIE, token=2)]
        scores.append(_scored(tokens, key=f"k{r}"))
    assert all(s.failure is None for s in scores)
    lengths = {s.key: 32 for s in scores}
    result = judge(scores, lengths, lengths, T)
    assert result.reason is ReasonCode.GREEDY_CONSISTENCY, result.detail
    assert result.stats.divergences == 80
    assert result.stats.divergence_p < T.divergence_alpha
    two = judge(scores[:2], lengths, lengths, T)  # 64 tokens: 4 divergences are not improbable
    assert two.outcome is Outcome.PASS, two.detail


def test_a_token_outside_the_reference_top5_is_implausible() -> None:
    top = dist(0.5, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05)  # token 7 ranks 6th
    tokens = [honest(top), Reported(7, LN(0.05), top[:5])]
    score = score_response(response(tokens), ref_for(tokens, top), T, eos_ids=EOS_IDS)
    assert score.failure is ReasonCode.PLAUSIBILITY
    assert "rank 6" in score.detail


def test_garbage_is_named_before_implausible_at_the_same_position() -> None:
    tokens = [honest(), Reported(9, -0.1, PEAKED[:5])]
    ref = Reference((RefPosition(LN(0.7), PEAKED), RefPosition(-15.0, PEAKED)), PEAKED)
    score = score_response(response(tokens), ref, T, eos_ids=EOS_IDS)
    assert score.failure is ReasonCode.GARBAGE


def test_the_earliest_failing_position_names_the_response() -> None:
    top = dist(0.7, 0.2, 0.02, 0.02, 0.02, 0.01)
    tokens = [honest(top), honest(top, token=2), Reported(9, -0.1, top[:5])]  # greedy fault first
    ref = Reference((*ref_for(tokens[:2], top).positions, RefPosition(-15.0, top)), top)
    assert score_response(response(tokens), ref, T, eos_ids=EOS_IDS).failure is (
        ReasonCode.GREEDY_CONSISTENCY
    )


EOS_LEADS = ((EOS, LN(0.8)), *dist(0.1, 0.05, 0.03, 0.02))
EOS_TIED = ((1, LN(0.45)), (EOS, LN(0.44)), *dist(0.05, 0.03, 0.02, first=2))
EOS_BEHIND = (*PEAKED[:5], (EOS, LN(0.001)))


@pytest.mark.parametrize(
    ("steps", "finish", "expected"),
    [
        ([PEAKED, EOS_LEADS], "stop", None),  # stops where EOS leads
        ([PEAKED, EOS_TIED], "stop", None),  # EOS within a near-tie of the argmax
        ([PEAKED, EOS_BEHIND], "stop", ReasonCode.EOS_HONESTY),  # early: EOS far behind
        ([EOS_LEADS, PEAKED], "length", ReasonCode.EOS_HONESTY),  # skipped where EOS led
    ],
)
def test_eos_honesty(
    steps: list[tuple[tuple[int, float], ...]], finish: str, expected: ReasonCode | None
) -> None:
    last = len(steps) - 1
    tokens = [
        Reported(EOS, dict(top)[EOS], top[:5]) if finish == "stop" and i == last else honest(top)
        for i, top in enumerate(steps)
    ]
    if finish == "length" and steps[0] is EOS_LEADS:
        tokens[0] = honest(EOS_LEADS, token=1)
    ref = Reference(
        tuple(RefPosition(dict(s)[t.token], s) for t, s in zip(tokens, steps, strict=True)), PEAKED
    )
    score = score_response(response(tokens, finish), ref, T, eos_ids=EOS_IDS)
    assert score.failure is expected, score.detail


def test_a_stop_without_an_eos_token_is_judged_after_the_last_token() -> None:
    tokens = [honest()]
    leads = Reference(ref_for(tokens).positions, EOS_LEADS)
    behind = Reference(ref_for(tokens).positions, PEAKED)
    assert score_response(response(tokens, "stop"), leads, T, eos_ids=EOS_IDS).failure is None
    assert score_response(response(tokens, "stop"), behind, T, eos_ids=EOS_IDS).failure is (
        ReasonCode.EOS_HONESTY
    )


def test_eos_in_the_middle_of_a_response_is_dishonest() -> None:
    tokens = [honest(), Reported(EOS, LN(0.8), EOS_LEADS[:5]), honest()]
    ref = Reference(
        (
            RefPosition(LN(0.7), PEAKED),
            RefPosition(LN(0.8), EOS_LEADS),
            RefPosition(LN(0.7), PEAKED),
        ),
        PEAKED,
    )
    score = score_response(response(tokens), ref, T, eos_ids=EOS_IDS)
    assert score.failure is ReasonCode.EOS_HONESTY


@pytest.mark.parametrize(
    ("resp", "detokenized", "fragment"),
    [
        (Response("k", (), "stop", 8), None, "no tokens"),
        (Response("k", (honest(),), "length", 8), None, "finish_reason length after 1"),
        (Response("k", (Reported(1, LN(0.7), PEAKED[:3]),), "length", 1), None, "5 entries"),
        (Response("k", (honest(),), "length", 1, text=" a"), " b", "does not match"),
    ],
)
def test_conformance(resp: Response, detokenized: str | None, fragment: str) -> None:
    score = score_response(
        resp, ref_for(list(resp.tokens)), T, eos_ids=EOS_IDS, detokenized=detokenized
    )
    assert score.failure is ReasonCode.CONFORMANCE
    assert fragment in score.detail


UNCERTAIN = dist(0.3, 0.25, 0.2, 0.15, 0.1)


def _run(
    reported: list[Reported], top: tuple[tuple[int, float], ...], n: int = 20
) -> Outcome | ReasonCode:
    responses = [response(reported, key=f"k{i}") for i in range(n)]
    scores = [score_response(r, ref_for(reported, top), T, eos_ids=EOS_IDS) for r in responses]
    lengths = {r.key: len(r.tokens) for r in responses}
    result = judge(scores, lengths, lengths, T)
    return result.reason or result.outcome


def test_run_level_checks() -> None:
    assert _run([honest(UNCERTAIN)], UNCERTAIN) is Outcome.PASS
    # an engine claiming certainty where the reference is uncertain fabricates its logprobs
    assert _run([Reported(1, 0.0, ((1, 0.0), *UNCERTAIN[1:]))], UNCERTAIN) is ReasonCode.FABRICATION
    # the same token and value, but the runners-up disagree: another model
    shuffled = ((1, LN(0.3)), (5, LN(0.25)), (4, LN(0.2)), (3, LN(0.15)), (2, LN(0.1)))
    assert _run([Reported(1, LN(0.3), shuffled)], UNCERTAIN) is ReasonCode.DISTRIBUTION
    # the same distribution, but the sampled token's value is off
    assert _run([Reported(1, LN(0.3) - 0.5, UNCERTAIN)], UNCERTAIN) is ReasonCode.VALUE_CLOSENESS


def test_length_band_and_majority_code() -> None:
    tokens = [honest()]
    responses = [response(tokens, key=f"k{i}") for i in range(10)]
    scores = [score_response(r, ref_for(tokens), T, eos_ids=EOS_IDS) for r in responses]
    lengths = {r.key: 1 for r in responses}
    assert judge(scores, lengths, {k: 2 for k in lengths}, T).reason is ReasonCode.LENGTH_BAND
    assert judge(scores, lengths, {k: 1 for k in lengths}, T).outcome is Outcome.PASS
    greedy = [
        score_response(
            response([honest(token=2)], key="g"), ref_for([honest(token=2)]), T, eos_ids=EOS_IDS
        )
    ]
    result = judge([*scores, *greedy], {**lengths, "g": 1}, {**lengths, "g": 1}, T)
    assert result.reason is ReasonCode.GREEDY_CONSISTENCY
    assert result.failures == {ReasonCode.GREEDY_CONSISTENCY: 1}
    assert result.detail.startswith("1/11 responses; g:")


def test_behavioural_copy_compares_ids_exactly_and_logprobs_within_a_tolerance() -> None:
    tol = T.copy_logprob_tolerance

    def nudged(by: float, token: int = 1) -> Reported:
        top = tuple((t, lp + by) for t, lp in PEAKED[:5])
        return Reported(token, dict(top)[token], top)

    mine = [response([honest()], key=f"k{i}") for i in range(4)]
    same = [response([honest()], key=f"k{i}") for i in range(4)]
    ulp = [
        response([Reported(1, math.nextafter(LN(0.7), 0.0), PEAKED[:5])], key=f"k{i}")
        for i in range(4)
    ]
    thousandth = [response([nudged(1e-3)], key=f"k{i}") for i in range(4)]
    drifted = [response([nudged(3 * tol)], key=f"k{i}") for i in range(4)]
    other_token = [response([nudged(0.0, token=2)], key=f"k{i}") for i in range(4)]
    assert behavioural_copy_share(mine, same, tolerance=tol) == 1.0
    assert behavioural_copy_share(mine, ulp, tolerance=tol) == 1.0  # a nudge hides nothing
    assert behavioural_copy_share(mine, thousandth, tolerance=tol) == 1.0
    assert behavioural_copy_share(mine, ulp, tolerance=0.0) == 0.0  # bit for bit, it would
    assert behavioural_copy_share(mine, drifted, tolerance=tol) == 0.0  # another engine's drift
    assert behavioural_copy_share(mine, other_token, tolerance=tol) == 0.0
    assert behavioural_copy_share(mine, same[:1] + drifted[1:], tolerance=tol) == 0.25
    assert behavioural_copy_share(mine, [], tolerance=tol) == 0.0


def _vllm_answer(prompt: list[int], output: list[int]) -> bytes:
    """The shape vLLM 0.32 answers teacher forcing with (return_tokens_as_token_ids)."""
    entries: list[object] = [None]
    for token in [*prompt, *output][1:]:
        entry = {
            str(t): {"logprob": lp, "rank": r, "decoded_token": "x"}
            for r, (t, lp) in enumerate(PEAKED, 1)
        }
        entry.setdefault(str(token), {"logprob": -20.0, "rank": 1500, "decoded_token": "y"})
        entries.append(entry)
    after = {f"token_id:{t}": lp for t, lp in EOS_LEADS}
    choice = {"prompt_logprobs": entries, "logprobs": {"top_logprobs": [after]}}
    return orjson.dumps({"choices": [choice]})


def test_parse_completion_reads_output_positions_only() -> None:
    ref = parse_completion(_vllm_answer([5, 6, 7], [1, 999]), 3, [1, 999])
    assert [p.chosen for p in ref.positions] == [LN(0.7), -20.0]
    assert ref.positions[1].top == PEAKED  # the out-of-top entry (rank 1500) is not in the top
    assert ref.after[0] == (EOS, LN(0.8))
    with pytest.raises(BaselineError, match="prompt_logprobs"):
        parse_completion(_vllm_answer([5, 6, 7], [1]), 3, [1, 2])


def test_scored_selection_caps_long_prompts_with_a_seeded_sample() -> None:
    lens = {f"s{i}": 100 for i in range(5)} | {f"l{i}": 10_000 for i in range(20)}
    chosen = select_scored(lens, T, "seed")
    assert {k for k in chosen if k.startswith("s")} == {f"s{i}" for i in range(5)}
    assert len(chosen) == 5 + T.long_prompt_sample
    assert chosen == select_scored(lens, T, "seed")
    assert chosen != select_scored(lens, T, "other")


def test_eos_ids_come_from_the_model_directory(tmp_path: object) -> None:
    from pathlib import Path

    model = Path(str(tmp_path))
    (model / "config.json").write_text('{"eos_token_id": 7}')
    assert eos_token_ids(model) == {7}
    (model / "generation_config.json").write_text('{"eos_token_id": [151645, 151643]}')
    assert eos_token_ids(model) == {151645, 151643}
    with pytest.raises(BaselineError, match="no eos_token_id"):
        eos_token_ids(model / "missing")
