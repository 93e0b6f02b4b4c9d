"""dimflow's own chain-of-thought prompt for the designer (written for this project, not copied).

The painter conditions on the blueprint text only, so the prompt asks the vision-language model to
spell out everything the painter cannot infer from a terse instruction: what exactly changes, what the
scene looks like, which objects matter, where the edit happens, and what the result should look like.
The model thinks inside ``<think>`` and puts the blueprint inside ``<answer>`` (see ``parse.py``).

``PROMPT_VERSION`` enters the designer config and therefore ``design_key``: change it whenever the
wording changes, so cached blueprints made with the old wording are not reused.
"""

from __future__ import annotations

PROMPT_VERSION = "dimflow-cot-v1"

SECTIONS = ("Edit instruction", "Global layout", "Local objects", "Area to edit", "Edited image")

_EDIT = """\
You are the planner for an image-editing model. The editing model is precise but literal: it only \
sees the text you write, not the user's intent. Look carefully at the attached image and at the user's \
instruction below.

First reason step by step inside <think></think>: what is in the picture, what the user most plausibly \
wants, which parts must change and which must stay exactly as they are.

Then write the plan inside <answer></answer>, using exactly these five numbered headings:
1. Edit instruction: the user's request restated as one precise, self-contained sentence that says \
what changes and what is preserved.
2. Global layout: the whole picture as it is now: scene, viewpoint, composition, lighting, colour \
palette and style.
3. Local objects: the objects that matter for this edit, each with its position in the frame, size, \
colour, material, and any visible text.
4. Area to edit: the exact region or objects that change, where they are, and what around them must \
remain untouched.
5. Edited image: a complete description of the picture after the edit, written as a caption of the \
finished image.

Use plain descriptive sentences; no tables, no questions to the user. If the instruction is ambiguous, \
pick the most plausible reading and state it in heading 1.

Instruction: {instruction}"""

_GENERATE = """\
You are the planner for a text-to-image model. The model is precise but literal: it only sees the \
text you write, not the user's intent. Read the user's request below.

First reason step by step inside <think></think>: what the picture should show, how it should be \
composed, and which details matter most.

Then write the plan inside <answer></answer>, using exactly these five numbered headings:
1. Edit instruction: the request restated as one precise, self-contained sentence.
2. Global layout: scene, viewpoint, composition, lighting, colour palette and style.
3. Local objects: every object that should appear, with position, size, colour, material, and any \
text it carries.
4. Area to edit: the part of the picture the request is mainly about, and where it sits in the frame.
5. Edited image: a complete description of the finished picture, written as its caption.

Use plain descriptive sentences; no tables, no questions to the user. If the request is ambiguous, \
pick the most plausible reading and state it in heading 1.

Request: {instruction}"""


def build_prompt(instruction: str, *, has_image: bool) -> str:
    """The user-turn text; the instruction goes last so the model reads it right before answering."""
    template = _EDIT if has_image else _GENERATE
    return template.format(instruction=instruction.strip())
