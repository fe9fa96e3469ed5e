"""Every place that cites a section of benchmarks/RESULTS.md by name ("benchmarks/RESULTS.md,
"Some section"") names a heading or a bold run-in title that is there, so that a renamed or
dropped section cannot leave dead pointers in the code, the README or the cards; and the
table at the top of RESULTS.md ("Where to read the latest figures") names sections that exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
# `RESULTS.md, "X"`, `RESULTS.md "X"`, `RESULTS "X"` and `RESULTS.md, section "X"`
CITATION = re.compile(r'RESULTS(?:\.md)?,?\s*(?:section\s*)?"([^"]+)"')
# a line break inside a comment or docstring continues the sentence
CONTINUATION = re.compile(r"\s*\n\s*(?:#+|\*|//)?\s*")


def _titles() -> list[str]:
    text = RESULTS.read_text()
    titles = [line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")]
    titles += re.findall(r"^\*\*([^*]+)\*\*", text, flags=re.M)  # bold run-in paragraph titles
    return [t.replace("`", "") for t in titles]


def _resolves(name: str, titles: list[str]) -> bool:
    # "A ...; B": each part of a shortened name must be in one title
    parts = [p.strip(" .;,") for p in name.replace("`", "").split("...")]
    return any(all(p in t for p in parts if p) for t in titles)


def _citing_files() -> list[Path]:
    files = [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("cache/**/CARD.md"),
             *ROOT.glob("benchmarks/gpu/*.sh")]
    for top in ("agents", "benchmarks", "cache", "envs", "experiments", "model_runtime", "tests"):
        files += (ROOT / top).rglob("*.py")
    return [f for f in files if f.is_file() and f.resolve() != Path(__file__).resolve()]


def test_every_cited_results_section_exists() -> None:
    titles = _titles()
    dead, cited = [], 0
    for path in _citing_files():
        text = CONTINUATION.sub(" ", path.read_text(errors="replace"))
        for m in CITATION.finditer(text):
            cited += 1
            if not _resolves(m.group(1), titles):
                dead.append(f"{path.relative_to(ROOT)}: {m.group(1)!r}")
    assert cited > 50  # the pattern still finds the project's citations
    assert not dead, "citations of RESULTS.md sections that are not there:\n" + "\n".join(dead)


def test_the_map_at_the_top_names_sections_that_exist() -> None:
    text = RESULTS.read_text()
    start = text.index("## Where to read the latest figures")
    table = text[start:text.index("\n## ", start + 1)]
    names = re.findall(r'"([^"]+)"', table)
    assert len(names) >= 8
    titles = _titles()
    assert [n for n in names if not _resolves(n, titles)] == []
