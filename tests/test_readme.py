"""The README a researcher reads first: short, the answer on its first screen, and its results
block generated from the committed tables (harness/reports/readme.py), never typed by hand."""
import re

import pytest

from harness.config import REPO_ROOT
from harness.reports import readme

README = REPO_ROOT / "README.md"
TABLES = REPO_ROOT / "results" / "tables"


def test_the_results_block_is_what_the_committed_tables_generate():
    """Stale after a table changes: run `python -m harness.reports.readme` and commit README.md."""
    text = README.read_text()
    assert readme.render(text, readme.block(TABLES)) == text, \
        "README.md's results block is stale: run `python -m harness.reports.readme`"
    assert readme.main(["--check"]) == 0


def test_a_hand_edited_number_is_caught(tmp_path):
    text = README.read_text()
    inside = text.split(readme.BEGIN, 1)[1].split(readme.END, 1)[0]
    number = re.search(r"\d+\.\d \[", inside).group(0)
    edited = tmp_path / "README.md"
    edited.write_text(text.replace(number, "99.9 [", 1))
    assert readme.main(["--check", "--readme", str(edited)]) == 1
    assert readme.main(["--readme", str(edited)]) == 0  # regenerating repairs it
    assert edited.read_text() == text


def test_the_block_carries_every_claim_and_every_table2_row():
    block = readme.block(TABLES)
    _, claims = readme.read_table_csv(TABLES / "claims.csv")
    _, t2 = readme.read_table_csv(TABLES / "table2.csv")
    for claim, verdict, estimate in zip(claims["Claim"], claims["Verdict"], claims["Estimate [95 %]"]):
        assert f"| {claim} | {verdict} | {estimate} |" in block
    for method in t2["Method"]:
        assert f"| {method} |" in block
    assert "primary endpoint:" in block and "records trained at:" in block


def test_a_missing_column_is_named(tmp_path):
    (tmp_path / "claims.csv").write_text((TABLES / "claims.csv").read_text().replace(",Verdict,", ",Verdikt,", 1))
    (tmp_path / "table2.csv").write_text((TABLES / "table2.csv").read_text())
    with pytest.raises(KeyError, match="Verdict"):
        readme.block(tmp_path)


def test_the_readme_is_short_and_opens_on_the_answer():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail to docs/"
    first_screen = "\n".join(lines[:70])
    assert "arxiv.org/abs/2405.15525" in first_screen and "Heather Miller" in first_screen
    assert "| Claim | Verdict |" in first_screen and "figures/figure3.png" in first_screen


def test_no_commit_id_is_typed_in_the_readme_prose():
    """Provenance lives in the generated 'records trained at' lines, not in hand-written text."""
    text = README.read_text()
    head, rest = text.split(readme.BEGIN, 1)
    prose = head + rest.split(readme.END, 1)[1]
    prose = re.sub(r"```.*?```", "", prose, flags=re.S)  # code blocks may hold hashes (pins)
    assert not re.findall(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b", prose)


def test_every_doc_the_readme_links_exists():
    for link in re.findall(r"\]\(((?:docs|results|figures)/[^)#]+)\)", README.read_text()):
        assert (REPO_ROOT / link).exists(), link


def test_ci_finds_the_set_up_and_test_commands():
    """.ci/run runs the first ```bash block under the headings starting '## Set up' and '## Test'."""
    import subprocess

    script = (REPO_ROOT / ".ci" / "run").read_text()
    func = script[script.index("readme_block() {"):script.index("SETUP=")]
    for section, needle in (("Set up", "pip install torch=="), ("Test", 'pytest -m "not slow"')):
        out = subprocess.run(["bash", "-c", f"{func}\nreadme_block '{section}'"], cwd=REPO_ROOT,
                             capture_output=True, text=True, check=True).stdout
        assert needle in out, f"README.md: .ci/run finds no bash block with {needle!r} under '## {section}'"


def _second_study(tmp_path, verdict_from=None, verdict_to=None):
    """A second model's tables: the committed ones under another model name, one verdict changed."""
    second = tmp_path / "second"
    second.mkdir()
    claims = (TABLES / "claims.csv").read_text().replace("smollm2-135m", "other-270m")
    if verdict_from:
        head, _, rest = claims.partition("\nModel,")
        rows = rest.split("\n")
        i = next(i for i, r in enumerate(rows) if r.startswith("other-270m,SMT > LoRA at equal budget,"))
        rows[i] = rows[i].replace(f",{verdict_from},", f",{verdict_to},", 1)
        claims = head + "\nModel," + "\n".join(rows)
    (second / "claims.csv").write_text(claims)
    (second / "table2.csv").write_text((TABLES / "table2.csv").read_text().replace("smollm2-135m", "other-270m"))
    return second


def test_a_second_model_gets_a_verdict_column_and_a_generated_agreement_line(tmp_path):
    block = readme.block(TABLES, more=[_second_study(tmp_path)])
    assert "| Claim | smollm2-135m | other-270m |" in block
    _, claims = readme.read_table_csv(TABLES / "claims.csv")
    assert f"the models' verdicts agree on all {len(claims)} claims both tested" in block
    assert block.count("| Claim | Verdict |") == 2 and block.count("| Method |") == 2


def test_a_verdict_that_differs_between_models_is_named(tmp_path):
    _, claims = readme.read_table_csv(TABLES / "claims.csv")
    was = claims[claims["Claim"] == "SMT > LoRA at equal budget"]["Verdict"].iloc[0]
    block = readme.block(TABLES, more=[_second_study(tmp_path, was, "contradicted")])
    assert (f"verdicts that differ between the models: SMT > LoRA at equal budget (smollm2-135m: {was}, "
            "other-270m: contradicted)") in block
