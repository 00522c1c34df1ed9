"""Each evaluation task is defined once (harness.tasks); the lm-eval files are generated from it."""
import yaml

from harness import tasks as ht
from harness.evaluate import extract_answer, is_correct


def test_lm_eval_files_are_generated_from_the_table():
    files = {p.name for p in ht.TASKS_DIR.glob(f"{ht.TASK_PREFIX}*.yaml")}
    assert files == {ht.yaml_path(t).name for t in ht.TASKS.values()}, "run `python -m harness.tasks`"
    for task in ht.TASKS.values():
        text = ht.yaml_path(task).read_text()
        assert text == ht.task_yaml(task), f"{ht.yaml_path(task)} is stale: run `python -m harness.tasks`"
        spec = yaml.safe_load(text)
        assert spec["dataset_kwargs"]["task"] == task.name and spec["tag"] == f"llm_adapters_{task.suite}"
        assert spec.get("generation_kwargs", {}).get("max_gen_toks", 32) == task.max_gen_toks


def test_suites_and_answer_rules_come_from_the_table():
    assert ht.SUITES["commonsense"] == ["boolq", "piqa", "social_i_qa", "hellaswag", "winogrande", "ARC-Easy",
                                        "ARC-Challenge", "openbookqa"]
    assert ht.SUITES["math"] == ["gsm8k", "SingleEq", "SVAMP", "MultiArith", "AddSub", "AQuA"]
    assert "mawps" in ht.MATH_TASKS and "mawps" not in ht.SUITES["math"]
    for task in ht.TASKS.values():  # every label word is extracted as itself and scored right
        for word in task.labels:
            assert extract_answer(task.name, f"the correct answer is {word}") == word
            assert is_correct(task.name, word, word)
    assert ht.TASKS["hellaswag"].labels == ("ending1", "ending2", "ending3", "ending4")
