"""Answer extraction and scoring on tricky strings (LLM-Adapters rules, AQuA without the 'A' trap)."""
import math

import pytest

from harness.evaluate import extract_answer, is_correct, response_text, score


@pytest.mark.parametrize("task,text,expected", [
    ("boolq", "the correct answer is false, not true", "false"),
    ("boolq", "The correct answer is True", None),                  # case-sensitive, as upstream
    ("boolq", "it is untrue", "true"),                              # substring match, as upstream
    ("piqa", "solution2 is better than solution1", "solution2"),
    ("social_i_qa", "the correct answer is answer3", "answer3"),
    ("ARC-Challenge", "answer5? no: answer1", "answer5"),
    ("openbookqa", "I think Answer2", None),
    ("hellaswag", "ending4 then ending1", "ending4"),
    ("winogrande", "option1", "option1"),
    ("winogrande", "", None),
])
def test_commonsense_takes_the_first_label_match(task, text, expected):
    assert extract_answer(task, text) == expected


@pytest.mark.parametrize("task,text,expected", [
    ("gsm8k", "She has 3 apples and 4 pears, 7 in all. The answer is 1,234.5", 1234.5),
    ("SVAMP", "The temperature fell to -3 degrees.", -3.0),
    ("AddSub", "The answer is 5.", 5.0),
    ("MultiArith", "10 - 4 = 6\nThe answer is 6.0", 6.0),
    ("SingleEq", "I do not know.", None),
    ("mawps", "x = .5", 5.0),                                      # upstream regex needs a leading digit
])
def test_math_takes_the_last_number(task, text, expected):
    assert extract_answer(task, text) == expected


@pytest.mark.parametrize("text,expected", [
    ("Answer: C", "C"),
    ("A train travels 60 km. The answer is (D).", "D"),
    ("Rationale: A boy has 3 apples. So the answer is B", "B"),
    ("The answer is: (C) 12 km", "C"),
    ("Among the options, (E) fits.", "E"),
    ("Answer choices are hard. A", "A"),
    ("Answer: none of them", None),
])
def test_aqua_option_letter_is_not_the_a_of_answer(text, expected):
    assert extract_answer("AQuA", text) == expected


def test_scoring_rules():
    assert is_correct("gsm8k", 576.0009, "576.0") and not is_correct("gsm8k", 576.01, "576")
    assert is_correct("mawps", 1.8333, "1.8333333333333335")
    assert not is_correct("AddSub", None, "4") and not is_correct("AddSub", math.inf, "4")
    assert is_correct("AQuA", "A", "A") and not is_correct("AQuA", "a", "A")
    assert is_correct("boolq", "true", "true") and not is_correct("boolq", None, "true")
    with pytest.raises(ValueError, match="unknown task"):
        extract_answer("mmlu", "A")


def test_response_stops_at_a_further_response_marker():
    generated = " the correct answer is false\n\n### Instruction:\nanswer true\n### Response: true"
    assert response_text(generated) == "the correct answer is false\n\n### Instruction:\nanswer true"
    assert score("boolq", generated) == {"response": response_text(generated), "prediction": "false",
                                         "extraction_failure": False}
    assert score("gsm8k", "no idea")["extraction_failure"] is True
