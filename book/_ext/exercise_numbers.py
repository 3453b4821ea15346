"""Exercises numbered per chapter: "Exercise 4.2" is the second exercise of chapter 4.

sphinx-exercise numbers exercises with Sphinx's figure numbers, which run on through the whole book when the table
of contents is not numbered (chapter 4 began at "Exercise 10"). Numbering the table of contents would restart at 1
in each part of the book, so the chapter number is read from the notebook's file name (``04_finetuning``)
instead; a page that is not a numbered chapter numbers its exercises from 1.
"""

import re


def chapter_numbers(app, env) -> list[str]:
    changed = []
    for docname, numbers in env.toc_fignumbers.items():
        exercises = numbers.get("exercise")
        if not exercises:
            continue
        match = re.match(r"(\d+)_", docname.rsplit("/", 1)[-1])
        prefix = (int(match.group(1)),) if match else ()
        in_order = sorted(exercises, key=lambda label: exercises[label])
        renumbered = {label: (*prefix, i) for i, label in enumerate(in_order, 1)}
        if renumbered != exercises:
            numbers["exercise"] = renumbered
            changed.append(docname)
    return changed


def setup(app):
    # after Sphinx's own figure numbering (the toctree collector, priority 500)
    app.connect("env-get-updated", chapter_numbers, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
