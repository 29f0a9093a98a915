import pytest

from p2d_llamafactory.data.metrics import (
    METRIC_FUNCTIONS,
    exact_match,
    final_number,
    resolve_metric,
    rouge_l,
    score_answers,
    split_answers,
)


# ---------------------------------------------------------------- final_number


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Steps... #### 42", "42"),
        ("#### 1,000", "1000"),  # the reference parser gave "000"
        ("#### 1,234,567", "1234567"),
        ("#### -5", "-5"),  # the reference parser dropped the sign
        ("#### \u22127", "-7"),  # unicode minus
        ("#### $-3", "-3"),
        ("#### -$3", "-3"),
        ("#### 2.50", "2.5"),
        ("#### 3.0", "3"),
        ("#### 0.0", "0"),
        ("#### -0", "0"),
        ("#### .5", "0.5"),
        ("#### 100", "100"),  # no exponent form ("1E+2")
        ("#### 1,000.50", "1000.5"),
        ("#### $1,200.", "1200"),
        ("####   $ 7 .", "7"),
        ("#### 18.", "18"),
        ("####42", "42"),
        ("####\n42", "42"),
        ("#### 42 apples", "42"),  # first number token after the last ####
        ("#### The answer is 9 dollars", "9"),
        ("#### 5\nrecheck\n#### 6", "6"),  # last #### wins
        ("#### 1 #### 2 #### 3", "3"),
        ("##### 8", "8"),
    ],
)
def test_final_number(text, expected):
    assert final_number(text) == expected


@pytest.mark.parametrize("text", ["", "The answer is 42.", "#### none", "####", "#### 5\n####", "# 3"])
def test_final_number_missing(text):
    assert final_number(text) is None


def test_final_number_equal_forms():
    assert final_number("#### 2.5") == final_number("#### 2.50") == final_number("#### $2.500.")
    assert final_number("#### 3") == final_number("#### 3.0") == final_number("#### 3.00")
    assert final_number("#### 1000") == final_number("#### 1,000") == final_number("#### $1,000.00")


# ---------------------------------------------------------------- exact_match


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("so 6*3=18 #### 18", "work\n#### 18", 1.0),
        ("#### 18.0", "#### 18", 1.0),
        ("#### $1,000", "#### 1000", 1.0),
        ("#### -4", "#### 4", 0.0),
        ("#### 17", "#### 18", 0.0),
        ("the answer is 18", "#### 18", 0.0),  # no #### in prediction
        ("#### 18", "18", 0.0),  # no #### in reference
        ("", "#### 18", 0.0),
        ("no number", "no number", 0.0),  # neither has a final number
    ],
)
def test_exact_match(prediction, reference, expected):
    assert exact_match(prediction, reference) == expected


# ---------------------------------------------------------------- rouge_l


def test_rouge_l_identical_and_disjoint():
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert rouge_l("alpha beta gamma", "delta epsilon zeta") == 0.0


def test_rouge_l_partial_in_range():
    score = rouge_l("the cat sat", "the cat sat on the mat")
    assert 0.0 < score < 1.0
    assert score == pytest.approx(2 * 1.0 * 0.5 / 1.5)  # P = 3/3, R = 3/6


def test_rouge_l_stemming():
    assert rouge_l("running dogs", "run dog") == pytest.approx(1.0)


def test_rouge_l_multi_reference_max():
    refs = ["completely unrelated words", "the patient has a fever", "fever"]
    assert rouge_l("the patient has a fever", refs) == pytest.approx(1.0)
    assert rouge_l("fever", refs) == pytest.approx(1.0)
    assert rouge_l("the patient has a fever", ["unrelated"]) == 0.0


@pytest.mark.parametrize("prediction", ["", "   \n"])
def test_rouge_l_empty_prediction(prediction):
    assert rouge_l(prediction, "some reference") == 0.0
    assert rouge_l(prediction, ["a", "b"]) == 0.0


def test_rouge_l_no_references():
    assert rouge_l("text", []) == 0.0
    assert rouge_l("text", "") == 0.0


# ---------------------------------------------------------------- resolve_metric


def test_metrics_registry():
    assert METRIC_FUNCTIONS == {"em": exact_match, "rougeL": rouge_l}


def test_resolve_metric_auto_math():
    refs = [f"step\n#### {i}" for i in range(9)] + ["no final line"]  # exactly 90%
    assert resolve_metric("auto", refs) == "em"


def test_resolve_metric_auto_text():
    refs = [f"step\n#### {i}" for i in range(8)] + ["no final line", "#### none"]  # 80%
    assert resolve_metric("auto", refs) == "rougeL"
    assert resolve_metric("auto", ["A summary of the dialogue.", "Another one."]) == "rougeL"
    assert resolve_metric("auto", []) == "rougeL"


def test_resolve_metric_explicit():
    assert resolve_metric("em", ["plain text"]) == "em"
    assert resolve_metric("rougeL", ["#### 4"]) == "rougeL"


@pytest.mark.parametrize("name", ["bleu", "EM", "rouge-l", ""])
def test_resolve_metric_error(name):
    with pytest.raises(ValueError) as info:
        resolve_metric(name, ["#### 1"])
    assert str(info.value) == f"`p2d_icl_metric` must be one of auto, em, rougeL; got '{name}'."


# ---------------------------------------------------------------- split_answers


def test_split_clean():
    text = "Answer 1: first\nAnswer 2: second line\nmore\nAnswer 3: third #### 3"
    assert split_answers(text, 3) == ["first", "second line\nmore", "third #### 3"]


def test_split_variants_case_space_colon():
    text = "answer 1 : one\nANSWER 2: two\nAnswer3: three"
    assert split_answers(text, 3) == ["one", "two", "three"]


def test_split_bold_markers():
    text = "**Answer 1:** one\n**Answer 2**: two\n### Answer 3: three"
    assert split_answers(text, 3) == ["one", "two", "three"]


def test_split_question_answer_variant():
    text = "Question 1 Answer: one #### 1\nQuestion 2 Answer: two #### 2\n**Question 3 Answer:** three"
    assert split_answers(text, 3) == ["one #### 1", "two #### 2", "three"]


def test_split_question_then_answer_on_next_line():
    text = "Question 1:\nAnswer: one\nQuestion 2: Answer: two"
    assert split_answers(text, 2) == ["one", "two"]


def test_split_bare_answer_is_not_a_marker():
    text = "Answer 1: so the answer: 5\nAnswer 2: ok"
    assert split_answers(text, 2) == ["so the answer: 5", "ok"]


def test_split_question_echo_ends_previous_answer():
    text = "Answer 1: 18\n\nQuestion 2: What is 3+4?\nAnswer 2: 7"
    assert split_answers(text, 2) == ["18", "7"]


def test_split_echo_of_the_styles_input_label_ends_previous_answer():
    # summarization prompts number their queries "Dialogue k:"; an echoed dialogue is not part of answer 1
    text = "Answer 1: Tom lends Ann a pen.\nDialogue 2: #Person1#: Hi.\n#Person2#: Hello.\nAnswer 2: They greet."
    assert split_answers(text, 2, echo_label="Dialogue") == ["Tom lends Ann a pen.", "They greet."]
    assert split_answers(text, 2)[0].startswith("Tom lends Ann a pen.\nDialogue 2:")  # Question-only: not split
    assert split_answers("Answer 1: a\n**Patient Case 2:** b\nAnswer 2: c", 2, "Patient Case") == ["a", "c"]
    assert score_answers(text, ["Tom lends Ann a pen.", "They greet."], "rougeL", "Dialogue") == [1.0, 1.0]


def test_split_bare_answer_after_question_echo():
    text = "Question 1: foo?\n**Answer:** 5\nQuestion 2: Find the answer: how many?\nAnswer 2: 7"
    assert split_answers(text, 2) == ["5", "7"]
    # a bare "Answer:" not right after an echo stays answer text
    assert split_answers("Question 2: x\nAnswer: 3\nAnswer: again", 2) == ["", "3\nAnswer: again"]


def test_split_missing_middle_answer():
    text = "Answer 1: a #### 1\nAnswer 3: c #### 3"
    assert split_answers(text, 3) == ["a #### 1", "", "c #### 3"]


def test_split_repeated_marker_first_wins():
    text = "Answer 1: a\nAnswer 2: b\nAnswer 2: b again\nAnswer 3: c"
    assert split_answers(text, 3) == ["a", "b", "c"]


def test_split_chatter_before_first_marker_ignored():
    text = "Sure! Here are my answers to the questions.\n\nAnswer 1: a\nAnswer 2: b"
    assert split_answers(text, 2) == ["a", "b"]


def test_split_markers_beyond_n_ignored_but_delimit():
    text = "Answer 1: a\nAnswer 2: b\nAnswer 3: extra query\nAnswer 0: zero"
    assert split_answers(text, 2) == ["a", "b"]


def test_split_no_markers():
    assert split_answers("  just an answer #### 4\n", 1) == ["just an answer #### 4"]
    assert split_answers("just an answer #### 4", 3) == ["", "", ""]
    assert split_answers("", 1) == [""]
    assert split_answers("", 2) == ["", ""]


def test_split_single_query_with_marker():
    assert split_answers("Answer 1: x", 1) == ["x"]
    assert split_answers("Chatter. Answer 1: x", 1) == ["x"]
    # only an out-of-range marker: the text before it is the answer
    assert split_answers("own answer\nAnswer 2: hallucinated", 1) == ["own answer"]
    # an echoed question alone does not count as a marker for the fallback
    assert split_answers("Question 1: foo?\nThe result is 5", 1) == ["Question 1: foo?\nThe result is 5"]


def test_split_always_num_queries_long():
    for n in range(1, 6):
        assert len(split_answers("Answer 2: b\nAnswer 9: z", n)) == n
    with pytest.raises(ValueError):
        split_answers("Answer 1: a", 0)


# ---------------------------------------------------------------- score_answers


def test_score_answers_em_independent():
    refs = ["x\n#### 10", "y\n#### 20", "z\n#### 30"]
    good = "Answer 1: 5+5 #### 10\nAnswer 2: 4*5 #### 20\nAnswer 3: 3*10 #### 30"
    assert score_answers(good, refs, "em") == [1.0, 1.0, 1.0]
    garbled = "Answer 1: 5+5 #### 10\nAnswer 2: I do not know\nAnswer 3: 3*10 #### 30"
    assert score_answers(garbled, refs, "em") == [1.0, 0.0, 1.0]
    skipped = "Answer 1: #### 10\nAnswer 3: #### 30"  # no shifting of answer 3 into slot 2
    assert score_answers(skipped, refs, "em") == [1.0, 0.0, 1.0]


def test_score_answers_rouge_independent():
    refs = ["the patient has a fever", "take aspirin twice daily", "rest and drink fluids"]
    gen = "Answer 1: the patient has a fever\nAnswer 2: qwerty zxcv\nAnswer 3: rest and drink fluids"
    scores = score_answers(gen, refs, "rougeL")
    assert scores[0] == pytest.approx(1.0)
    assert scores[1] == 0.0
    assert scores[2] == pytest.approx(1.0)


def test_score_answers_no_markers():
    assert score_answers("#### 10", ["#### 10"], "em") == [1.0]
    assert score_answers("#### 10", ["#### 10", "#### 10"], "em") == [0.0, 0.0]


def test_score_answers_bad_metric():
    with pytest.raises(ValueError):
        score_answers("Answer 1: a", ["a"], "auto")
